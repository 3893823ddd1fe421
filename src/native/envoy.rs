//! Native mode's Envoy side: a [`NativePlan`] as Envoy's RBAC and CORS
//! filters. The RBAC filter allows by the plan's tests (an
//! `exact_match_map` of the exact origins, then the wildcard expression,
//! then no `origin` at all) and denies the rest with 403; requests outside
//! the scope pass. The CORS filter after it echoes any origin that reaches
//! it (by its scheme's prefix), with the plan's `[cors]` settings.

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

use crate::core::Policy;
use crate::core::native::{DENIED_BODY, NativePlan, ORIGIN_PREFIXES, host_length_regex, long_label_regex, plan};

/// The RBAC filter's name, and the ECDS resource of single mode.
pub const RBAC_FILTER: &str = "corsd-rbac";

/// The CORS filter's name.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// The body of Envoy's 403, as corsd's own ext_authz 403 names the reason.
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
    envoy_config_shadowed(policy, None, tenant)
}

/// [`envoy_config`] with `candidate` in every RBAC filter's
/// `shadow_matcher`: Envoy then counts `shadow_allowed` and `shadow_denied`
/// and sets `shadow_engine_result` for its access log, enforcing nothing of it.
pub fn envoy_config_shadowed(policy: &Policy, candidate: Option<&Policy>, tenant: &str) -> EnvoyConfig {
    let shadow = candidate.map(plan);
    let shadow = shadow.as_ref();
    let plan = plan(policy);
    let rbac_name = rbac_filter_name(tenant);
    let cors = pack_any(cors_policy(&plan));
    let (listener_rbac, typed_per_filter_config, routes) = if plan.scope_paths.is_empty() {
        let vhost = BTreeMap::from([(CORS_FILTER.to_owned(), cors)]);
        (scoped_rbac(&plan, shadow, false), vhost, BTreeMap::new())
    } else {
        let per_route = pack_any(RbacPerRoute {
            rbac: Some(scoped_rbac(&plan, shadow, false)),
        });
        let routes = plan
            .scope_paths
            .iter()
            .map(|prefix| {
                let configs = BTreeMap::from([
                    (rbac_name.clone(), per_route.clone()),
                    (CORS_FILTER.to_owned(), cors.clone()),
                ]);
                (prefix.clone(), configs)
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
pub fn served_rbac(policy: &Policy, candidate: Option<&Policy>) -> Rbac {
    scoped_rbac(&plan(policy), candidate.map(plan).as_ref(), true)
}

/// The RBAC filter of `plan`, with `shadow`'s decision as its shadow matcher.
fn scoped_rbac(plan: &NativePlan, shadow: Option<&NativePlan>, paths: bool) -> Rbac {
    let mut rbac = enforced_rbac(plan, paths);
    if let Some(shadow) = shadow {
        rbac.shadow_matcher = enforced_rbac(shadow, paths).matcher;
    }
    rbac
}

/// The decision by origin, applied only to requests inside the scope's
/// hosts (and, with `paths`, its paths); others pass.
fn enforced_rbac(plan: &NativePlan, paths: bool) -> Rbac {
    let mut tests = Vec::new();
    if let Some(authority) = &plan.scope_authority {
        tests.push(single(":authority", regex(authority.clone())));
    }
    if let Some(path) = plan.scope_path.as_ref().filter(|_| paths) {
        tests.push(single(":path", regex(path.clone())));
    }
    let in_scope = match tests.len() {
        0 => return decision_rbac(plan),
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
                        on_match: Some(on_match::OnMatch::Matcher(Box::new(decision_matcher(plan)))),
                    }),
                }],
            })),
            on_no_match: Some(Box::new(action("out-of-scope", rbac::Action::Allow))),
        }),
        ..Rbac::default()
    }
}

