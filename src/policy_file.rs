//! One policy loader for every caller: `corsd validate`, `corsd check`, the
//! server's start-up and its reloads. It reads a file, compiles it, and says
//! what came of it as a typed [`Outcome`]; the callers decide what to print,
//! log or exit with.

use std::fmt;
use std::path::Path;

use crate::core::{Compiled, Policy, PolicyError};
use crate::watch::Fingerprint;

/// What loading a policy file came to.
#[derive(Debug)]
pub enum Outcome {
    /// A valid policy, maybe with warnings (boxed: it is far larger than the others).
    Valid(Box<Compiled>),
    /// The file was read but is not a valid policy.
    Invalid(PolicyError),
    /// The file could not be read.
    Unreadable(std::io::Error),
}

impl Outcome {
    /// The outcome's kind as a word: `ok`, `invalid` or `unreadable`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Valid(_) => "ok",
            Outcome::Invalid(_) => "invalid",
            Outcome::Unreadable(_) => "unreadable",
        }
    }

    /// The problem as `corsd validate` prints it (every diagnostic as
    /// `FILE:LINE:COL: message`, or the read error); warnings for a valid
    /// policy. `shown` names the file.
    pub fn report<'o>(&'o self, shown: &'o str) -> impl fmt::Display + 'o {
        Report { outcome: self, shown }
    }
}

struct Report<'o> {
    outcome: &'o Outcome,
    shown: &'o str,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.shown;
        match self.outcome {
            Outcome::Valid(compiled) => {
                for (i, warning) in compiled.warnings.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{}", warning.display(shown))?;
                }
                Ok(())
            }
            Outcome::Invalid(error) => write!(f, "{}", error.display(shown)),
            Outcome::Unreadable(e) => write!(f, "{shown}: {}", unreadable_message(e)),
        }
    }
}

/// What a read error says about a policy file.
pub fn unreadable_message(error: &std::io::Error) -> String {
    format!("cannot read the policy file: {error}")
}

/// Reads and compiles the policy file at `path`. Only a regular file (links
/// followed) is opened: a FIFO, a device or a dangling link is unreadable,
/// and says what it is.
pub fn load(path: &Path) -> Outcome {
    load_with_print(path).0
}

/// [`load`], with the fingerprint of the file the bytes came from (taken
/// before reading, so a later write shows as a change).
pub fn load_with_print(path: &Path) -> (Outcome, Fingerprint) {
    match crate::watch::read_file(path) {
        Ok((bytes, print)) => (compile(&path.display().to_string(), &bytes), print),
        Err(e) => (Outcome::Unreadable(e), Fingerprint::default()),
    }
}

/// Runs `work` on every item, on as many threads as the machine has, and
/// returns the results in the items' order. Blocking.
pub fn in_parallel<I: Sync, R: Send>(items: &[I], work: impl Fn(&I) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if items.len() < 2 || threads < 2 {
        return items.iter().map(&work).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let work = &work;
        let running: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(work).collect::<Vec<R>>()))
            .collect();
        let mut results = Vec::with_capacity(items.len());
        for (thread, part) in running.into_iter().zip(items.chunks(chunk)) {
            match thread.join() {
                Ok(done) => results.extend(done),
                // A worker that panicked: its part is done again here.
                Err(_) => results.extend(part.iter().map(work)),
            }
        }
        results
    })
}

/// Compiles a policy file's bytes; `source` names it.
pub fn compile(source: &str, bytes: &[u8]) -> Outcome {
    match Policy::compile(source, bytes) {
        Ok(compiled) => Outcome::Valid(Box::new(compiled)),
        Err(error) => Outcome::Invalid(error),
    }
}

/// A policy directory's tenant files: `NAME.toml` directly in the
/// directory, `NAME` a tenant name, whatever they are (a regular file, a
/// symlink, or something that cannot be read, which loading reports).
#[derive(Debug, Default)]
pub struct TenantFiles {
    /// Each tenant's name and file, in name order.
    pub tenants: Vec<(String, std::path::PathBuf)>,
    /// `.toml` files (not dotfiles) whose name is not a tenant name.
    pub misnamed: Vec<String>,
}

/// Lists the tenant files of `dir`. Dotfiles (Kubernetes' `..data`, editors'
/// temp files) and every other name are never read.
pub fn tenant_files(dir: &Path) -> std::io::Result<TenantFiles> {
    let mut files = TenantFiles::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".toml") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if !crate::core::is_tenant_name(stem) {
            files.misnamed.push(name.to_owned());
            continue;
        }
        files.tenants.push((stem.to_owned(), entry.path()));
    }
    files.tenants.sort();
    files.misnamed.sort();
    Ok(files)
}

/// Loads every tenant file of `dir`, read and compiled in parallel: each
/// tenant's outcome and the fingerprint of the file it came from, in name
/// order.
pub fn load_dir(dir: &Path) -> std::io::Result<(TenantFiles, Vec<(Outcome, Fingerprint)>)> {
    let files = tenant_files(dir)?;
    let outcomes = in_parallel(&files.tenants, |(_, path)| load_with_print(path));
    Ok((files, outcomes))
}

/// What `corsd` says of a `.toml` file that no tenant is named after.
pub fn misnamed_message(dir: &Path, name: &str) -> String {
    format!(
        "{}: warning: `{name}` is not read: a tenant file is named `NAME.toml`, NAME of \
         lowercase letters, digits, `_` and `-` (at most 63, starting with a letter or digit)",
        dir.join(name).display()
    )
}
