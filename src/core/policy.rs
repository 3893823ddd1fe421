//! The policy file: TOML text → a validated, compiled, immutable [`Policy`].
//!
//! Every error of a file is collected, each with the line and column it
//! points at and, where one helps, how to fix it. Header values are built
//! here, once, so deciding a request only borrows them. This module reads
//! text handed to it; it never opens files.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use foldhash::fast::RandomState;
use sha2::{Digest, Sha256};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::allowlist::Allowlist;
use super::origin::{MAX_HOST_LEN, check_dns_name, split_host_port};
use super::pattern::OriginPattern;

/// Methods browsers upper-case when they send them
/// ([Fetch: normalize a method](https://fetch.spec.whatwg.org/#concept-method-normalize)).
const NORMALIZED_METHODS: [&str; 6] = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"];

/// Methods no browser lets a page send
/// ([Fetch: forbidden method](https://fetch.spec.whatwg.org/#forbidden-method)).
pub(crate) const FORBIDDEN_METHODS: [&str; 3] = ["CONNECT", "TRACE", "TRACK"];

const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
const DEFAULT_HEADERS: [&str; 3] = ["authorization", "content-type", "x-requested-with"];
const MAX_MAX_AGE: i64 = 86_400;

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

/// The `[cors]` table, with the response header values built in advance.
#[derive(Debug)]
pub(crate) struct CorsRules {
    pub(crate) any_method: bool,
    pub(crate) methods: Vec<Box<str>>,
    pub(crate) any_header: bool,
    /// Lowercase header names listed by name (besides `*`).
    pub(crate) headers: Vec<Box<str>>,
    pub(crate) allow_credentials: bool,
    pub(crate) allow_private_network: bool,
    /// `Access-Control-Allow-Methods`; `None`: echo the requested method.
    pub(crate) allow_methods_value: Option<Box<str>>,
    /// `Access-Control-Allow-Headers`; `None`: echo the requested headers.
    pub(crate) allow_headers_value: Option<Box<str>>,
    /// `Access-Control-Expose-Headers`; `None` when nothing is exposed.
    pub(crate) expose_headers_value: Option<Box<str>>,
    pub(crate) max_age_value: Box<str>,
}

/// Up to this many scope hosts are compared one by one; more are hashed.
const SCANNED_SCOPE_HOSTS: usize = 8;

/// The `[scope]` table: which targets the allowlist governs.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    /// Lowercase, without port or trailing dot; empty: every host.
    hosts: HashSet<Box<str>, RandomState>,
    /// The same hosts in a list, scanned instead of hashed while they are few.
    host_list: Vec<Box<str>>,
    /// Without a trailing `/`, so `/` is stored as `""`; empty: every path.
    paths: Vec<Box<str>>,
}

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
    /// Lowercase, no final period, the offending value in backticks.
    pub message: String,
}

impl Diagnostic {
    /// Shows the diagnostic as `FILE:LINE:COL: message`.
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
        write!(f, "{}:{}:{}: {kind}{}", self.file, d.line, d.column, d.message)
    }
}

/// A policy that compiled, with the warnings found on the way.
#[derive(Debug)]
pub struct Compiled {
    /// The policy.
    pub policy: Policy,
    /// Warnings, in file order.
    pub warnings: Vec<Diagnostic>,
}

/// Why a file is not a valid policy: every error, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Errors first, then any warnings, each sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicyError {
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
                return Err(PolicyError {
                    diagnostics: vec![error_at(line, column, "the file is not UTF-8 text")],
                });
            }
        };
        if text.is_empty() {
            return Err(PolicyError {
                diagnostics: vec![error_at(
                    1,
                    1,
                    "the file is empty, as a write caught half-way looks: a policy with no entries still has \
                     at least a comment or a `[cors]` table",
                )],
            });
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
        let document = reader.document(root.get_ref());
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
}

fn version_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn error_at(line: u32, column: u32, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        line,
        column,
        message: message.into(),
    }
}

fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| (d.severity == Severity::Warning, d.line, d.column));
}

