//! `corsd validate FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::core::Compiled;
use crate::policy_file::{self, Outcome};

/// Flags of `corsd validate`.
#[derive(Debug, clap::Args)]
pub(super) struct ValidateArgs {
    /// The policy file.
    file: PathBuf,
}

pub(super) fn run(args: &ValidateArgs) -> ExitCode {
    let file = &args.file;
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
