//! The `[scope]` table: the hosts and path prefixes where the allowlist is
//! in effect, and the test of whether a target falls inside them.

use std::collections::HashSet;

use foldhash::fast::RandomState;
use toml::de::DeTable;

use super::reader::Reader;
use crate::core::origin::{MAX_HOST_LEN, check_dns_name, split_host_port};

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

impl Reader<'_> {
    pub(super) fn scope(&mut self, table: &DeTable<'_>) -> Option<Scope> {
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
                Err(Refusal(message, help)) => {
                    self.refuse(at, message, help);
                    ok = false;
                }
            }
        }
        for (path, at) in paths?.unwrap_or_default() {
            match scope_path(&path) {
                Ok(normal) => scope.paths.push(normal.into()),
                Err(Refusal(message, help)) => {
                    self.refuse(at, message, help);
                    ok = false;
                }
            }
        }
        ok.then_some(scope)
    }
}
/// Why a scope value was refused: the message, and how to fix it.
struct Refusal(String, Option<String>);

impl Refusal {
    fn new(message: String) -> Self {
        Refusal(message, None)
    }

    fn with_help(message: String, help: String) -> Self {
        Refusal(message, Some(help))
    }
}

fn scope_host(host: &str) -> Result<String, Refusal> {
    if host.contains("://") {
        let bare = host.split_once("://").map_or(host, |(_, h)| h);
        return Err(Refusal::with_help(
            format!("scope host `{host}` has a scheme"),
            format!("write the host alone, as `{bare}`"),
        ));
    }
    if let Some((before, _)) = host.split_once('/') {
        return Err(Refusal::with_help(
            format!("scope host `{host}` has a path"),
            format!("write the host alone, as `{before}`; paths go in `paths`"),
        ));
    }
    if host.contains('*') {
        return Err(Refusal::with_help(
            format!("scope host `{host}`"),
            "wildcards are not supported in scope hosts; list each host".to_owned(),
        ));
    }
    let Some((name, port)) = split_host_port(host) else {
        return Err(Refusal::new(format!("scope host `{host}` is not a host name")));
    };
    if port.is_some() {
        return Err(Refusal::with_help(
            format!("remove the port from scope host `{host}`"),
            format!("write `{name}`; hosts are compared without port"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    if let Some(inner) = lower.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<::core::net::Ipv6Addr>() {
            Ok(addr) => Ok(format!("[{addr}]")),
            Err(_) => Err(Refusal::new(format!("scope host `{host}` is not a valid IPv6 address"))),
        };
    }
    match check_dns_name(lower) {
        Ok(_) if lower.len() <= MAX_HOST_LEN => Ok(lower.to_owned()),
        _ => Err(Refusal::new(format!("scope host `{host}` is not a valid host name"))),
    }
}

fn scope_path(path: &str) -> Result<String, Refusal> {
    if !path.starts_with('/') {
        return Err(Refusal::new(format!(
            "scope path `{path}` must start with `/`, as in `/{}`",
            path.trim_start_matches('/')
        )));
    }
    if let Some(at) = path.find(['?', '#']) {
        let (before, after) = path.split_at(at);
        return Err(Refusal::with_help(
            format!("remove `{after}` from scope path `{path}`"),
            format!("write `{before}`; the query is ignored"),
        ));
    }
    if path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(Refusal::new(format!(
            "scope path `{}` holds whitespace or a control character",
            path.escape_debug()
        )));
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

    /// The scope's hosts: lowercase, without port or trailing dot, each once,
    /// in file order; empty when the allowlist covers every host.
    pub(crate) fn hosts(&self) -> &[Box<str>] {
        &self.host_list
    }

    /// The scope's path prefixes, without a trailing `/` (`/` is `""`);
    /// empty when the allowlist covers every path.
    pub(crate) fn paths(&self) -> &[Box<str>] {
        &self.paths
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
        // The query (and a fragment, which browsers never send) is ignored.
        // A prefix holds neither `?` nor `#`, so a path whose part before
        // them starts with the prefix starts with it whole, and the query
        // need not be looked for first.
        self.paths.iter().any(|prefix| match path.strip_prefix(&**prefix) {
            Some(rest) => matches!(rest.bytes().next(), None | Some(b'/' | b'?' | b'#')),
            None => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn scope_of(paths: &[String]) -> Scope {
        Scope {
            paths: paths.iter().map(|p| p.as_str().into()).collect(),
            ..Scope::default()
        }
    }

    proptest! {
        /// A path is covered exactly when its part before the query and
        /// fragment is a prefix or lies below one.
        #[test]
        fn the_query_is_ignored(
            prefixes in prop::collection::vec("(/[a-c]{0,2}){1,3}", 1..3),
            path in "[/a-c?#]{0,10}",
        ) {
            let prefixes: Vec<String> = prefixes.into_iter().map(|p| p.trim_end_matches('/').to_owned()).collect();
            let before_query = path.split(['?', '#']).next().unwrap_or_default();
            let expected = prefixes.iter().any(|p| {
                before_query == p || before_query.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/'))
            });
            prop_assert_eq!(scope_of(&prefixes).covers_path(&path), expected || path.is_empty());
        }
    }
}
