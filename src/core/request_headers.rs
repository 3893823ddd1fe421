//! `Access-Control-Request-Headers` of a preflight: its lines split into
//! header names, bounded so that the work does not grow with the input
//! (DESIGN.md section 3.5), checked against a policy's `allow_headers`, and
//! echoed back when credentials forbid sending `*`.
//!
//! [Fetch: CORS-preflight request](https://fetch.spec.whatwg.org/#cors-preflight-request).

use super::fetch::{is_non_wildcard_header, is_token};
use super::policy::CorsRules;

/// Longest `Access-Control-Request-Headers` corsd reads, all lines together.
pub const MAX_REQUEST_HEADERS_BYTES: usize = 4096;
/// Most header names a preflight may ask for.
pub const MAX_REQUEST_HEADER_NAMES: usize = 64;
/// Most empty list elements tolerated in `Access-Control-Request-Headers`.
pub const MAX_EMPTY_ELEMENTS: usize = 16;
/// Most `Access-Control-Request-Headers` lines read: every line holds at least
/// one element, so a request with more is over a limit and refused unread.
pub const MAX_REQUEST_HEADER_LINES: usize = MAX_REQUEST_HEADER_NAMES + MAX_EMPTY_ELEMENTS + 1;
/// Most spaces and tabs around one list element.
const MAX_ELEMENT_WHITESPACE: usize = 2;

fn header_allowed(rules: &CorsRules, name: &str) -> bool {
    rules.headers.iter().any(|h| h.eq_ignore_ascii_case(name)) || (rules.any_header && !is_non_wildcard_header(name))
}

/// Walks the requested header names, bounded by the limits above, and
/// checks each. `Ok(n)`: all `n` names are allowed.
pub(crate) fn check_request_headers<H: AsRef<str>>(rules: &CorsRules, lines: &[H]) -> Result<usize, ()> {
    if lines.len() > MAX_REQUEST_HEADER_LINES {
        return Err(());
    }
    let total: usize = lines.iter().map(|l| l.as_ref().len()).sum();
    if total > MAX_REQUEST_HEADERS_BYTES {
        return Err(());
    }
    let mut names = 0;
    let mut empty = 0;
    for element in RequestHeaderNames::new(lines) {
        match element? {
            None => {
                empty += 1;
                if empty > MAX_EMPTY_ELEMENTS {
                    return Err(());
                }
            }
            Some(name) => {
                names += 1;
                if names > MAX_REQUEST_HEADER_NAMES || !header_allowed(rules, name) {
                    return Err(());
                }
            }
        }
    }
    Ok(names)
}

/// The elements of `Access-Control-Request-Headers` lines: `Some(name)`,
/// `None` for an empty element, `Err` for one that is not a header name.
struct RequestHeaderNames<'l, H> {
    lines: std::slice::Iter<'l, H>,
    current: Option<std::str::Split<'l, char>>,
}

impl<'l, H: AsRef<str>> RequestHeaderNames<'l, H> {
    fn new(lines: &'l [H]) -> Self {
        RequestHeaderNames {
            lines: lines.iter(),
            current: None,
        }
    }
}

impl<'l, H: AsRef<str>> Iterator for RequestHeaderNames<'l, H> {
    type Item = Result<Option<&'l str>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(element) = self.current.as_mut().and_then(Iterator::next) {
                return Some(parse_element(element));
            }
            self.current = Some(self.lines.next()?.as_ref().split(','));
        }
    }
}

fn parse_element(element: &str) -> Result<Option<&str>, ()> {
    let is_blank = |c: char| c == ' ' || c == '\t';
    let name = element.trim_matches(is_blank);
    if element.len() - name.len() > MAX_ELEMENT_WHITESPACE {
        return Err(());
    }
    if name.is_empty() {
        return Ok(None);
    }
    if is_token(name) { Ok(Some(name)) } else { Err(()) }
}

/// The requested names, lowercase, each once, for a `*` that credentials
/// forbid sending.
pub(crate) fn echo_request_headers<H: AsRef<str>>(lines: &[H]) -> String {
    let mut names: Vec<String> = Vec::new();
    for name in RequestHeaderNames::new(lines).filter_map(|e| e.ok().flatten()) {
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(", ")
}
