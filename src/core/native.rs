//! Native mode (DESIGN.md section 13): a policy compiled into Envoy's own
//! filters, so Envoy decides in-process. Pure: a [`Policy`] in, `envoy-types`
//! messages out; the shell writes them as JSON or YAML and serves them over
//! ECDS.
//!
//! The RBAC filter allows a request when its `origin` header is
//! - a key of an `exact_match_map`: every exact entry, and the `https://`
//!   origin of every scope host (browsers' own same-origin requests);
//! - else, matched by one RE2 expression generated from the wildcard
//!   entries, accepting exactly what corsd's label rules accept below each
//!   base (lowercase label bytes, labels of 1-63 bytes not starting or ending
//!   with `-`), with the entry's scheme and port; two more expressions bound
//!   the labels to 63 bytes and the host to 253;
//! - else, absent (not a CORS request).
//!
//! Everything else is denied with 403. Requests outside the policy's
//! `[scope]` hosts (and, over ECDS, paths) pass untouched. The CORS filter after it echoes any
//! origin that reaches it (by its scheme's prefix), with the policy's
//! `[cors]` settings.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, StatusCodeFilter, access_log_filter, comparison_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, RuntimeUInt32, SubstitutionFormatString, TypedExtensionConfig, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::config::rbac::v3::{Action, rbac};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{Rbac, RbacPerRoute};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, LocalReplyConfig, ResponseMapper, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3 as envoy_matcher;
use envoy_types::pb::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput;
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig as XdsExtension;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::predicate::{
    MatchType, PredicateList, SinglePredicate, single_predicate,
};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::{FieldMatcher, Predicate};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::{MatchMap, TreeType};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{MatcherList, MatcherTree, MatcherType, OnMatch, on_match};
use envoy_types::pb::xds::r#type::matcher::v3::{Matcher, RegexMatcher, StringMatcher, regex_matcher, string_matcher};
use envoy_types::util::pack_any;

use super::origin::{MAX_HOST_LEN, MAX_LABEL_LEN};
use super::pattern::PatternKind;
use super::policy::Policy;

/// The RBAC filter's name, and the ECDS resource of single mode.
pub const RBAC_FILTER: &str = "corsd-rbac";

/// The CORS filter's name.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// The body of Envoy's 403, as corsd's own ext_authz 403 names the reason.
pub const DENIED_BODY: &str = "CORS request denied: origin_not_allowed\n";

/// A label below a wildcard's base, as a browser serialises one: lowercase
/// label bytes, not starting or ending with `-` (the length is bounded by
/// [`long_label_regex`]).
const LABEL: &str = "[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?";

/// The RBAC filter's name for `tenant` (`""`: single mode): `corsd-rbac`, or
/// `corsd-rbac/NAME`.
pub fn rbac_filter_name(tenant: &str) -> String {
    if tenant.is_empty() {
        RBAC_FILTER.to_owned()
    } else {
        format!("{RBAC_FILTER}/{tenant}")
    }
}

/// What an operator pastes into Envoy's configuration, field by field
/// (`corsd envoy-config`).
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    /// The HTTP connection manager's filters: RBAC, then CORS (the router is
    /// the operator's).
    pub http_filters: Vec<HttpFilter>,
    /// The virtual host's per-filter config: the CORS policy (empty with
    /// scope paths: then the routes carry it).
    pub typed_per_filter_config: BTreeMap<String, Any>,
    /// With scope paths: each path prefix's route config (match it with
    /// `path_separated_prefix`): the RBAC per-route matcher and the CORS
    /// policy.
    pub routes_typed_per_filter_config: BTreeMap<String, BTreeMap<String, Any>>,
    /// The 403 body.
    pub local_reply_config: LocalReplyConfig,
}

/// Compiles `policy` (of `tenant`, `""` in single mode) into Envoy's filters.
pub fn envoy_config(policy: &Policy, tenant: &str) -> EnvoyConfig {
    let rbac_name = rbac_filter_name(tenant);
    let cors = pack_any(cors_policy(policy));
    let paths = scope_paths(policy);
    let (listener_rbac, typed_per_filter_config, routes) = if paths.is_empty() {
        let vhost = BTreeMap::from([(CORS_FILTER.to_owned(), cors)]);
        (scoped_rbac(policy, false), vhost, BTreeMap::new())
    } else {
        let per_route = pack_any(RbacPerRoute {
            rbac: Some(scoped_rbac(policy, false)),
        });
        let routes = paths
            .iter()
            .map(|prefix| {
                let configs = BTreeMap::from([
                    (rbac_name.clone(), per_route.clone()),
                    (CORS_FILTER.to_owned(), cors.clone()),
                ]);
                ((*prefix).to_owned(), configs)
            })
            .collect();
        // The listener's RBAC lets everything through; the routes decide.
        (Rbac::default(), BTreeMap::new(), routes)
    };
    EnvoyConfig {
        http_filters: vec![
            HttpFilter {
                name: rbac_name,
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(listener_rbac))),
                ..HttpFilter::default()
            },
            HttpFilter {
                name: CORS_FILTER.to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Cors::default()))),
                ..HttpFilter::default()
            },
        ],
        typed_per_filter_config,
        routes_typed_per_filter_config: routes,
        local_reply_config: local_reply_config(),
    }
}

