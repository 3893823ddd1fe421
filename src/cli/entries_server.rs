//! `corsd entries list --server ADDR`: the entries in force on a running
//! corsd, with how many decisions each allowed (DESIGN.md section 16),
//! through its `ListEntries` admin call.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use tonic::metadata::MetadataValue;

use crate::grpc::pb::cors_policy_client::CorsPolicyClient;
use crate::grpc::pb::{Entry, ListEntriesRequest};

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
    let token = match token_file.map(std::fs::read_to_string).transpose() {
        Ok(token) => token.map(|t| t.trim().to_owned()),
        Err(e) => {
            eprintln!("corsd entries: cannot read the token file: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("corsd entries: cannot start: {e}");
            return ExitCode::from(2);
        }
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

/// Every page of `ListEntries`, in file order.
async fn fetch(server: &str, tenant: &str, unused: bool, token: Option<&str>) -> Result<Vec<Entry>, String> {
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| format!("not an address: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let authorization = token
        .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
        .transpose()
        .map_err(|_| "the token is not a valid header value".to_owned())?;
    let mut client = CorsPolicyClient::new(channel);
    let (mut entries, mut page_token) = (Vec::new(), String::new());
    loop {
        let mut request = tonic::Request::new(ListEntriesRequest {
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
            tenant: tenant.to_owned(),
            unused_only: unused,
            ..ListEntriesRequest::default()
        });
        if let Some(value) = &authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
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
