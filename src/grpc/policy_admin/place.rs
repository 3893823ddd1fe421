//! Where one tenant's policy is kept, for [`super::PolicyAdminService`]:
//! its file, written through [`crate::edit`] as `corsd entries` writes it,
//! or its etcd key, written in transactions on its `mod_revision`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::core::Policy;
use crate::edit::{self, EditError, Edited, Refused};

/// Where one tenant's policy is kept: its file, or its etcd key.
#[derive(Debug)]
pub(super) enum Place {
    /// A policy file.
    File(PathBuf),
    /// An etcd key: the client, the tenant, and the runtime its calls run on.
    Etcd(crate::etcd::Etcd, String, tokio::runtime::Handle),
}

/// Times an etcd edit is tried again when another write came between its
/// read and its transaction (with no expected version).
const ETCD_EDIT_TRIES: usize = 20;
/// How long an etcd call is retried while etcd says it cannot answer now
/// (an election, a member down): within the 5 s a write may take.
const ETCD_RETRY_FOR: Duration = Duration::from_millis(1500);

/// `call`, again every 100 ms while it is `Unavailable`, for at most
/// [`ETCD_RETRY_FOR`]. Off the async workers.
fn retried<T>(call: impl Fn() -> Result<T, EditError>) -> Result<T, EditError> {
    let started = std::time::Instant::now();
    loop {
        match call() {
            Err(EditError::Unavailable(_)) if started.elapsed() < ETCD_RETRY_FOR => {
                std::thread::sleep(Duration::from_millis(100));
            }
            done => return done,
        }
    }
}

impl Place {
    /// The name messages give the policy: `NAME.toml`.
    pub(super) fn shown(&self, tenant: &str) -> String {
        match self {
            Place::File(file) if tenant.is_empty() => file
                .file_name()
                .map_or_else(|| "policy.toml".to_owned(), |n| n.to_string_lossy().into_owned()),
            _ => format!("{tenant}.toml"),
        }
    }

