//! The compiled allowlist: which entry, if any, allows a request origin.
//!
//! Exact origins live in a hash map keyed by their serialisation; wildcard
//! entries live in a tree of reversed labels (`com` → `example` → `*.`), so a
//! lookup costs one hash probe per label of the origin, whatever the number
//! of entries. Exact beats wildcard, and a deeper wildcard beats a shallower
//! one. This module owns matching only; patterns are parsed in `pattern`.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::origin::{OriginTuple, RequestOrigin, parse_request_origin};
use super::pattern::{OriginPattern, PatternKind, WebScheme};

/// Index of an entry in the policy's entry list (file order).
pub type EntryIndex = u32;

/// An index over normalised [`OriginPattern`]s.
#[derive(Debug, Default)]
pub struct Allowlist {
    exact: HashMap<Box<str>, EntryIndex, RandomState>,
    /// Reversed-label tree; `nodes[0]` is the root.
    nodes: Vec<LabelNode>,
}

#[derive(Debug, Default)]
struct LabelNode {
    children: Children,
    /// Wildcards whose base ends at this node; a handful at most.
    subdomains: Vec<SubdomainEntry>,
    /// Some exact origin's host is one label below this node. Exact hosts
    /// leave their parent domains in the tree, so a host whose parent is not
    /// in it cannot be an exact entry, and its lookup skips the exact map.
    exact_children: bool,
}

/// Most nodes have a handful of children, found faster by comparing than by
/// hashing; a node with many (`example.com` under a platform's tenants) hashes.
#[derive(Debug)]
enum Children {
    Few(Vec<(Box<str>, u32)>),
    Many(HashMap<Box<str>, u32, RandomState>),
}

/// Children are compared one by one up to this many.
const FEW_CHILDREN: usize = 8;

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    #[inline(always)]
    fn get(&self, label: &str) -> Option<u32> {
        match self {
            // Labels are short: compared byte by byte in place, without a call
            // to `memcmp`, and most differ in length or first byte.
            Children::Few(list) => list
                .iter()
                .find(|(l, _)| l.len() == label.len() && l.bytes().zip(label.bytes()).all(|(a, b)| a == b))
                .map(|&(_, node)| node),
            Children::Many(map) => map.get(label).copied(),
        }
    }

    fn insert(&mut self, label: &str, node: u32) {
        match self {
            Children::Few(list) if list.len() < FEW_CHILDREN => list.push((label.into(), node)),
            Children::Few(list) => {
                let mut map: HashMap<Box<str>, u32, RandomState> = std::mem::take(list).into_iter().collect();
                map.insert(label.into(), node);
                *self = Children::Many(map);
            }
            Children::Many(map) => {
                map.insert(label.into(), node);
            }
        }
    }
}

#[derive(Debug)]
struct SubdomainEntry {
    scheme: WebScheme,
    port: Option<u16>,
    entry: EntryIndex,
}

