//! Editing a policy file in place (DESIGN.md sections 12 and 17): the one
//! editor behind `corsd entries add|remove` and the `PolicyAdmin` API's file
//! store.
//!
//! An edit keeps the file's comments, order and layout (`toml_edit`),
//! validates the whole new file before writing it, and writes it atomically:
//! a temporary dotfile beside the real file (never read by a watching
//! `corsd serve`), fsync, rename over the file, fsync of the directory. The
//! path is resolved first, so every symlink on the way stays a link (a
//! ConfigMap's `..data`, `/etc/corsd/policy.toml -> /srv/...`); a lock file
//! beside the real file serialises concurrent edits, so each reads what the
//! previous one wrote, and two paths to one file take one lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::core::{OriginPattern, Policy, PolicyError, Severity};
use crate::policy_file::{self, Outcome};

/// Why an edit did not happen; the file is as it was.
#[derive(Debug)]
pub enum EditError {
    /// The path leads nowhere, or not to a regular file.
    Path(String),
    /// The lock beside the file could not be taken.
    Lock(io::Error),
    /// The file could not be read.
    Unreadable(io::Error),
    /// The file is not UTF-8 text.
    NotText,
    /// The file is not a valid policy now: fix it first.
    InvalidNow(PolicyError),
    /// The file's version is not the one the caller expected.
    Changed {
        /// The version the file has.
        current: String,
    },
    /// The change itself was refused.
    Refused(Refused),
    /// The file after the change would not be a valid policy.
    WouldBeInvalid(PolicyError),
    /// The new file could not be written (a read-only mount, a full disk).
    Write(io::Error),
    /// The shared store (etcd) does not answer.
    Unavailable(String),
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not an origin an entry can hold.
    BadOrigin(String),
    /// The origin is listed already.
    Duplicate(String),
    /// The origin is not listed.
    Absent(String),
    /// The file is laid out so that it cannot be edited.
    Layout(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::BadOrigin(why) | Refused::Duplicate(why) | Refused::Absent(why) | Refused::Layout(why) => {
                f.write_str(why)
            }
        }
    }
}

/// An edit made (or, in a dry run, that would be made).
#[derive(Debug)]
pub struct Edited {
    /// The file before.
    pub old_text: String,
    /// The file after.
    pub new_text: String,
}

impl Edited {
    /// The version before.
    pub fn old_version(&self) -> String {
        Policy::version_of(self.old_text.as_bytes())
    }

    /// The version after.
    pub fn new_version(&self) -> String {
        Policy::version_of(self.new_text.as_bytes())
    }
}

/// Locks the file `file` leads to, reads it, checks its version against
/// `expected` (when given), applies `change` to its text and policy,
/// validates the result and, unless `dry_run`, writes it atomically.
pub fn edit_file(
    file: &Path,
    dry_run: bool,
    expected: Option<&str>,
    change: impl FnOnce(&str, &Policy) -> Result<String, Refused>,
) -> Result<Edited, EditError> {
    let shown = file.display().to_string();
    let real = resolve(file).map_err(EditError::Path)?;
    // A dry run writes nothing, so it takes no lock (and creates no lock file).
    let _lock = if dry_run {
        None
    } else {
        Some(lock_beside(&real).map_err(EditError::Lock)?)
    };
    let bytes = std::fs::read(&real).map_err(EditError::Unreadable)?;
    let text = String::from_utf8(bytes).map_err(|_| EditError::NotText)?;
    if let Some(expected) = expected {
        let current = Policy::version_of(text.as_bytes());
        if current != expected {
            return Err(EditError::Changed { current });
        }
    }
    // The whole new file must be a valid policy before anything is written.
    let edited = edit_text(&shown, &text, change)?;
    if !dry_run {
        write_atomically(&real, edited.as_bytes()).map_err(EditError::Write)?;
    }
    Ok(Edited {
        old_text: text,
        new_text: edited,
    })
}

/// `change` applied to `text` (the stored policy, named `shown` in
/// messages), both the old and the new text valid policies.
pub fn edit_text(
    shown: &str,
    text: &str,
    change: impl FnOnce(&str, &Policy) -> Result<String, Refused>,
) -> Result<String, EditError> {
    let policy = match policy_file::compile(shown, text.as_bytes()) {
        Outcome::Valid(compiled) => compiled.policy,
        Outcome::Invalid(error) => return Err(EditError::InvalidNow(error)),
        Outcome::Unreadable(e) => return Err(EditError::Unreadable(e)),
    };
    let edited = change(text, &policy).map_err(EditError::Refused)?;
    if let Outcome::Invalid(error) = policy_file::compile(shown, edited.as_bytes()) {
        return Err(EditError::WouldBeInvalid(error));
    }
    Ok(edited)
}

