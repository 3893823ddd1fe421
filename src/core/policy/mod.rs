//! The policy file: TOML text → a validated, compiled, immutable [`Policy`].
//!
//! Every error of a file is collected, each with the line and column it
//! points at and, where one helps, how to fix it. Header values are built
//! here, once, so deciding a request only borrows them. This module reads
//! text handed to it; it never opens files.
//!
//! - [`reader`]: the TOML walk and the entries;
//! - [`cors`]: the `[cors]` rules;
//! - [`scope`]: the `[scope]` table;
//! - [`diagnostic`]: what the compiler reports.

mod cors;
mod diagnostic;
mod reader;
mod scope;

use sha2::{Digest, Sha256};
use toml::de::DeTable;

pub(crate) use cors::CorsRules;
pub use diagnostic::{Diagnostic, PolicyError, Severity};
pub(crate) use scope::Scope;

use super::allowlist::Allowlist;
use super::pattern::OriginPattern;
use diagnostic::sort;

use reader::{LineIndex, RawEntry, Reader};

/// A compiled policy: immutable, cheap to decide with, shared between calls.
#[derive(Debug)]
pub struct Policy {
    version: String,
    label: String,
    source: String,
    pub(crate) cors: CorsRules,
    pub(crate) scope: Scope,
    entries: Vec<Entry>,
    pub(crate) allowlist: Allowlist,
}

/// One allowlist entry, as the file gives it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The normalised pattern.
    pub pattern: OriginPattern,
    /// The operator's note, empty when none.
    pub note: String,
    /// The line of the entry's `origin` in the file.
    pub line: u32,
}

/// A policy that compiled, with the warnings found on the way.
#[derive(Debug)]
pub struct Compiled {
    /// The policy.
    pub policy: Policy,
    /// Warnings, in file order.
    pub warnings: Vec<Diagnostic>,
}

impl Policy {
    /// Validates and compiles a policy file's bytes. `source` names the
    /// file in [`Policy::source`]; it is not opened.
    pub fn compile(source: &str, bytes: &[u8]) -> Result<Compiled, PolicyError> {
        let version = version_of(bytes);
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
                let lossy = String::from_utf8_lossy(valid);
                let (line, column) = LineIndex::new(&lossy).position(valid.len());
                return Err(PolicyError::one(Diagnostic::error(
                    line,
                    column,
                    "the file is not UTF-8 text",
                    None,
                )));
            }
        };
        if text.is_empty() {
            return Err(PolicyError::one(Diagnostic::error(
                1,
                1,
                "the file is empty, as a write caught half-way looks",
                Some("a policy with no entries still has at least a comment or a `[cors]` table".to_owned()),
            )));
        }
        let mut reader = Reader {
            lines: LineIndex::new(text),
            diagnostics: Vec::new(),
        };
        let (root, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            for error in syntax {
                let at = error.span().map_or(0, |s| s.start);
                let message = error.message().trim().trim_end_matches('.').to_owned();
                reader.error(at, message);
            }
            return Err(reader.into_error());
        }
        let document = document(&mut reader, root.get_ref());
        // The parsed tree is the bulk of a compile's memory: free it before
        // the index is built, so the index can reuse that memory.
        drop(root);
        let Parts {
            label,
            cors,
            scope,
            entries,
        } = document;
        let entries = entries.and_then(|raw| reader.patterns(raw));
        match (cors, scope, entries) {
            (Some(cors), Some(scope), Some(entries)) if !reader.has_errors() => {
                let allowlist = Allowlist::build(entries.iter().map(|e| &e.pattern));
                let policy = Policy {
                    version,
                    label,
                    source: source.to_owned(),
                    cors,
                    scope,
                    entries,
                    allowlist,
                };
                let mut warnings = reader.diagnostics;
                sort(&mut warnings);
                Ok(Compiled { policy, warnings })
            }
            _ => Err(reader.into_error()),
        }
    }

    /// The version a file with these bytes would have, without compiling it.
    pub fn version_of(bytes: &[u8]) -> String {
        version_of(bytes)
    }

    /// First 16 hex digits of the SHA-256 of the file's bytes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The file's `label`, empty when none.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Where the policy came from, as given to [`Policy::compile`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The compiled allowlist index.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every setting that shapes a decision, by name, with its effective
    /// value (defaults applied, lists normalised): what `corsd diff` compares.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let rules = &self.cors;
        let list = |any: bool, names: &[Box<str>]| {
            let mut all: Vec<&str> = names.iter().map(|n| &**n).collect();
            all.sort_unstable();
            if any {
                all.insert(0, "*");
            }
            all.join(", ")
        };
        let sorted = |items: &[Box<str>]| {
            let mut all: Vec<&str> = items.iter().map(|i| &**i).collect();
            all.sort_unstable();
            all.join(", ")
        };
        vec![
            ("cors.allow_methods", list(rules.any_method, &rules.methods)),
            ("cors.allow_headers", list(rules.any_header, &rules.headers)),
            (
                "cors.expose_headers",
                rules.expose_headers_value.as_deref().unwrap_or("").to_owned(),
            ),
            ("cors.allow_credentials", rules.allow_credentials.to_string()),
            ("cors.max_age", rules.max_age_value.to_string()),
            ("cors.allow_private_network", rules.allow_private_network.to_string()),
            ("scope.hosts", sorted(self.scope.hosts())),
            ("scope.paths", sorted(self.scope.paths())),
        ]
    }

    /// The hosts of `[scope]`, normalised (lowercase, no port, no trailing
    /// dot); empty when the policy covers every host.
    pub fn scope_hosts(&self) -> impl Iterator<Item = &str> {
        self.scope.hosts().iter().map(|h| &**h)
    }

    /// The path prefixes of `[scope]`, without a trailing `/` (`/` is `""`),
    /// in file order; empty when the policy covers every path.
    pub fn scope_paths(&self) -> Vec<&str> {
        self.scope.paths().iter().map(|p| &**p).collect()
    }
}

fn version_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The parts of a document that validated.
struct Parts<'i> {
    label: String,
    cors: Option<CorsRules>,
    scope: Option<Scope>,
    entries: Option<Vec<RawEntry<'i>>>,
}

/// Reads the document's four parts, each by the module that owns it
/// (`cors`, `scope`, the entries in `reader`), collecting every diagnostic.
fn document<'i>(reader: &mut Reader<'_>, root: &DeTable<'i>) -> Parts<'i> {
    reader.unknown_keys(root, "the file", &["label", "cors", "scope", "entries"]);
    let label = match root.get("label") {
        Some(v) => reader.string(v, "label").unwrap_or_default(),
        None => String::new(),
    };
    let empty = DeTable::new();
    let cors = reader.table(root.get("cors"), "cors").unwrap_or(&empty);
    let cors = reader.cors(cors);
    let scope = reader.table(root.get("scope"), "scope").unwrap_or(&empty);
    let scope = reader.scope(scope);
    let entries = reader.entries(root.get("entries"));
    Parts {
        label,
        cors,
        scope,
        entries,
    }
}