impl Allowlist {
    /// Builds the index. When two patterns are the same, the first one wins.
    pub fn build<'p>(patterns: impl IntoIterator<Item = &'p OriginPattern>) -> Self {
        let mut list = Allowlist {
            exact: HashMap::default(),
            nodes: vec![LabelNode::default()],
        };
        for (index, pattern) in (0..).zip(patterns) {
            list.insert(index, pattern);
        }
        list.exact.shrink_to_fit();
        list
    }

    fn insert(&mut self, entry: EntryIndex, pattern: &OriginPattern) {
        match pattern.kind() {
            PatternKind::Exact => {
                self.exact.entry(pattern.as_str().into()).or_insert(entry);
                // An exact pattern is an origin's serialisation, so it parses
                // into the host of any request origin equal to it byte for
                // byte; one that did not parse could equal none.
                if let Ok(RequestOrigin::Tuple(origin)) = parse_request_origin(pattern.as_str()) {
                    self.mark_exact_parent(origin.host);
                }
            }
            PatternKind::Subdomains { scheme, base, port } => {
                let mut node = 0usize;
                for label in ReversedLabels::new(base) {
                    node = self.child_or_insert(node, label);
                }
                if let Some(at) = self.nodes.get_mut(node) {
                    let duplicate = at.subdomains.iter().any(|s| s.scheme == *scheme && s.port == *port);
                    if !duplicate {
                        at.subdomains.push(SubdomainEntry {
                            scheme: *scheme,
                            port: *port,
                            entry,
                        });
                    }
                }
            }
        }
    }

    /// Puts the parent domain of an exact host in the tree, marked.
    fn mark_exact_parent(&mut self, host: &str) {
        let mut labels = ReversedLabels::new(host);
        let mut node = 0usize;
        // Every label but the host's first, which is the exact host itself.
        while let (Some(label), Some(_)) = (labels.next(), labels.rest) {
            node = self.child_or_insert(node, label);
        }
        if let Some(parent) = self.nodes.get_mut(node) {
            parent.exact_children = true;
        }
    }

    fn child_or_insert(&mut self, node: usize, label: &str) -> usize {
        let next = self.nodes.len();
        let Some(parent) = self.nodes.get_mut(node) else {
            return node;
        };
        if let Some(child) = parent.children.get(label) {
            return child as usize;
        }
        parent.children.insert(label, next as u32);
        self.nodes.push(LabelNode::default());
        next
    }

    /// The entry that allows `origin`, if any: the exact entry equal to it
    /// byte for byte, else the deepest wildcard whose base is a proper
    /// suffix of its host at a label boundary, with the same scheme and port.
    pub fn find(&self, origin: &OriginTuple<'_>) -> Option<EntryIndex> {
        let scheme = match origin.scheme {
            "https" => Some(WebScheme::Https),
            "http" => Some(WebScheme::Http),
            _ => None,
        };
        let mut node = self.nodes.first()?;
        let mut best = None;
        let mut maybe_exact = false;
        let mut labels = ReversedLabels::new(origin.host);
        while let Some(label) = labels.next() {
            if labels.rest.is_none() {
                // The host's first label: an exact host would be its child here.
                maybe_exact = node.exact_children;
            }
            let Some(child) = node.children.get(label) else {
                break;
            };
            node = self.nodes.get(child as usize)?;
            if let Some(below) = labels.rest
                && let Some(hit) = node
                    .subdomains
                    .iter()
                    .find(|s| Some(s.scheme) == scheme && s.port == origin.port)
                && is_serialized_name(below)
            {
                best = Some(hit.entry);
            }
        }
        if maybe_exact && let Some(&entry) = self.exact.get(origin.serialized) {
            return Some(entry);
        }
        best
    }
}

/// Whether `pattern` on its own allows `origin`: byte-equal to an exact
/// entry, or a true subdomain of a wildcard's base with its scheme and port.
pub fn matches(pattern: &OriginPattern, origin: &OriginTuple<'_>) -> bool {
    match pattern.kind() {
        PatternKind::Exact => pattern.as_str() == origin.serialized,
        PatternKind::Subdomains { scheme, base, port } => {
            if origin.scheme != scheme.as_str() || origin.port != *port {
                return false;
            }
            let mut host = ReversedLabels::new(origin.host);
            for want in ReversedLabels::new(base) {
                if host.next() != Some(want) {
                    return false;
                }
            }
            host.rest.is_some_and(is_serialized_name)
        }
    }
}

/// Whether the labels below a wildcard's base are as a browser serialises
/// them: lowercase, and any `xn--` label valid punycode. Matching is byte for
/// byte, so `WWW.example.com` is no subdomain of `*.example.com`.
fn is_serialized_name(labels: &str) -> bool {
    // One pass: most names have no capitals and no `xn--` label.
    let bytes = labels.as_bytes();
    let mut punycode = false;
    let mut label_start = true;
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_uppercase() {
            return false;
        }
        punycode |= label_start && b == b'x' && bytes.get(i..i + 4) == Some(b"xn--");
        label_start = b == b'.';
    }
    !punycode || idna::domain_to_ascii_cow(bytes, idna::AsciiDenyList::URL).is_ok_and(|ascii| ascii == labels)
}

/// The labels of a host name, rightmost first; a trailing dot yields an
/// empty first label, so `example.com.` and `example.com` never meet.
struct ReversedLabels<'a> {
    rest: Option<&'a str>,
}