/// The ECDS resource for `tenant`: [`served_rbac`] under its filter name.
pub fn served_extension(policy: &Policy, candidate: Option<&Policy>, tenant: &str) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: rbac_filter_name(tenant),
        typed_config: Some(pack_any(served_rbac(policy, candidate))),
    }
}

/// The RBAC config that decides by origin alone.
fn decision_rbac(plan: &NativePlan) -> Rbac {
    Rbac {
        matcher: Some(decision_matcher(plan)),
        ..Rbac::default()
    }
}

fn decision_matcher(plan: &NativePlan) -> Matcher {
    let mut fallback = Vec::new();
    if let Some(wildcards) = plan.wildcard.clone() {
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
    let exact = &plan.exact_origins;
    if exact.is_empty() {
        return list;
    }
    let allow = action("exact", rbac::Action::Allow);
    Matcher {
        matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
            input: Some(header_input("origin")),
            tree_type: Some(TreeType::ExactMatchMap(MatchMap {
                map: exact.iter().map(|key| (key.clone(), allow.clone())).collect(),
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
fn cors_policy(plan: &NativePlan) -> CorsPolicy {
    let cors = &plan.cors;
    CorsPolicy {
        // Every origin RBAC lets through starts with one of these: a
        // prefix test, cheaper than a regex, and no regex size to raise.
        allow_origin_string_match: ORIGIN_PREFIXES
            .into_iter()
            .map(|prefix| envoy_matcher::StringMatcher {
                ignore_case: false,
                match_pattern: Some(envoy_matcher::string_matcher::MatchPattern::Prefix(prefix.to_owned())),
            })
            .collect(),
        allow_methods: cors.allow_methods.clone(),
        allow_headers: cors.allow_headers.clone(),
        expose_headers: cors.expose_headers.clone(),
        max_age: cors.max_age.clone(),
        allow_credentials: Some(BoolValue {
            value: cors.allow_credentials,
        }),
        allow_private_network_access: Some(BoolValue {
            value: cors.allow_private_network,
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

    #[test]
    fn a_candidate_is_the_shadow_matcher_of_every_rbac_filter() {
        let compile = |text: &str| {
            Policy::compile("t.toml", text.as_bytes())
                .map(|c| c.policy)
                .unwrap_or_else(|e| unreachable!("{}", e.display("t.toml")))
        };
        let live = compile("[[entries]]\norigin = \"https://a.example.com\"\n");
        let candidate = compile("[[entries]]\norigin = \"https://b.example.com\"\n");
        let shadowed = served_rbac(&live, Some(&candidate));
        assert_eq!(
            shadowed.matcher,
            served_rbac(&live, None).matcher,
            "the live decision is enforced"
        );
        assert_eq!(shadowed.shadow_matcher, served_rbac(&candidate, None).matcher);
        assert!(served_rbac(&live, None).shadow_matcher.is_none());
        let config = envoy_config_shadowed(&live, Some(&candidate), "");
        let rbac = match &config.http_filters[0].config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => {
                <Rbac as prost::Message>::decode(any.value.as_slice()).unwrap()
            }
            other => unreachable!("{other:?}"),
        };
        assert_eq!(rbac.shadow_matcher, shadowed.shadow_matcher);
    }

    #[test]
    fn scope_paths_become_routes() {
        let p = Policy::compile(
            "t.toml",
            b"[scope]\nhosts = [\"api.example.com\"]\npaths = [\"/v1\", \"/v2/\"]\n\
              [[entries]]\norigin = \"https://app.example.org\"\n",
        )
        .map(|c| c.policy)
        .unwrap_or_else(|e| unreachable!("{}", e.display("t.toml")));
        let config = envoy_config(&p, "acme");
        assert_eq!(config.http_filters[0].name, "corsd-rbac/acme");
        assert!(config.typed_per_filter_config.is_empty());
        let prefixes: Vec<&str> = config
            .routes_typed_per_filter_config
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(prefixes, ["/v1", "/v2"]);
    }
}
