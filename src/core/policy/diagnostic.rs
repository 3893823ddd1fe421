//! Diagnostics of a policy file: what is wrong, where, and how to fix it.
//!
//! A [`Diagnostic`] keeps its parts apart (severity, position, message,
//! help); only [`Diagnostic::display`] joins them, as
//! `FILE:LINE:COL: message: help`, the form `corsd validate` prints and
//! `PolicyInfo.last_reload_error` carries.

use std::fmt;

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file is not a valid policy.
    Error,
    /// The file is valid, but probably not what was meant.
    Warning,
}

/// A message about one place in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// What is wrong: lowercase, no final period, the offending value in backticks.
    pub message: String,
    /// How to fix it, where a hint helps.
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at `line`:`column`.
    pub fn error(line: u32, column: u32, message: impl Into<String>, help: Option<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            line,
            column,
            message: message.into(),
            help,
        }
    }

    /// Shows the diagnostic as `FILE:LINE:COL: message`, with `: help` after
    /// it when there is a hint.
    pub fn display<'d>(&'d self, file: &'d str) -> impl fmt::Display + 'd {
        DisplayDiagnostic { file, diagnostic: self }
    }
}

struct DisplayDiagnostic<'d> {
    file: &'d str,
    diagnostic: &'d Diagnostic,
}

impl fmt::Display for DisplayDiagnostic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.diagnostic;
        let kind = match d.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(f, "{}:{}:{}: {kind}{}", self.file, d.line, d.column, d.message)?;
        match &d.help {
            Some(help) => write!(f, ": {help}"),
            None => Ok(()),
        }
    }
}

/// Why a file is not a valid policy: every error, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Errors first, then any warnings, each sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicyError {
    /// A file refused for one reason.
    pub(crate) fn one(diagnostic: Diagnostic) -> Self {
        PolicyError {
            diagnostics: vec![diagnostic],
        }
    }

    /// How many of the diagnostics are errors.
    pub fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Shows every diagnostic, one per line, as `FILE:LINE:COL: message`.
    pub fn display<'d>(&'d self, file: &'d str) -> impl fmt::Display + 'd {
        DisplayAll {
            file,
            diagnostics: &self.diagnostics,
        }
    }
}

struct DisplayAll<'d> {
    file: &'d str,
    diagnostics: &'d [Diagnostic],
}

impl fmt::Display for DisplayAll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", d.display(self.file))?;
        }
        Ok(())
    }
}

/// Errors first, then warnings, each in file order.
pub(crate) fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| (d.severity == Severity::Warning, d.line, d.column));
}
