//! One policy loader for every caller: `corsd validate`, `corsd check`, the
//! server's start-up and its reloads. It reads a file, compiles it, and says
//! what came of it as a typed [`Outcome`]; the callers decide what to print,
//! log or exit with.

use std::fmt;
use std::path::Path;

use crate::core::{Compiled, Policy, PolicyError};

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

/// Reads and compiles the policy file at `path`.
pub fn load(path: &Path) -> Outcome {
    match std::fs::read(path) {
        Ok(bytes) => compile(&path.display().to_string(), &bytes),
        Err(e) => Outcome::Unreadable(e),
    }
}

/// Compiles a policy file's bytes; `source` names it.
pub fn compile(source: &str, bytes: &[u8]) -> Outcome {
    match Policy::compile(source, bytes) {
        Ok(compiled) => Outcome::Valid(Box::new(compiled)),
        Err(error) => Outcome::Invalid(error),
    }
}
