//! `corsd entries list|add|remove FILE ...` (DESIGN.md section 12): edit the
//! allowlist from the command line, safely, with the editor the API uses
//! ([`crate::edit`]). An invalid, duplicate or absent origin leaves the file
//! byte for byte as it was (exit 1).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::core::Policy;
use crate::edit::{EditError, Refused, add, edit_file, remove};
use crate::policy_file::{self, Outcome};

/// `corsd entries`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum EntriesCommand {
    /// List the entries in file order: of a file, or in force on a server
    /// with their usage.
    #[command(
        after_help = "Examples:\n  corsd entries list examples/policy.toml --json\n  corsd entries list --server 127.0.0.1:50051 --tenant acme --unused"
    )]
    List {
        /// The policy file.
        #[arg(required_unless_present = "server")]
        file: Option<PathBuf>,
        /// A corsd serving gRPC at host:port: list the entries in force there,
        /// with how many decisions each allowed (an admin call).
        #[arg(long, conflicts_with = "file", value_name = "ADDR")]
        server: Option<String>,
        /// With --server: the tenant whose entries to list ("" in single mode).
        #[arg(long, requires = "server", default_value = "")]
        tenant: String,
        /// With --server: only the entries that allowed nothing since the server started.
        #[arg(long, requires = "server")]
        unused: bool,
        /// With --server: a file holding the bearer token admin calls need.
        #[arg(long, requires = "server", value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Print an array of {"origin","note","line"} (with --server, also
        /// "hits" and "last_hit_unix_ms").
        #[arg(long)]
        json: bool,
    },
    /// Add an origin, checked as `corsd validate` checks it.
    #[command(
        after_help = "Examples:\n  corsd entries add examples/policy.toml https://app.example.com --note \"web app\"\n  corsd entries add --server 127.0.0.1:50051 --tenant acme https://app.example.com"
    )]
    Add {
        /// The policy file and the origin to allow (with --server, the origin alone).
        #[arg(value_names = ["FILE", "ORIGIN"], num_args = 1..=2, required = true)]
        targets: Vec<String>,
        /// A note kept beside the entry.
        #[arg(long)]
        note: Option<String>,
        /// Print the change as a unified diff; write nothing.
        #[arg(long, conflicts_with = "server")]
        dry_run: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove an origin (compared after normalisation).
    #[command(
        after_help = "Examples:\n  corsd entries remove examples/policy.toml https://app.example.com --dry-run\n  corsd entries remove --server 127.0.0.1:50051 --tenant acme https://app.example.com"
    )]
    Remove {
        /// The policy file and the origin to remove (with --server, the origin alone).
        #[arg(value_names = ["FILE", "ORIGIN"], num_args = 1..=2, required = true)]
        targets: Vec<String>,
        /// Print the change as a unified diff; write nothing.
        #[arg(long, conflicts_with = "server")]
        dry_run: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Editing through a server's `PolicyAdmin` API instead of a file.
#[derive(Debug, clap::Args)]
pub(super) struct Remote {
    /// A corsd serving gRPC at host:port: edit the tenant's policy through
    /// its PolicyAdmin API (the edit is in force there when this returns).
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,
    /// With --server: the tenant whose policy to edit ("" with --policy).
    #[arg(long, requires = "server", default_value = "")]
    tenant: String,
    /// With --server: a file holding the bearer token (admin or the tenant's).
    #[arg(long, requires = "server", value_name = "FILE")]
    token_file: Option<PathBuf>,
}

pub(super) fn run(command: EntriesCommand) -> ExitCode {
    match command {
        EntriesCommand::List {
            file,
            server,
            tenant,
            unused,
            token_file,
            json,
        } => match (file, server) {
            (_, Some(server)) => super::entries_server::list(&server, &tenant, unused, token_file.as_deref(), json),
            (Some(file), None) => list(&file, json),
            (None, None) => ExitCode::from(2),
        },
        EntriesCommand::Add {
            targets,
            note,
            dry_run,
            remote,
        } => match (remote.server, targets.as_slice()) {
            (Some(server), [origin]) => {
                let change = super::entries_server::Change::Add {
                    origin,
                    note: note.as_deref(),
                };
                super::entries_server::edit(&server, &remote.tenant, remote.token_file.as_deref(), change)
            }
            (None, [file, origin]) => edit(Path::new(file), dry_run, |text, policy| {
                add(text, policy, origin, note.as_deref())
            }),
            _ => usage(),
        },
        EntriesCommand::Remove {
            targets,
            dry_run,
            remote,
        } => match (remote.server, targets.as_slice()) {
            (Some(server), [origin]) => {
                let change = super::entries_server::Change::Remove { origin };
                super::entries_server::edit(&server, &remote.tenant, remote.token_file.as_deref(), change)
            }
            (None, [file, origin]) => edit(Path::new(file), dry_run, |text, policy| remove(text, policy, origin)),
            _ => usage(),
        },
    }
}

/// The positionals do not fit: FILE ORIGIN, or ORIGIN alone with --server.
fn usage() -> ExitCode {
    eprintln!("corsd entries: give FILE ORIGIN, or ORIGIN alone with --server ADDR");
    ExitCode::from(2)
}

#[derive(Serialize)]
struct ListedEntry<'a> {
    origin: &'a str,
    note: &'a str,
    line: u32,
}

