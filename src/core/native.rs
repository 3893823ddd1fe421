//! Native mode (DESIGN.md section 13): what a gateway must test to decide as
//! corsd does, in-process. Pure: a [`Policy`] in, a [`NativePlan`] of plain
//! strings out; the shell (`crate::native`) turns the plan into Envoy's RBAC
//! and CORS filters, writes them as JSON or YAML and serves them over ECDS.
//!
//! A request is allowed when its `origin` header is
//! - one of the plan's exact origins: every exact entry, and the `https://`
//!   origin of every scope host (browsers' own same-origin requests);
//! - else, matched by one RE2 expression generated from the wildcard
//!   entries, accepting exactly what corsd's label rules accept below each
//!   base (lowercase label bytes, labels of 1-63 bytes not starting or ending
//!   with `-`), with the entry's scheme and port; two more expressions bound
//!   the labels to 63 bytes and the host to 253;
//! - else, absent (not a CORS request).
//!
//! Everything else is denied with 403. Requests outside the policy's
//! `[scope]` hosts (and paths) pass untouched. The allowed origin is echoed
//! with the policy's `[cors]` settings.

use std::collections::BTreeMap;

use super::origin::{MAX_HOST_LEN, MAX_LABEL_LEN};
use super::pattern::PatternKind;
use super::policy::Policy;

/// The body of a native-mode 403.
pub const DENIED_BODY: &str = "CORS request denied: origin_not_allowed\n";

/// A label below a wildcard's base, as a browser serialises one: lowercase
/// label bytes, not starting or ending with `-` (the length is bounded by
/// [`long_label_regex`]).
const LABEL: &str = "[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?";

/// Every scheme an allowed origin can have, as the prefix it starts with.
pub const ORIGIN_PREFIXES: [&str; 4] = ["https://", "http://", "chrome-extension://", "moz-extension://"];

/// A policy's decision as tests on request headers, every expression RE2
/// syntax matched against the whole value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativePlan {
    /// `:authority` inside the scope's hosts (any case, with or without a
    /// port and trailing dot); `None`: every host.
    pub scope_authority: Option<String>,
    /// The scope's path prefixes, matched at a segment boundary; empty:
    /// every path.
    pub scope_paths: Vec<String>,
    /// `:path` under one of [`scope_paths`](Self::scope_paths), the query
    /// aside; `None` when they are empty.
    pub scope_path: Option<String>,
    /// Origins allowed as they are, in file order, each once.
    pub exact_origins: Vec<String>,
    /// The wildcard entries' origins; `None` without wildcards. An origin
    /// it matches is allowed only if it also passes [`long_label_regex`]'s
    /// negation and [`host_length_regex`].
    pub wildcard: Option<String>,
    /// The answer's `[cors]` settings.
    pub cors: NativeCors,
}

/// The CORS headers of an allowed answer, as header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeCors {
    /// `Access-Control-Allow-Methods` (`*`: any).
    pub allow_methods: String,
    /// `Access-Control-Allow-Headers` (`*`: any).
    pub allow_headers: String,
    /// `Access-Control-Expose-Headers` (empty: none).
    pub expose_headers: String,
    /// `Access-Control-Max-Age`, in seconds.
    pub max_age: String,
    /// `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
    /// `Access-Control-Allow-Private-Network: true`.
    pub allow_private_network: bool,
}

/// Plans `policy`'s decision for a gateway.
pub fn plan(policy: &Policy) -> NativePlan {
    let hosts: Vec<String> = policy.scope_hosts().map(regex_syntax::escape).collect();
    let scope_paths = scope_paths(policy);
    let scope_path = (!scope_paths.is_empty()).then(|| {
        let alternatives: Vec<String> = scope_paths.iter().map(|p| regex_syntax::escape(p)).collect();
        // A prefix matches at a segment boundary; the query is not the path's.
        format!("(?:{})(?:[/?#]\\C*)?", alternatives.join("|"))
    });
    let rules = &policy.cors;
    NativePlan {
        // As corsd compares hosts: any case, without port or trailing dot.
        scope_authority: (!hosts.is_empty()).then(|| format!("(?i:{})\\.?(?::[0-9]*)?", hosts.join("|"))),
        scope_path,
        scope_paths,
        exact_origins: exact_origins(policy),
        wildcard: wildcard_regex(policy),
        cors: NativeCors {
            // With credentials corsd echoes the request for `*`; a gateway
            // that cannot sends `*` itself.
            allow_methods: rules.allow_methods_value.as_deref().unwrap_or("*").to_owned(),
            allow_headers: rules.allow_headers_value.as_deref().unwrap_or("*").to_owned(),
            expose_headers: rules.expose_headers_value.as_deref().unwrap_or_default().to_owned(),
            max_age: rules.max_age_value.to_string(),
            allow_credentials: rules.allow_credentials,
            allow_private_network: rules.allow_private_network,
        },
    }
}