/// The RBAC filter served over ECDS (`corsd serve --xds`): the whole
/// decision at the listener, the scope hosts and paths included, so that one
/// swapped resource changes every route. Without scope paths it is the
/// [`envoy_config`] listener filter's config.
pub fn served_rbac(policy: &Policy) -> Rbac {
    scoped_rbac(policy, true)
}

/// The decision by origin, applied only to requests inside the scope's
/// hosts (and, with `paths`, its paths); others pass.
fn scoped_rbac(policy: &Policy, paths: bool) -> Rbac {
    let mut tests = Vec::new();
    let hosts: Vec<String> = policy.scope_hosts().map(regex_syntax::escape).collect();
    if !hosts.is_empty() {
        // As corsd compares hosts: any case, without port or trailing dot.
        tests.push(single(
            ":authority",
            regex(format!("(?i:{})\\.?(?::[0-9]*)?", hosts.join("|"))),
        ));
    }
    let prefixes = scope_paths(policy);
    if paths && !prefixes.is_empty() {
        let alternatives: Vec<String> = prefixes.iter().map(|p| regex_syntax::escape(p)).collect();
        // A prefix matches at a segment boundary; the query is not the path's.
        tests.push(single(
            ":path",
            regex(format!("(?:{})(?:[/?#]\\C*)?", alternatives.join("|"))),
        ));
    }
    let in_scope = match tests.len() {
        0 => return decision_rbac(policy),
        1 => tests.remove(0),
        _ => all_of(tests),
    };
    Rbac {
        matcher: Some(Matcher {
            matcher_type: Some(MatcherType::MatcherList(MatcherList {
                matchers: vec![FieldMatcher {
                    predicate: Some(in_scope),
                    on_match: Some(OnMatch {
                        keep_matching: false,
                        on_match: Some(on_match::OnMatch::Matcher(Box::new(decision_matcher(policy)))),
                    }),
                }],
            })),
            on_no_match: Some(Box::new(action("out-of-scope", rbac::Action::Allow))),
        }),
        ..Rbac::default()
    }
}

/// The ECDS resource for `tenant`: [`served_rbac`] under its filter name.
pub fn served_extension(policy: &Policy, tenant: &str) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: rbac_filter_name(tenant),
        typed_config: Some(pack_any(served_rbac(policy))),
    }
}

/// The one RE2 expression the wildcard entries compile to, `None` without
/// wildcards: per scheme and port, the bases below which any labels are
/// accepted (Envoy matches the whole value).
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
fn scope_paths(policy: &Policy) -> Vec<&str> {
    let paths = policy.scope_paths();
    if paths.iter().any(|p| p.is_empty()) {
        return Vec::new();
    }
    paths.to_vec()
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

/// The RBAC config that decides by origin alone.
fn decision_rbac(policy: &Policy) -> Rbac {
    Rbac {
        matcher: Some(decision_matcher(policy)),
        ..Rbac::default()
    }
}

fn decision_matcher(policy: &Policy) -> Matcher {
    let mut fallback = Vec::new();
    if let Some(wildcards) = wildcard_regex(policy) {
        fallback.push(FieldMatcher {
            predicate: Some(all_of(vec![
                single("origin", regex(wildcards)),
                not(single("origin", regex(long_label_regex()))),
                single("origin", regex(host_length_regex())),
            ])),
            on_match: Some(action("wildcard", rbac::Action::Allow)),
        });
    }
    // An absent header makes any predicate on it false; `\C` is any byte,
    // so a value that is not UTF-8 is present too (and denied).
    fallback.push(FieldMatcher {
        predicate: Some(not(single("origin", regex("\\C*".to_owned())))),
        on_match: Some(action("no-origin", rbac::Action::Allow)),
    });
    let list = Matcher {
        matcher_type: Some(MatcherType::MatcherList(MatcherList { matchers: fallback })),
        on_no_match: Some(Box::new(action("denied", rbac::Action::Deny))),
    };
    let exact = exact_origins(policy);
    if exact.is_empty() {
        return list;
    }
    let allow = action("exact", rbac::Action::Allow);
    Matcher {
        matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
            input: Some(header_input("origin")),
            tree_type: Some(TreeType::ExactMatchMap(MatchMap {
                map: exact.into_iter().map(|key| (key, allow.clone())).collect(),
            })),
        })),
        // Not a key, or no header at all.
        on_no_match: Some(Box::new(OnMatch {
            keep_matching: false,
            on_match: Some(on_match::OnMatch::Matcher(Box::new(list))),
        })),
    }
}