impl<'a> ReversedLabels<'a> {
    fn new(host: &'a str) -> Self {
        ReversedLabels { rest: Some(host) }
    }
}

impl<'a> Iterator for ReversedLabels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        // Labels are short: a plain scan beats a call to `memrchr`.
        match rest.bytes().rposition(|b| b == b'.') {
            Some(dot) => {
                self.rest = rest.get(..dot);
                rest.get(dot + 1..)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::origin::{RequestOrigin, parse_request_origin};

    fn list(patterns: &[&str]) -> (Vec<OriginPattern>, Allowlist) {
        let parsed: Vec<OriginPattern> = patterns.iter().map(|p| p.parse().unwrap()).collect();
        let index = Allowlist::build(&parsed);
        (parsed, index)
    }

    fn hit<'p>(parsed: &'p [OriginPattern], index: &Allowlist, origin: &str) -> Option<&'p str> {
        let RequestOrigin::Tuple(t) = parse_request_origin(origin).unwrap() else {
            panic!()
        };
        index.find(&t).map(|i| parsed[i as usize].as_str())
    }

    #[test]
    fn wildcards_match_whole_labels_below_the_base() {
        let (p, idx) = list(&[
            "https://*.example.com",
            "https://*.b.example.com",
            "https://example.com",
        ]);
        assert_eq!(hit(&p, &idx, "https://a.example.com"), Some("https://*.example.com"));
        assert_eq!(hit(&p, &idx, "https://x.a.example.com"), Some("https://*.example.com"));
        assert_eq!(
            hit(&p, &idx, "https://x.b.example.com"),
            Some("https://*.b.example.com")
        );
        assert_eq!(hit(&p, &idx, "https://b.example.com"), Some("https://*.example.com"));
        assert_eq!(hit(&p, &idx, "https://example.com"), Some("https://example.com"));
        for miss in [
            "https://evilexample.com",
            "https://example.com.evil.net",
            "https://wwwxexample.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.",
            "https://A.EXAMPLE.COM",
        ] {
            assert_eq!(hit(&p, &idx, miss), None, "{miss}");
        }
    }

    #[test]
    fn exact_origins_match_byte_for_byte_beside_wildcards() {
        let (p, idx) = list(&[
            "https://*.example.com",
            "https://a.example.com",
            "http://localhost:3000",
            "https://[2001:db8::1]",
            "https://192.0.2.7:8443",
            "chrome-extension://abdkkegmcbiomijcbdaodaflgehfffed",
        ]);
        assert_eq!(hit(&p, &idx, "https://a.example.com"), Some("https://a.example.com"));
        assert_eq!(hit(&p, &idx, "https://b.a.example.com"), Some("https://*.example.com"));
        assert_eq!(hit(&p, &idx, "http://localhost:3000"), Some("http://localhost:3000"));
        assert_eq!(hit(&p, &idx, "https://[2001:db8::1]"), Some("https://[2001:db8::1]"));
        assert_eq!(hit(&p, &idx, "https://192.0.2.7:8443"), Some("https://192.0.2.7:8443"));
        assert_eq!(
            hit(&p, &idx, "chrome-extension://abdkkegmcbiomijcbdaodaflgehfffed"),
            Some("chrome-extension://abdkkegmcbiomijcbdaodaflgehfffed")
        );
        for miss in [
            "http://a.example.com",
            "https://a.example.com:443",
            "http://localhost",
            "https://localhost:3000",
            "http://localhost:3001",
            "https://192.0.2.7",
            "https://192.0.2.8:8443",
            "moz-extension://abdkkegmcbiomijcbdaodaflgehfffed",
            "https://abdkkegmcbiomijcbdaodaflgehfffed",
        ] {
            assert_eq!(hit(&p, &idx, miss), None, "{miss}");
        }
    }

    #[test]
    fn trailing_dot_and_ports_are_part_of_the_origin() {
        let (p, idx) = list(&["https://*.example.com.:8443"]);
        assert_eq!(
            hit(&p, &idx, "https://a.example.com.:8443"),
            Some("https://*.example.com.:8443")
        );
        assert_eq!(hit(&p, &idx, "https://a.example.com:8443"), None);
    }
}