    /// The stored text and its etcd `mod_revision` (0 for a file); `None`
    /// when there is none. Off the async workers.
    pub(super) fn read(&self) -> Result<Option<(String, i64)>, EditError> {
        match self {
            Place::File(file) => match std::fs::read(file) {
                Ok(bytes) => Ok(Some((String::from_utf8(bytes).map_err(|_| EditError::NotText)?, 0))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(EditError::Unreadable(e)),
            },
            Place::Etcd(etcd, name, runtime) => {
                let stored = retried(|| {
                    runtime
                        .block_on(etcd.get(name))
                        .map_err(|e| EditError::Unavailable(e.0))
                })?;
                stored
                    .map(|s| {
                        Ok((
                            String::from_utf8(s.text).map_err(|_| EditError::NotText)?,
                            s.mod_revision,
                        ))
                    })
                    .transpose()
            }
        }
    }

    /// Applies `change` to the stored policy, at version `expected` when given.
    pub(super) fn edit(
        &self,
        tenant: &str,
        expected: Option<&str>,
        change: impl Fn(&str, &Policy) -> Result<String, Refused>,
    ) -> Result<Edited, EditError> {
        let (etcd, name, runtime) = match self {
            Place::File(file) => return edit::edit_file(file, false, expected, change),
            Place::Etcd(etcd, name, runtime) => (etcd, name, runtime),
        };
        for _ in 0..ETCD_EDIT_TRIES {
            let Some((text, revision)) = self.read()? else {
                return Err(EditError::Unreadable(io::Error::from(io::ErrorKind::NotFound)));
            };
            check_version(&text, expected)?;
            let edited = edit::edit_text(&self.shown(tenant), &text, &change)?;
            let written = self.txn(Some(&edited), || {
                runtime.block_on(etcd.put_if(name, edited.as_bytes(), revision))
            })?;
            if written.is_some() {
                return Ok(Edited {
                    old_text: text,
                    new_text: edited,
                });
            }
            if expected.is_some() {
                break;
            }
            // Another writer came between the read and the transaction:
            // read its text and apply the edit to it, a little later.
            std::thread::sleep(Duration::from_millis(5 + (revision.unsigned_abs() % 20)));
        }
        let current = self
            .read()?
            .map(|(text, _)| Policy::version_of(text.as_bytes()))
            .unwrap_or_default();
        Err(EditError::Changed { current })
    }

    /// Stores `text`: replacing the policy at version `expected`, or
    /// creating it when `None` (`Changed` when it exists).
    pub(super) fn put(&self, text: &str, expected: Option<&str>) -> Result<Edited, EditError> {
        let (etcd, name, runtime) = match self {
            Place::File(file) => return edit::put_file(file, text, expected),
            Place::Etcd(etcd, name, runtime) => (etcd, name, runtime),
        };
        let (old_text, revision) = match (self.read()?, expected) {
            (Some((old, revision)), Some(_)) => {
                check_version(&old, expected)?;
                (old, revision)
            }
            (Some((old, _)), None) => {
                return Err(EditError::Changed {
                    current: Policy::version_of(old.as_bytes()),
                });
            }
            (None, Some(_)) => return Err(EditError::Unreadable(io::Error::from(io::ErrorKind::NotFound))),
            (None, None) => (String::new(), 0),
        };
        match self.txn(Some(text), || {
            runtime.block_on(etcd.put_if(name, text.as_bytes(), revision))
        })? {
            Some(_) => Ok(Edited {
                old_text,
                new_text: text.to_owned(),
            }),
            None => Err(EditError::Changed {
                current: self
                    .read()?
                    .map(|(t, _)| Policy::version_of(t.as_bytes()))
                    .unwrap_or_default(),
            }),
        }
    }

    /// Deletes the policy at version `expected` (any when `None`); its text.
    pub(super) fn delete(&self, expected: Option<&str>) -> Result<String, EditError> {
        let (etcd, name, runtime) = match self {
            Place::File(file) => return edit::delete_file(file, expected),
            Place::Etcd(etcd, name, runtime) => (etcd, name, runtime),
        };
        let Some((text, revision)) = self.read()? else {
            return Err(EditError::Unreadable(io::Error::from(io::ErrorKind::NotFound)));
        };
        check_version(&text, expected)?;
        match self.txn(None, || runtime.block_on(etcd.delete_if(name, revision)))? {
            Some(_) => Ok(text),
            None => Err(EditError::Changed {
                current: self
                    .read()?
                    .map(|(t, _)| Policy::version_of(t.as_bytes()))
                    .unwrap_or_default(),
            }),
        }
    }
}

impl Place {
    /// Runs the transaction `txn` (a write of the tenant's key, to
    /// `wanted`: `None` for a deletion); `Some` when it was applied. When
    /// etcd could not answer, the key is read again: a transaction applied
    /// before the answer was lost counts as applied.
    fn txn(
        &self,
        wanted: Option<&str>,
        txn: impl Fn() -> Result<Option<i64>, crate::etcd::Unavailable>,
    ) -> Result<Option<i64>, EditError> {
        let Place::Etcd(etcd, name, runtime) = self else {
            return Err(EditError::Unavailable("not an etcd key".to_owned()));
        };
        // Whether the key holds what this write wanted (one read, not
        // retried: the whole write stays within its 5 s).
        let landed = || {
            runtime
                .block_on(etcd.get(name))
                .is_ok_and(|now| now.as_ref().map(|s| s.text.as_slice()) == wanted.map(str::as_bytes))
        };
        let lost_an_answer = std::cell::Cell::new(false);
        retried(|| match txn() {
            Ok(Some(revision)) => Ok(Some(revision)),
            // The compare failed: after a lost answer, maybe against this
            // write's own revision.
            Ok(None) if lost_an_answer.get() && landed() => Ok(Some(0)),
            Ok(None) => Ok(None),
            Err(e) => {
                lost_an_answer.set(true);
                if landed() {
                    Ok(Some(0))
                } else {
                    Err(EditError::Unavailable(e.0))
                }
            }
        })
    }
}

/// `Changed` unless `text` has the version `expected` (when given).
fn check_version(text: &str, expected: Option<&str>) -> Result<(), EditError> {
    let current = Policy::version_of(text.as_bytes());
    match expected {
        Some(expected) if expected != current => Err(EditError::Changed { current }),
        _ => Ok(()),
    }
}
