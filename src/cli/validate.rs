//! `corsd validate FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::core::{Compiled, Policy};
use crate::policy_file::{self, Outcome};
use crate::watch::Fingerprint;

/// Flags of `corsd validate`.
#[derive(Debug, clap::Args)]
pub(super) struct ValidateArgs {
    /// The policy file, or a directory of tenant policies (`NAME.toml` each).
    file: PathBuf,
}

pub(super) fn run(args: &ValidateArgs) -> ExitCode {
    let file = &args.file;
    if file.is_dir() {
        return match load_dir(file) {
            Ok(tenants) => {
                let entries: usize = tenants.iter().map(|(_, _, p, _)| p.entries().len()).sum();
                println!(
                    "{}: {} valid tenant polic{}, {entries} entr{}",
                    file.display(),
                    tenants.len(),
                    if tenants.len() == 1 { "y" } else { "ies" },
                    if entries == 1 { "y" } else { "ies" }
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        };
    }
    match load(file) {
        Ok(compiled) => {
            let p = &compiled.policy;
            println!(
                "{}: valid policy, version {}, {} entr{}",
                file.display(),
                p.version(),
                p.entries().len(),
                if p.entries().len() == 1 { "y" } else { "ies" }
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Loads a policy file for a command: warnings and errors go to stderr as
/// `corsd validate` prints them; on failure the exit code (1 invalid,
/// 2 unreadable) is returned.
pub(super) fn load(path: &Path) -> Result<Compiled, ExitCode> {
    let shown = path.display().to_string();
    let outcome = policy_file::load(path);
    let report = outcome.report(&shown).to_string();
    if !report.is_empty() {
        eprintln!("{report}");
    }
    match outcome {
        Outcome::Valid(compiled) => Ok(*compiled),
        Outcome::Invalid(error) => {
            let count = error.error_count();
            eprintln!(
                "{shown}: {count} error{}: not a valid policy",
                if count == 1 { "" } else { "s" }
            );
            Err(ExitCode::from(1))
        }
        Outcome::Unreadable(_) => Err(ExitCode::from(2)),
    }
}

/// Loads every tenant file of a policy directory, reporting every error of
/// every file as `corsd validate` does; on failure the exit code (1 if any
/// file is invalid, 2 if the directory or a file cannot be read).
pub(super) fn load_dir(dir: &Path) -> Result<Vec<(String, PathBuf, Policy, Fingerprint)>, ExitCode> {
    let (files, outcomes) = match policy_file::load_dir(dir) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{}: cannot read the policy directory: {e}", dir.display());
            return Err(ExitCode::from(2));
        }
    };
    for name in &files.misnamed {
        eprintln!("{}", policy_file::misnamed_message(dir, name));
    }
    let (mut errors, mut unreadable, mut tenants) = (0, false, Vec::new());
    for ((name, path), (outcome, print)) in files.tenants.into_iter().zip(outcomes) {
        let shown = path.display().to_string();
        let report = outcome.report(&shown).to_string();
        if !report.is_empty() {
            eprintln!("{report}");
        }
        match outcome {
            Outcome::Valid(compiled) => tenants.push((name, path, compiled.policy, print)),
            Outcome::Invalid(error) => errors += error.error_count(),
            Outcome::Unreadable(_) => unreadable = true,
        }
    }
    if errors > 0 {
        eprintln!(
            "{}: {errors} error{}: not a valid policy directory",
            dir.display(),
            if errors == 1 { "" } else { "s" }
        );
        return Err(ExitCode::from(1));
    }
    if unreadable {
        return Err(ExitCode::from(2));
    }
    Ok(tenants)
}
