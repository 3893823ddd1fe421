//! `corsd entries list|add|remove --server ADDR`: the entries in force on a
//! running corsd, with how many decisions each allowed (DESIGN.md section
//! 16), through its `ListEntries` admin call; and edits through its
//! `PolicyAdmin` API (section 17).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_types::StatusExt;

use crate::grpc::pb::cors_policy_client::CorsPolicyClient;
use crate::grpc::pb::policy_admin_client::PolicyAdminClient;
use crate::grpc::pb::{AddEntryRequest, Entry, ListEntriesRequest, RemoveEntryRequest};

/// Entries asked for per call (the server's most).
const PAGE_SIZE: u32 = 1000;

#[derive(Serialize)]
struct Listed<'a> {
    origin: &'a str,
    note: &'a str,
    line: u32,
    hits: u64,
    last_hit_unix_ms: i64,
}

/// Lists `tenant`'s entries in force on `server` (host:port, or an
/// `http://` URL), only the unused ones with `unused`.
pub(super) fn list(server: &str, tenant: &str, unused: bool, token_file: Option<&Path>, json: bool) -> ExitCode {
    let (token, runtime) = match start(token_file) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let entries = match runtime.block_on(fetch(server, tenant, unused, token.as_deref())) {
        Ok(entries) => entries,
        Err(why) => {
            eprintln!("corsd entries: {server}: {why}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if json {
        let listed: Vec<Listed<'_>> = entries
            .iter()
            .map(|e| Listed {
                origin: &e.pattern,
                note: &e.note,
                line: e.line,
                hits: e.hits,
                last_hit_unix_ms: e.last_hit_unix_ms,
            })
            .collect();
        serde_json::to_writer(&mut out, &listed)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        entries.iter().try_for_each(|e| {
            let note = if e.note.is_empty() {
                String::new()
            } else {
                format!("  # {}", e.note)
            };
            writeln!(out, "{:>5}  {:>10} hits  {}{note}", e.line, e.hits, e.pattern)
        })
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corsd entries: cannot write: {e}");
            ExitCode::from(2)
        }
    }
}

/// An edit asked of the server.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change<'a> {
    /// Add `origin` with `note`.
    Add {
        /// The origin.
        origin: &'a str,
        /// Its note.
        note: Option<&'a str>,
    },
    /// Remove `origin`.
    Remove {
        /// The origin.
        origin: &'a str,
    },
}

/// Makes `change` to `tenant`'s policy on `server`: exit 0 once it is in
/// force there, 1 when the server refuses it (why, on stderr), 2 when the
/// server cannot be asked.
pub(super) fn edit(server: &str, tenant: &str, token_file: Option<&Path>, change: Change<'_>) -> ExitCode {
    let (token, runtime) = match start(token_file) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let done = runtime.block_on(async {
        let channel = connect(server).await.map_err(|why| (why, 2))?;
        let mut client = PolicyAdminClient::new(channel);
        let outcome = match change {
            Change::Add { origin, note } => client
                .add_entry(authorized(
                    AddEntryRequest {
                        tenant: tenant.to_owned(),
                        origin: origin.to_owned(),
                        note: note.unwrap_or_default().to_owned(),
                        expected_version: String::new(),
                    },
                    token.as_deref(),
                )?)
                .await
                .map(|r| r.into_inner().version),
            Change::Remove { origin } => client
                .remove_entry(authorized(
                    RemoveEntryRequest {
                        tenant: tenant.to_owned(),
                        origin: origin.to_owned(),
                        expected_version: String::new(),
                    },
                    token.as_deref(),
                )?)
                .await
                .map(|r| r.into_inner().version),
        };
        outcome.map_err(|status| {
            let mut why = status.message().to_owned();
            for violation in status
                .get_details_bad_request()
                .map(|b| b.field_violations)
                .unwrap_or_default()
            {
                if violation.description != why {
                    why.push_str(&format!("\n  {}: {}", violation.field, violation.description));
                }
            }
            let refused = matches!(
                status.code(),
                Code::InvalidArgument | Code::AlreadyExists | Code::NotFound | Code::Aborted | Code::FailedPrecondition
            );
            (why, if refused { 1 } else { 2 })
        })
    });
    match done {
        Ok(version) => {
            println!("{version}");
            ExitCode::SUCCESS
        }
        Err((why, code)) => {
            eprintln!("corsd entries: {server}: {why}");
            ExitCode::from(code)
        }
    }
}

/// The token in `token_file`, and a runtime to ask the server on; exit 2
/// when either cannot be had.
fn start(token_file: Option<&Path>) -> Result<(Option<String>, tokio::runtime::Runtime), ExitCode> {
    let token = read_token(token_file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("corsd entries: cannot start: {e}");
            ExitCode::from(2)
        })?;
    Ok((token, runtime))
}

/// The token in `file`, trimmed; exit 2 when it cannot be read.
fn read_token(file: Option<&Path>) -> Result<Option<String>, ExitCode> {
    file.map(std::fs::read_to_string)
        .transpose()
        .map(|token| token.map(|t| t.trim().to_owned()))
        .map_err(|e| {
            eprintln!("corsd entries: cannot read the token file: {e}");
            ExitCode::from(2)
        })
}

/// `message` with `authorization: Bearer TOKEN` when there is a token.
fn authorized<T>(message: T, token: Option<&str>) -> Result<tonic::Request<T>, (String, u8)> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ("the token is not a valid header value".to_owned(), 2))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A channel to `server` (host:port, or a URL).
async fn connect(server: &str) -> Result<tonic::transport::Channel, String> {
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| format!("not an address: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

/// Every page of `ListEntries`, in file order.
async fn fetch(server: &str, tenant: &str, unused: bool, token: Option<&str>) -> Result<Vec<Entry>, String> {
    let channel = connect(server).await?;
    let mut client = CorsPolicyClient::new(channel);
    let (mut entries, mut page_token) = (Vec::new(), String::new());
    loop {
        let request = authorized(
            ListEntriesRequest {
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
                tenant: tenant.to_owned(),
                unused_only: unused,
                ..ListEntriesRequest::default()
            },
            token,
        )
        .map_err(|(why, _)| why)?;
        let page = client
            .list_entries(request)
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(entries);
        }
        page_token = page.next_page_token;
    }
}
