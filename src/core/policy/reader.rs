//! The TOML reader: walks a parsed policy file, collecting every diagnostic
//! with its position, and hands the validated parts to the compiler. The
//! `[cors]` and `[scope]` tables are read in their own modules.

use std::borrow::Cow;
use std::collections::HashMap;

use foldhash::fast::RandomState;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Entry;
use super::diagnostic::{Diagnostic, PolicyError, Severity, sort};
use crate::core::pattern::OriginPattern;

/// Where each line of a text starts, to turn byte offsets into positions
/// without rescanning the text for every diagnostic and entry.
pub(super) struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (u32, u32) {
        let line = self.starts.partition_point(|&start| start <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let column = self.text.get(start..offset).map_or(0, |l| l.chars().count()) + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column).unwrap_or(u32::MAX),
        )
    }
}

/// An entry as the file writes it, before its pattern is parsed.
pub(super) struct RawEntry<'i> {
    text: Cow<'i, str>,
    /// Byte offset of the `origin` value.
    at: usize,
    note: Cow<'i, str>,
}

/// Walks the parsed TOML, collecting every diagnostic.
pub(super) struct Reader<'t> {
    pub(super) lines: LineIndex<'t>,
    pub(super) diagnostics: Vec<Diagnostic>,
}

pub(super) type Value<'i> = Spanned<DeValue<'i>>;

impl Reader<'_> {
    /// An error at byte offset `at`.
    pub(super) fn error(&mut self, at: usize, message: impl Into<String>) {
        self.report(Severity::Error, at, message.into(), None);
    }

    /// An error at byte offset `at`, with how to fix it.
    pub(super) fn error_with_help(&mut self, at: usize, message: impl Into<String>, help: impl Into<String>) {
        self.report(Severity::Error, at, message.into(), Some(help.into()));
    }

    /// An error at byte offset `at`, with how to fix it where that is known.
    pub(super) fn refuse(&mut self, at: usize, message: String, help: Option<String>) {
        self.report(Severity::Error, at, message, help);
    }

    fn report(&mut self, severity: Severity, at: usize, message: String, help: Option<String>) {
        let (line, column) = self.lines.position(at);
        self.diagnostics.push(Diagnostic {
            severity,
            line,
            column,
            message,
            help,
        });
    }

    pub(super) fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    pub(super) fn into_error(mut self) -> PolicyError {
        sort(&mut self.diagnostics);
        PolicyError {
            diagnostics: self.diagnostics,
        }
    }

    /// Reports keys not in `known`, with a suggestion when one is close.
    pub(super) fn unknown_keys(&mut self, table: &DeTable<'_>, within: &str, known: &[&str]) {
        for (key, _) in table.iter() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let close = known.iter().min_by_key(|k| strsim::levenshtein(k, name)).copied();
            let help = match close {
                Some(k) if strsim::levenshtein(k, name) <= 2 => format!("did you mean `{k}`?"),
                _ => format!(
                    "{within} takes {}",
                    known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ),
            };
            self.error_with_help(key.span().start, format!("unknown key `{name}`"), help);
        }
    }

    pub(super) fn table<'a, 'i>(&mut self, value: Option<&'a Value<'i>>, name: &str) -> Option<&'a DeTable<'i>> {
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
    pub(super) fn string(&mut self, value: &Value<'_>, name: &str) -> Option<String> {
        self.cow(value, name).map(Cow::into_owned)
    }

    /// A string value, borrowing the file's text where the value has no escapes.
    pub(super) fn cow<'i>(&mut self, value: &Value<'i>, name: &str) -> Option<Cow<'i, str>> {
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

    pub(super) fn boolean(&mut self, table: &DeTable<'_>, name: &str, default: bool) -> Option<bool> {
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
    pub(super) fn strings(&mut self, table: &DeTable<'_>, name: &str) -> Option<Option<Vec<(String, usize)>>> {
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

    /// The entries' texts, still unchecked. They borrow the file's text, not
    /// the parsed tree, so the tree can be freed before any pattern is built.
    pub(super) fn entries<'i>(&mut self, value: Option<&Value<'i>>) -> Option<Vec<RawEntry<'i>>> {
        let Some(value) = value else {
            return Some(Vec::new());
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.error_with_help(
                value.span().start,
                "`entries` must be an array of tables",
                "write each entry as `[[entries]]` with `origin = \"...\"`",
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
                self.error_with_help(
                    item.span().start,
                    "this entry has no `origin`",
                    "add `origin = \"https://...\"`",
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
    pub(super) fn patterns(&mut self, raw: Vec<RawEntry<'_>>) -> Option<Vec<Entry>> {
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
                    let message = format!("invalid origin `{text}`: {}", e.message());
                    self.refuse(*at, message, e.help().map(str::to_owned));
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
            self.report(Severity::Warning, *at, message, None);
        }
    }
}

pub(super) fn kind(value: &DeValue<'_>) -> &'static str {
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