fn header_input(name: &str) -> XdsExtension {
    XdsExtension {
        name: name.trim_start_matches(':').to_owned(),
        typed_config: Some(pack_any(HttpRequestHeaderMatchInput {
            header_name: name.to_owned(),
        })),
    }
}

fn regex(expression: String) -> StringMatcher {
    StringMatcher {
        ignore_case: false,
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: expression,
            engine_type: Some(regex_matcher::EngineType::GoogleRe2(regex_matcher::GoogleRe2 {})),
        })),
    }
}

fn single(header: &str, value: StringMatcher) -> Predicate {
    Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(header_input(header)),
            matcher: Some(single_predicate::Matcher::ValueMatch(value)),
        })),
    }
}

fn not(predicate: Predicate) -> Predicate {
    Predicate {
        match_type: Some(MatchType::NotMatcher(Box::new(predicate))),
    }
}

fn all_of(predicates: Vec<Predicate>) -> Predicate {
    Predicate {
        match_type: Some(MatchType::AndMatcher(PredicateList { predicate: predicates })),
    }
}

fn action(name: &str, verdict: rbac::Action) -> OnMatch {
    OnMatch {
        keep_matching: false,
        on_match: Some(on_match::OnMatch::Action(XdsExtension {
            name: name.to_owned(),
            typed_config: Some(pack_any(Action {
                name: name.to_owned(),
                action: verdict as i32,
            })),
        })),
    }
}

/// The CORS policy: echo any origin that reaches it (RBAC has decided),
/// with the `[cors]` settings.
fn cors_policy(policy: &Policy) -> CorsPolicy {
    let rules = &policy.cors;
    CorsPolicy {
        // Every origin RBAC lets through starts with one of these: a
        // prefix test, cheaper than a regex, and no regex size to raise.
        allow_origin_string_match: ["https://", "http://", "chrome-extension://", "moz-extension://"]
            .into_iter()
            .map(|prefix| envoy_matcher::StringMatcher {
                ignore_case: false,
                match_pattern: Some(envoy_matcher::string_matcher::MatchPattern::Prefix(prefix.to_owned())),
            })
            .collect(),
        // With credentials corsd echoes the request for `*`; Envoy cannot,
        // and sends `*` itself.
        allow_methods: rules.allow_methods_value.as_deref().unwrap_or("*").to_owned(),
        allow_headers: rules.allow_headers_value.as_deref().unwrap_or("*").to_owned(),
        expose_headers: rules.expose_headers_value.as_deref().unwrap_or_default().to_owned(),
        max_age: rules.max_age_value.to_string(),
        allow_credentials: Some(BoolValue {
            value: rules.allow_credentials,
        }),
        allow_private_network_access: Some(BoolValue {
            value: rules.allow_private_network,
        }),
        ..CorsPolicy::default()
    }
}

/// RBAC's 403, with corsd's body. Local replies only: an upstream's own
/// 403 is left alone.
fn local_reply_config() -> LocalReplyConfig {
    LocalReplyConfig {
        mappers: vec![ResponseMapper {
            filter: Some(AccessLogFilter {
                filter_specifier: Some(access_log_filter::FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
                    comparison: Some(ComparisonFilter {
                        op: comparison_filter::Op::Eq as i32,
                        value: Some(RuntimeUInt32 {
                            default_value: 403,
                            runtime_key: "corsd.denied_status".to_owned(),
                        }),
                    }),
                })),
            }),
            status_code: Some(UInt32Value { value: 403 }),
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(DENIED_BODY.to_owned())),
                ..DataSource::default()
            }),
            body_format_override: Some(SubstitutionFormatString {
                content_type: "text/plain; charset=utf-8".to_owned(),
                format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
                    specifier: Some(data_source::Specifier::InlineString("%LOCAL_REPLY_BODY%".to_owned())),
                    ..DataSource::default()
                })),
                ..SubstitutionFormatString::default()
            }),
            headers_to_add: Vec::new(),
        }],
        ..LocalReplyConfig::default()
    }
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
    fn scope_hosts_are_exact_keys_and_paths_routes() {
        let p = policy(
            "[scope]\nhosts = [\"api.example.com\"]\npaths = [\"/v1\", \"/v2/\"]\n\
             [[entries]]\norigin = \"https://app.example.org\"\n",
        );
        assert_eq!(
            exact_origins(&p),
            ["https://app.example.org", "https://api.example.com"]
        );
        let config = envoy_config(&p, "acme");
        assert_eq!(config.http_filters[0].name, "corsd-rbac/acme");
        assert!(config.typed_per_filter_config.is_empty());
        let prefixes: Vec<&str> = config
            .routes_typed_per_filter_config
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(prefixes, ["/v1", "/v2"]);
        // `/` covers every path: no routes then.
        let all = policy("[scope]\npaths = [\"/\"]\n");
        assert!(envoy_config(&all, "").routes_typed_per_filter_config.is_empty());
    }
}