/// The one RE2 expression the wildcard entries compile to, `None` without
/// wildcards: per scheme and port, the bases below which any labels are
/// accepted.
pub fn wildcard_regex(policy: &Policy) -> Option<String> {
    let mut groups: BTreeMap<(&str, Option<u16>), Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for entry in policy.entries() {
        if let PatternKind::Subdomains { scheme, base, port } = entry.pattern.kind()
            && seen.insert((*scheme, &**base, *port))
        {
            let bases = groups.entry((scheme.as_str(), *port)).or_default();
            bases.push(regex_syntax::escape(base));
        }
    }
    if groups.is_empty() {
        return None;
    }
    let alternatives: Vec<String> = groups
        .into_iter()
        .map(|((scheme, port), bases)| {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}://(?:{LABEL}\\.)+(?:{}){port}", bases.join("|"))
        })
        .collect();
    Some(alternatives.join("|"))
}

/// A label longer than 63 bytes anywhere in an origin: only a host has
/// runs of label bytes that long (schemes end at `:`, ports are 5 digits).
pub fn long_label_regex() -> String {
    format!(".*[a-z0-9_-]{{{}}}.*", MAX_LABEL_LEN + 1)
}

/// An origin whose host is at most 253 bytes, besides one trailing dot.
pub fn host_length_regex() -> String {
    format!("[a-z-]+://[!-9;-~]{{1,{MAX_HOST_LEN}}}\\.?(?::[0-9]{{1,5}})?")
}

/// The scope's path prefixes as routes match them; none when the policy
/// covers every path (no paths, or `/`).
fn scope_paths(policy: &Policy) -> Vec<String> {
    let paths = policy.scope_paths();
    if paths.iter().any(|p| p.is_empty()) {
        return Vec::new();
    }
    paths.into_iter().map(str::to_owned).collect()
}

/// The exact origins: every exact entry, and each scope host's own
/// `https://` origin, in file order, each once.
pub fn exact_origins(policy: &Policy) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let entries = policy
        .entries()
        .iter()
        .filter(|e| matches!(e.pattern.kind(), PatternKind::Exact))
        .map(|e| e.pattern.as_str().to_owned());
    let hosts = policy.scope_hosts().map(|h| format!("https://{h}"));
    for key in entries.chain(hosts) {
        if seen.insert(key.clone()) {
            keys.push(key);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        match Policy::compile("t.toml", text.as_bytes()) {
            Ok(compiled) => compiled.policy,
            Err(e) => unreachable!("{}", e.display("t.toml")),
        }
    }

    #[test]
    fn wildcards_compile_per_scheme_and_port() {
        let p = policy(
            "[[entries]]\norigin = \"https://*.example.com\"\n\
             [[entries]]\norigin = \"https://*.b.example.net:8443\"\n\
             [[entries]]\norigin = \"https://*.example.org.\"\n\
             [[entries]]\norigin = \"https://app.example.org\"\n",
        );
        assert_eq!(
            wildcard_regex(&p).as_deref(),
            Some(
                "https://(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\\.)+(?:example\\.com|example\\.org\\.)\
                 |https://(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\\.)+(?:b\\.example\\.net):8443"
            )
        );
        assert_eq!(
            wildcard_regex(&policy("[[entries]]\norigin = \"https://a.example\"\n")),
            None
        );
    }

    #[test]
    fn scope_hosts_are_exact_origins_and_paths_prefixes() {
        let p = policy(
            "[scope]\nhosts = [\"api.example.com\"]\npaths = [\"/v1\", \"/v2/\"]\n\
             [[entries]]\norigin = \"https://app.example.org\"\n",
        );
        let plan = plan(&p);
        assert_eq!(
            plan.exact_origins,
            ["https://app.example.org", "https://api.example.com"]
        );
        assert_eq!(plan.scope_paths, ["/v1", "/v2"]);
        assert_eq!(plan.scope_path.as_deref(), Some("(?:/v1|/v2)(?:[/?#]\\C*)?"));
        assert_eq!(
            plan.scope_authority.as_deref(),
            Some("(?i:api\\.example\\.com)\\.?(?::[0-9]*)?")
        );
        // `/` covers every path.
        let all = super::plan(&policy("[scope]\npaths = [\"/\"]\n"));
        assert!(all.scope_paths.is_empty() && all.scope_path.is_none());
    }
}