fn list(file: &Path, json: bool) -> ExitCode {
    let compiled = match super::validate::load(file) {
        Ok(compiled) => compiled,
        Err(code) => return code,
    };
    let entries = compiled.policy.entries();
    let mut out = std::io::stdout().lock();
    let written = if json {
        let listed: Vec<ListedEntry<'_>> = entries
            .iter()
            .map(|e| ListedEntry {
                origin: e.pattern.as_str(),
                note: &e.note,
                line: e.line,
            })
            .collect();
        serde_json::to_writer(&mut out, &listed)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        entries.iter().try_for_each(|e| match e.note.as_str() {
            "" => writeln!(out, "{:>5}  {}", e.line, e.pattern),
            note => writeln!(out, "{:>5}  {}  # {note}", e.line, e.pattern),
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

/// Locks, reads, edits with `change`, validates, then prints or writes
/// (`crate::edit`), saying why not as `corsd entries` always has.
fn edit(file: &Path, dry_run: bool, change: impl FnOnce(&str, &Policy) -> Result<String, Refused>) -> ExitCode {
    let shown = file.display().to_string();
    let edited = match edit_file(file, dry_run, None, change) {
        Ok(edited) => edited,
        Err(error) => {
            let (message, code) = match error {
                EditError::Path(why) => (format!("{shown}: {why}; nothing was written"), 2),
                EditError::Lock(e) => (format!("{shown}: cannot lock the policy file for editing: {e}"), 2),
                EditError::Unreadable(e) => (format!("{shown}: {}", policy_file::unreadable_message(&e)), 2),
                EditError::NotText => (format!("{shown}: the file is not UTF-8 text"), 1),
                EditError::InvalidNow(error) => (
                    format!(
                        "{}\n{shown}: not a valid policy now; fix it before editing entries",
                        Outcome::Invalid(error).report(&shown)
                    ),
                    1,
                ),
                EditError::Changed { current } => (format!("{shown}: changed meanwhile (now {current})"), 1),
                EditError::Refused(why) => (format!("{shown}: {why}"), 1),
                EditError::WouldBeInvalid(error) => (
                    format!(
                        "{}\n{shown}: the edit would make the file invalid; nothing was written",
                        error.display(&shown)
                    ),
                    1,
                ),
                EditError::Write(e) => (
                    format!("{shown}: cannot write the policy file: {e}; it is unchanged"),
                    2,
                ),
                EditError::Unavailable(why) => (format!("{shown}: {why}"), 2),
            };
            eprintln!("{message}");
            return ExitCode::from(code);
        }
    };
    if dry_run {
        let diff = similar::TextDiff::from_lines(&edited.old_text, &edited.new_text);
        print!("{}", diff.unified_diff().header(&shown, &shown));
    }
    ExitCode::SUCCESS
}