/// Writes `text` as the file `file` leads to, under its lock: replacing it
/// when its version is `expected`, creating it when `expected` is `None` and
/// it does not exist. The text is validated first by the caller.
pub fn put_file(file: &Path, text: &str, expected: Option<&str>) -> Result<Edited, EditError> {
    let exists = std::fs::symlink_metadata(file).is_ok();
    let real = if exists {
        resolve(file).map_err(EditError::Path)?
    } else {
        file.to_path_buf()
    };
    let _lock = lock_beside(&real).map_err(EditError::Lock)?;
    let old_text = match std::fs::read(&real) {
        Ok(bytes) => Some(String::from_utf8(bytes).map_err(|_| EditError::NotText)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(EditError::Unreadable(e)),
    };
    match (&old_text, expected) {
        (Some(old), expected) => {
            let current = Policy::version_of(old.as_bytes());
            if expected != Some(current.as_str()) {
                return Err(EditError::Changed { current });
            }
        }
        (None, Some(_)) => return Err(EditError::Unreadable(io::Error::from(io::ErrorKind::NotFound))),
        (None, None) => {}
    }
    write_atomically(&real, text.as_bytes()).map_err(EditError::Write)?;
    Ok(Edited {
        old_text: old_text.unwrap_or_default(),
        new_text: text.to_owned(),
    })
}

/// Removes the file `file` leads to, under its lock, when its version is
/// `expected` (any version when `None`); returns its text.
pub fn delete_file(file: &Path, expected: Option<&str>) -> Result<String, EditError> {
    let real = resolve(file).map_err(EditError::Path)?;
    let _lock = lock_beside(&real).map_err(EditError::Lock)?;
    let bytes = std::fs::read(&real).map_err(EditError::Unreadable)?;
    let current = Policy::version_of(&bytes);
    if expected.is_some_and(|e| e != current) {
        return Err(EditError::Changed { current });
    }
    std::fs::remove_file(&real).map_err(EditError::Write)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The edit's origin, parsed and normalised as an entry would be.
fn pattern(origin: &str) -> Result<OriginPattern, Refused> {
    origin
        .parse::<OriginPattern>()
        .map_err(|e| Refused::BadOrigin(format!("invalid origin `{origin}`: {e}")))
}

/// `text` with an entry for `origin` (and its `note`) appended.
pub fn add(text: &str, policy: &Policy, origin: &str, note: Option<&str>) -> Result<String, Refused> {
    let pattern = pattern(origin)?;
    if let Some(entry) = policy.entries().iter().find(|e| e.pattern == pattern) {
        return Err(Refused::Duplicate(format!(
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
        Some(_) => return Err(not_tables()),
    }
    Ok(doc.to_string())
}

/// `text` without the entries that normalise to `origin`.
pub fn remove(text: &str, policy: &Policy, origin: &str) -> Result<String, Refused> {
    let pattern = pattern(origin)?;
    if !policy.entries().iter().any(|e| e.pattern == pattern) {
        return Err(Refused::Absent(format!("`{pattern}` is not listed: nothing to remove")));
    }
    let mut doc = parse(text)?;
    let Some(Item::ArrayOfTables(entries)) = doc.get_mut("entries") else {
        return Err(not_tables());
    };
    // Every entry that normalises to the origin goes (duplicates too).
    entries.retain(|table| {
        let listed = table.get("origin").and_then(Item::as_str);
        listed.and_then(|o| o.parse::<OriginPattern>().ok()).as_ref() != Some(&pattern)
    });
    Ok(doc.to_string())
}

fn not_tables() -> Refused {
    Refused::Layout("`entries` is not written as `[[entries]]` tables".to_owned())
}

fn parse(text: &str) -> Result<DocumentMut, Refused> {
    text.parse::<DocumentMut>()
        .map_err(|e| Refused::Layout(format!("cannot edit the file: {e}")))
}

/// Each error of `error` as `FILE:LINE:COL: message`, as a client shows it.
pub fn error_lines(error: &PolicyError, file: &str) -> Vec<String> {
    error
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{file}:{}:{}: {}", d.line, d.column, d.message))
        .collect()
}

/// The regular file `file` leads to, every symlink followed; why not, when
/// it leads nowhere or to something else.
pub fn resolve(file: &Path) -> Result<PathBuf, String> {
    if let Some(what) = crate::watch::not_a_file(file) {
        return Err(format!("not a policy file: it is {what}"));
    }
    std::fs::canonicalize(file).map_err(|e| policy_file::unreadable_message(&e))
}

/// An exclusive lock on `FILE.lock` beside the file, held until dropped.
fn lock_beside(file: &Path) -> io::Result<File> {
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
fn write_atomically(file: &Path, bytes: &[u8]) -> io::Result<()> {
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