/// Where each line of a text starts, to turn byte offsets into positions
/// without rescanning the text for every diagnostic and entry.
struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (u32, u32) {
        let line = self.starts.partition_point(|&start| start <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let column = self.text.get(start..offset).map_or(0, |l| l.chars().count()) + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column).unwrap_or(u32::MAX),
        )
    }
}

/// The parts of a document that validated.
struct Parts<'i> {
    label: String,
    cors: Option<CorsRules>,
    scope: Option<Scope>,
    entries: Option<Vec<RawEntry<'i>>>,
}

/// An entry as the file writes it, before its pattern is parsed.
struct RawEntry<'i> {
    text: Cow<'i, str>,
    /// Byte offset of the `origin` value.
    at: usize,
    note: Cow<'i, str>,
}

/// Walks the parsed TOML, collecting every diagnostic.
struct Reader<'t> {
    lines: LineIndex<'t>,
    diagnostics: Vec<Diagnostic>,
}

type Value<'i> = Spanned<DeValue<'i>>;

impl Reader<'_> {
    fn error(&mut self, at: usize, message: impl Into<String>) {
        let (line, column) = self.lines.position(at);
        self.diagnostics.push(error_at(line, column, message));
    }

    fn warning(&mut self, at: usize, message: impl Into<String>) {
        let (line, column) = self.lines.position(at);
        self.diagnostics.push(Diagnostic {
            severity: Severity::Warning,
            line,
            column,
            message: message.into(),
        });
    }

    fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    fn into_error(mut self) -> PolicyError {
        sort(&mut self.diagnostics);
        PolicyError {
            diagnostics: self.diagnostics,
        }
    }

    /// Reports keys not in `known`, with a suggestion when one is close.
    fn unknown_keys(&mut self, table: &DeTable<'_>, within: &str, known: &[&str]) {
        for (key, _) in table.iter() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let close = known.iter().min_by_key(|k| strsim::levenshtein(k, name)).copied();
            let hint = match close {
                Some(k) if strsim::levenshtein(k, name) <= 2 => format!(": did you mean `{k}`?"),
                _ => format!(
                    ": {within} takes {}",
                    known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ),
            };
            self.error(key.span().start, format!("unknown key `{name}`{hint}"));
        }
    }

    fn document<'i>(&mut self, root: &DeTable<'i>) -> Parts<'i> {
        self.unknown_keys(root, "the file", &["label", "cors", "scope", "entries"]);
        let label = match root.get("label") {
            Some(v) => self.string(v, "label").unwrap_or_default(),
            None => String::new(),
        };
        let empty = DeTable::new();
        let cors = self.table(root.get("cors"), "cors").unwrap_or(&empty);
        let cors = self.cors(cors);
        let scope = self.table(root.get("scope"), "scope").unwrap_or(&empty);
        let scope = self.scope(scope);
        let entries = self.entries(root.get("entries"));
        Parts {
            label,
            cors,
            scope,
            entries,
        }
    }

    fn table<'a, 'i>(&mut self, value: Option<&'a Value<'i>>, name: &str) -> Option<&'a DeTable<'i>> {
        let value = value?;
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    value.span().start,
                    format!("`{name}` must be a table, not {}", kind(other)),
                );
                None
            }
        }
    }

    /// A string value, owned.
    fn string(&mut self, value: &Value<'_>, name: &str) -> Option<String> {
        self.cow(value, name).map(Cow::into_owned)
    }

    /// A string value, borrowing the file's text where the value has no escapes.
    fn cow<'i>(&mut self, value: &Value<'i>, name: &str) -> Option<Cow<'i, str>> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.clone()),
            other => {
                self.error(
                    value.span().start,
                    format!("`{name}` must be a string, not {}", kind(other)),
                );
                None
            }
        }
    }

    fn boolean(&mut self, table: &DeTable<'_>, name: &str, default: bool) -> Option<bool> {
        let Some(value) = table.get(name) else {
            return Some(default);
        };
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    value.span().start,
                    format!("`{name}` must be `true` or `false`, not {}", kind(other)),
                );
                None
            }
        }
    }

    /// An array of strings, each with where it stands.
    fn strings(&mut self, table: &DeTable<'_>, name: &str) -> Option<Option<Vec<(String, usize)>>> {
        let Some(value) = table.get(name) else {
            return Some(None);
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                value.span().start,
                format!("`{name}` must be an array of strings, not {}", kind(value.get_ref())),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.to_string(), item.span().start)),
                other => {
                    self.error(
                        item.span().start,
                        format!("`{name}` holds {}; it takes strings only", kind(other)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(Some(out))
    }

    fn cors(&mut self, table: &DeTable<'_>) -> Option<CorsRules> {
        self.unknown_keys(
            table,
            "`[cors]`",
            &[
                "allow_methods",
                "allow_headers",
                "expose_headers",
                "allow_credentials",
                "max_age",
                "allow_private_network",
            ],
        );
        let credentials = self.boolean(table, "allow_credentials", true);
        let private_network = self.boolean(table, "allow_private_network", false);
        let methods = self.methods(table);
        let headers = self.header_names(table, "allow_headers", &DEFAULT_HEADERS);
        let expose = self.header_names(table, "expose_headers", &[]);
        let max_age = self.max_age(table);

        if credentials.unwrap_or(true)
            && expose.as_ref().is_some_and(|(any, _)| *any)
            && let Some(v) = table.get("expose_headers")
        {
            self.error(
                v.span().start,
                "`expose_headers = [\"*\"]` does not work with `allow_credentials = true`: browsers then read `*` \
                 as a header name; list the headers to expose",
            );
            return None;
        }
        let (credentials, private_network) = (credentials?, private_network?);
        let (any_method, methods) = methods?;
        let (any_header, headers) = headers?;
        let (any_expose, expose) = expose?;
        let max_age = max_age?;

        let allow_methods_value = match (any_method, credentials) {
            (true, true) => None,
            (true, false) => Some("*".into()),
            (false, _) => Some(methods.join(", ").into()),
        };
        let allow_headers_value = match (any_header, credentials) {
            (true, true) => None,
            (true, false) => Some(
                std::iter::once("*")
                    .chain(headers.iter().map(|h| &**h))
                    .collect::<Vec<_>>()
                    .join(", ")
                    .into(),
            ),
            (false, _) => Some(headers.join(", ").into()),
        };
        let expose_list: Vec<&str> = if any_expose {
            vec!["*"]
        } else {
            expose.iter().map(|h| &**h).collect()
        };
        let expose_headers_value = (!expose_list.is_empty()).then(|| expose_list.join(", ").into());
        Some(CorsRules {
            any_method,
            methods,
            any_header,
            headers,
            allow_credentials: credentials,
            allow_private_network: private_network,
            allow_methods_value,
            allow_headers_value,
            expose_headers_value,
            max_age_value: max_age.to_string().into(),
        })
    }

    fn methods(&mut self, table: &DeTable<'_>) -> Option<(bool, Vec<Box<str>>)> {
        let listed = self.strings(table, "allow_methods")?;
        let listed = listed.unwrap_or_else(|| DEFAULT_METHODS.iter().map(|m| ((*m).to_owned(), 0)).collect());
        let mut any = false;
        let mut methods: Vec<Box<str>> = Vec::new();
        let mut ok = true;
        for (method, at) in listed {
            if method == "*" {
                any = true;
                continue;
            }
            if !is_token(&method) {
                self.error(
                    at,
                    format!("`{method}` is not an HTTP method: a method is a token such as `PATCH`"),
                );
                ok = false;
                continue;
            }
            if let Some(forbidden) = FORBIDDEN_METHODS.iter().find(|f| f.eq_ignore_ascii_case(&method)) {
                self.error(
                    at,
                    format!("`{method}` can never be allowed: browsers forbid `{forbidden}` in requests"),
                );
                ok = false;
                continue;
            }
            let method = match NORMALIZED_METHODS.iter().find(|n| n.eq_ignore_ascii_case(&method)) {
                Some(normal) => (*normal).to_owned(),
                None => method,
            };
            if !methods.iter().any(|m| **m == *method) {
                methods.push(method.into());
            }
        }
        ok.then_some((any, methods))
    }

    fn header_names(&mut self, table: &DeTable<'_>, name: &str, default: &[&str]) -> Option<(bool, Vec<Box<str>>)> {
        let listed = self.strings(table, name)?;
        let listed = listed.unwrap_or_else(|| default.iter().map(|h| ((*h).to_owned(), 0)).collect());
        let mut any = false;
        let mut names: Vec<Box<str>> = Vec::new();
        let mut ok = true;
        for (header, at) in listed {
            if header == "*" {
                any = true;
                continue;
            }
            if !is_token(&header) {
                self.error(
                    at,
                    format!("`{header}` is not a header name: use letters, digits and `-`, as in `x-request-id`"),
                );
                ok = false;
                continue;
            }
            let header = header.to_ascii_lowercase();
            if !names.iter().any(|h| **h == *header) {
                names.push(header.into());
            }
        }
        ok.then_some((any, names))
    }

    fn max_age(&mut self, table: &DeTable<'_>) -> Option<i64> {
        let Some(value) = table.get("max_age") else {
            return Some(600);
        };
        let seconds = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        match seconds {
            Some(s) if (0..=MAX_MAX_AGE).contains(&s) => Some(s),
            _ => {
                let shown = match value.get_ref() {
                    DeValue::Integer(i) => format!("`{}`", i.as_str()),
                    other => kind(other).to_owned(),
                };
                self.error(
                    value.span().start,
                    format!("`max_age` must be a whole number of seconds from 0 to 86400, not {shown}"),
                );
                None
            }
        }
    }

    fn scope(&mut self, table: &DeTable<'_>) -> Option<Scope> {
        self.unknown_keys(table, "`[scope]`", &["hosts", "paths"]);
        let hosts = self.strings(table, "hosts");
        let paths = self.strings(table, "paths");
        let mut scope = Scope::default();
        let mut ok = true;
        for (host, at) in hosts?.unwrap_or_default() {
            match scope_host(&host) {
                Ok(normal) => {
                    if scope.hosts.insert(normal.as_str().into()) {
                        scope.host_list.push(normal.into());
                    }
                }
                Err(message) => {
                    self.error(at, message);
                    ok = false;
                }
            }
        }
        for (path, at) in paths?.unwrap_or_default() {
            match scope_path(&path) {
                Ok(normal) => scope.paths.push(normal.into()),
                Err(message) => {
                    self.error(at, message);
                    ok = false;
                }
            }
        }
        ok.then_some(scope)
    }

    /// The entries' texts, still unchecked. They borrow the file's text, not
    /// the parsed tree, so the tree can be freed before any pattern is built.
    fn entries<'i>(&mut self, value: Option<&Value<'i>>) -> Option<Vec<RawEntry<'i>>> {
        let Some(value) = value else {
            return Some(Vec::new());
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                value.span().start,
                "`entries` must be an array of tables: write each entry as `[[entries]]` with `origin = \"...\"`",
            );
            return None;
        };
        let mut entries = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            let DeValue::Table(table) = item.get_ref() else {
                self.error(item.span().start, "each entry must be a table with `origin = \"...\"`");
                ok = false;
                continue;
            };
            self.unknown_keys(table, "an entry", &["origin", "note"]);
            let note = match table.get("note") {
                Some(v) => self.cow(v, "note"),
                None => Some(Cow::Borrowed("")),
            };
            let Some(origin) = table.get("origin") else {
                self.error(
                    item.span().start,
                    "this entry has no `origin`: add `origin = \"https://...\"`",
                );
                ok = false;
                continue;
            };
            match (self.cow(origin, "origin"), note) {
                (Some(text), Some(note)) => entries.push(RawEntry {
                    text,
                    at: origin.span().start,
                    note,
                }),
                _ => ok = false,
            }
        }
        ok.then_some(entries)
    }

    /// Parses and normalises the entries' patterns, reporting each refusal.
    fn patterns(&mut self, raw: Vec<RawEntry<'_>>) -> Option<Vec<Entry>> {
        let mut entries = Vec::with_capacity(raw.len());
        let mut ok = true;
        for RawEntry { text, at, note } in &raw {
            match text.parse::<OriginPattern>() {
                Ok(pattern) => {
                    let (line, _) = self.lines.position(*at);
                    entries.push(Entry {
                        pattern,
                        note: note.clone().into_owned(),
                        line,
                    });
                }
                Err(e) => {
                    self.error(*at, format!("invalid origin `{text}`: {e}"));
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        self.warn_duplicates(&entries, &raw);
        Some(entries)
    }

    /// Warns of entries that normalise to an origin already listed.
    fn warn_duplicates(&mut self, entries: &[Entry], raw: &[RawEntry<'_>]) {
        let mut first_lines: HashMap<&str, u32, RandomState> =
            HashMap::with_capacity_and_hasher(entries.len(), RandomState::default());
        for (entry, RawEntry { text, at, .. }) in entries.iter().zip(raw) {
            let pattern = &entry.pattern;
            let Some(first) = first_lines.get(pattern.as_str()) else {
                first_lines.insert(pattern.as_str(), entry.line);
                continue;
            };
            let same = if text == pattern.as_str() {
                String::new()
            } else {
                format!(" (`{text}` normalises to `{pattern}`)")
            };
            let message = format!("`{pattern}` repeats the entry on line {first}{same}");
            self.warning(*at, message);
        }
    }
}

fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// An RFC 9110 token: what a method or a header name is made of.
pub(crate) fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn scope_host(host: &str) -> Result<String, String> {
    if host.contains("://") {
        let bare = host.split_once("://").map_or(host, |(_, h)| h);
        return Err(format!(
            "scope host `{host}` has a scheme: write the host alone, as `{bare}`"
        ));
    }
    if let Some((before, _)) = host.split_once('/') {
        return Err(format!(
            "scope host `{host}` has a path: write the host alone, as `{before}`; paths go in `paths`"
        ));
    }
    if host.contains('*') {
        return Err(format!(
            "scope host `{host}`: wildcards are not supported in scope hosts; list each host"
        ));
    }
    let Some((name, port)) = split_host_port(host) else {
        return Err(format!("scope host `{host}` is not a host name"));
    };
    if port.is_some() {
        return Err(format!(
            "remove the port from scope host `{host}`: write `{name}`; hosts are compared without port"
        ));
    }
    let lower = name.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    if let Some(inner) = lower.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<::core::net::Ipv6Addr>() {
            Ok(addr) => Ok(format!("[{addr}]")),
            Err(_) => Err(format!("scope host `{host}` is not a valid IPv6 address")),
        };
    }
    match check_dns_name(lower) {
        Ok(_) if lower.len() <= MAX_HOST_LEN => Ok(lower.to_owned()),
        _ => Err(format!("scope host `{host}` is not a valid host name")),
    }
}

fn scope_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "scope path `{path}` must start with `/`, as in `/{}`",
            path.trim_start_matches('/')
        ));
    }
    if let Some(at) = path.find(['?', '#']) {
        let (before, after) = path.split_at(at);
        return Err(format!(
            "remove `{after}` from scope path `{path}`: write `{before}`; the query is ignored"
        ));
    }
    if path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(format!(
            "scope path `{}` holds whitespace or a control character",
            path.escape_debug()
        ));
    }
    Ok(path.trim_end_matches('/').to_owned())
}

impl Scope {
    /// Whether the allowlist governs a request to `host` (the target's,
    /// without port) and `path`. An empty host or path (the gateway did not
    /// say) counts as in scope: applying the allowlist is the stricter choice.
    pub(crate) fn covers(&self, host: &str, path: &str) -> bool {
        self.covers_host(host) && self.covers_path(path)
    }

    fn covers_host(&self, host: &str) -> bool {
        if self.host_list.is_empty() || host.is_empty() {
            return true;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        if self.host_list.len() <= SCANNED_SCOPE_HOSTS {
            // Gateways mostly pass the host in lowercase: compare bytes first.
            return self
                .host_list
                .iter()
                .any(|h| **h == *host || h.eq_ignore_ascii_case(host));
        }
        let mut buffer = [0u8; MAX_HOST_LEN + 2];
        let Some(lower) = buffer.get_mut(..host.len()) else {
            return false;
        };
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        std::str::from_utf8(lower).is_ok_and(|h| self.hosts.contains(h))
    }

    fn covers_path(&self, path: &str) -> bool {
        if self.paths.is_empty() || path.is_empty() {
            return true;
        }
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.paths.iter().any(|prefix| match path.strip_prefix(&**prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        })
    }
}
