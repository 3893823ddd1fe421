//! `corsd entries list|add|remove FILE ...` (DESIGN.md section 12): edit the
//! allowlist from the command line, safely.
//!
//! An edit keeps the file's comments, order and layout (`toml_edit`),
//! validates the whole new file before writing it, and writes it atomically:
//! a temporary dotfile in the same directory (never read by a watching
//! `corsd serve`), fsync, rename over the file, fsync of the directory. A
//! lock file beside the policy serialises concurrent edits, so each reads
//! the file the previous one wrote. An invalid, duplicate or absent origin
//! leaves the file byte for byte as it was (exit 1).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::core::{OriginPattern, Policy};
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
        after_help = "Example:\n  corsd entries add examples/policy.toml https://app.example.com --note \"web app\""
    )]
    Add {
        /// The policy file.
        file: PathBuf,
        /// The origin to allow, e.g. `https://app.example.com`.
        origin: String,
        /// A note kept beside the entry.
        #[arg(long)]
        note: Option<String>,
        /// Print the change as a unified diff; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove an origin (compared after normalisation).
    #[command(after_help = "Example:\n  corsd entries remove examples/policy.toml https://app.example.com --dry-run")]
    Remove {
        /// The policy file.
        file: PathBuf,
        /// The origin to remove.
        origin: String,
        /// Print the change as a unified diff; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
            file,
            origin,
            note,
            dry_run,
        } => edit(&file, dry_run, |text, policy| {
            add(text, policy, &origin, note.as_deref())
        }),
        EntriesCommand::Remove { file, origin, dry_run } => {
            edit(&file, dry_run, |text, policy| remove(text, policy, &origin))
        }
    }
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

/// Why an edit was refused; the file is left as it was.
struct Refused(String);

/// Locks, reads, edits with `change`, validates, then prints or writes.
fn edit(file: &Path, dry_run: bool, change: impl FnOnce(&str, &Policy) -> Result<String, Refused>) -> ExitCode {
    let shown = file.display().to_string();
    // The file the path leads to: the lock, the temporary file and the
    // rename go beside it, so every symlink on the way stays a link (a
    // ConfigMap's `..data`, `/etc/corsd/policy.toml -> /srv/...`), and two
    // paths to one file take one lock.
    let real = match resolve(file) {
        Ok(real) => real,
        Err(why) => {
            eprintln!("{shown}: {why}; nothing was written");
            return ExitCode::from(2);
        }
    };
    let file = real.as_path();
    // A dry run writes nothing, so it takes no lock (and creates no lock file).
    let _lock = if dry_run {
        None
    } else {
        match lock_beside(file) {
            Ok(lock) => Some(lock),
            Err(e) => {
                eprintln!("{shown}: cannot lock the policy file for editing: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{shown}: {}", policy_file::unreadable_message(&e));
            return ExitCode::from(2);
        }
    };
    let Ok(text) = String::from_utf8(bytes) else {
        eprintln!("{shown}: the file is not UTF-8 text");
        return ExitCode::from(1);
    };
    let policy = match policy_file::compile(&shown, text.as_bytes()) {
        Outcome::Valid(compiled) => compiled.policy,
        outcome => {
            eprintln!("{}", outcome.report(&shown));
            eprintln!("{shown}: not a valid policy now; fix it before editing entries");
            return ExitCode::from(1);
        }
    };
    let edited = match change(&text, &policy) {
        Ok(edited) => edited,
        Err(Refused(why)) => {
            eprintln!("{shown}: {why}");
            return ExitCode::from(1);
        }
    };
    // The whole new file must be a valid policy before anything is written.
    if let Outcome::Invalid(error) = policy_file::compile(&shown, edited.as_bytes()) {
        eprintln!("{}", error.display(&shown));
        eprintln!("{shown}: the edit would make the file invalid; nothing was written");
        return ExitCode::from(1);
    }
    if dry_run {
        let diff = similar::TextDiff::from_lines(&text, &edited);
        print!("{}", diff.unified_diff().header(&shown, &shown));
        return ExitCode::SUCCESS;
    }
    match write_atomically(file, edited.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{shown}: cannot write the policy file: {e}; it is unchanged");
            ExitCode::from(2)
        }
    }
}

/// The edit's origin, parsed and normalised as an entry would be.
fn pattern(origin: &str) -> Result<OriginPattern, Refused> {
    origin
        .parse::<OriginPattern>()
        .map_err(|e| Refused(format!("invalid origin `{origin}`: {e}")))
}

fn add(text: &str, policy: &Policy, origin: &str, note: Option<&str>) -> Result<String, Refused> {
    let pattern = pattern(origin)?;
    if let Some(entry) = policy.entries().iter().find(|e| e.pattern == pattern) {
        return Err(Refused(format!(
            "`{pattern}` is already listed, on line {}: nothing to add",
            entry.line
        )));
    }
    let mut doc = parse(text)?;
    let mut table = Table::new();
    table.insert("origin", value(pattern.as_str()));
    if let Some(note) = note {
        table.insert("note", value(note));
    }
    match doc.get_mut("entries") {
        None => {
            let mut entries = ArrayOfTables::new();
            entries.push(table);
            doc.insert("entries", Item::ArrayOfTables(entries));
        }
        Some(Item::ArrayOfTables(entries)) => entries.push(table),
        Some(_) => return Err(Refused("`entries` is not written as `[[entries]]` tables".to_owned())),
    }
    Ok(doc.to_string())
}

fn remove(text: &str, policy: &Policy, origin: &str) -> Result<String, Refused> {
    let pattern = pattern(origin)?;
    if !policy.entries().iter().any(|e| e.pattern == pattern) {
        return Err(Refused(format!("`{pattern}` is not listed: nothing to remove")));
    }
    let mut doc = parse(text)?;
    let Some(Item::ArrayOfTables(entries)) = doc.get_mut("entries") else {
        return Err(Refused("`entries` is not written as `[[entries]]` tables".to_owned()));
    };
    // Every entry that normalises to the origin goes (duplicates too).
    entries.retain(|table| {
        let listed = table.get("origin").and_then(Item::as_str);
        listed.and_then(|o| o.parse::<OriginPattern>().ok()).as_ref() != Some(&pattern)
    });
    Ok(doc.to_string())
}

fn parse(text: &str) -> Result<DocumentMut, Refused> {
    text.parse::<DocumentMut>()
        .map_err(|e| Refused(format!("cannot edit the file: {e}")))
}

/// The regular file `file` leads to, every symlink followed; why not, when
/// it leads nowhere or to something else.
fn resolve(file: &Path) -> Result<PathBuf, String> {
    if let Some(what) = crate::watch::not_a_file(file) {
        return Err(format!("not a policy file: it is {what}"));
    }
    std::fs::canonicalize(file).map_err(|e| policy_file::unreadable_message(&e))
}

/// An exclusive lock on `FILE.lock` beside the file, held until dropped.
fn lock_beside(file: &Path) -> std::io::Result<File> {
    let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(file.with_file_name(name))?;
    lock.lock()?;
    Ok(lock)
}

/// Writes `bytes` to a dotfile beside `file`, syncs it, renames it over
/// `file` and syncs the directory: a reader sees the old file or the new
/// one, never half of either. The file's permissions are kept.
fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.corsd-edit", std::process::id()));
    let written = (|| {
        let mut out = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        if let Ok(metadata) = std::fs::metadata(file) {
            out.set_permissions(metadata.permissions())?;
        }
        out.write_all(bytes)?;
        out.sync_all()?;
        drop(out);
        std::fs::rename(&temp, file)?;
        File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}
