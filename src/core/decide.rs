//! `decide(&Policy, &Request) -> Decision`: the CORS decision for one request.
//!
//! Follows the [Fetch standard's CORS protocol](https://fetch.spec.whatwg.org/#http-cors-protocol):
//! scope, then the `Origin`, then for a [CORS-preflight request](https://fetch.spec.whatwg.org/#cors-preflight-request)
//! the requested method and headers. Every decision carries its reason, the
//! pattern that matched and the policy version. `decide` borrows its input
//! and allocates only to echo requested values back (a `*` with credentials).

use std::borrow::Cow;

use super::allowlist::EntryIndex;
use super::fetch::{forbidden_method, is_token};
use super::origin::{Malformed, OriginTuple, RequestOrigin, default_port, parse_request_origin, split_host_port};
use super::policy::{CorsRules, Entry, Policy};
pub use super::request_headers::{
    MAX_EMPTY_ELEMENTS, MAX_REQUEST_HEADER_LINES, MAX_REQUEST_HEADER_NAMES, MAX_REQUEST_HEADERS_BYTES,
};
use super::request_headers::{check_request_headers, echo_request_headers};

/// Most headers an answer carries.
pub const MAX_RESPONSE_HEADERS: usize = 7;

/// The response headers a decision can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    /// `Access-Control-Allow-Origin`.
    AllowOrigin,
    /// `Access-Control-Allow-Credentials`.
    AllowCredentials,
    /// `Access-Control-Allow-Methods`.
    AllowMethods,
    /// `Access-Control-Allow-Headers`.
    AllowHeaders,
    /// `Access-Control-Expose-Headers`.
    ExposeHeaders,
    /// `Access-Control-Max-Age`.
    MaxAge,
    /// `Access-Control-Allow-Private-Network`.
    AllowPrivateNetwork,
    /// `Vary`.
    Vary,
}

impl HeaderName {
    /// The lowercase name, as HTTP/2 and `corsd check --json` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderName::AllowOrigin => "access-control-allow-origin",
            HeaderName::AllowCredentials => "access-control-allow-credentials",
            HeaderName::AllowMethods => "access-control-allow-methods",
            HeaderName::AllowHeaders => "access-control-allow-headers",
            HeaderName::ExposeHeaders => "access-control-expose-headers",
            HeaderName::MaxAge => "access-control-max-age",
            HeaderName::AllowPrivateNetwork => "access-control-allow-private-network",
            HeaderName::Vary => "vary",
        }
    }
}

impl std::fmt::Display for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const VARY_ORIGIN: &str = "Origin";
const VARY_PREFLIGHT: &str = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// What a gateway saw of one request. `H` is one `Access-Control-Request-Headers`
/// line (`&str`, `String`, ...).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a, H = &'a str> {
    /// The `Origin` header; `None` when absent.
    pub origin: Option<&'a str>,
    /// The `Origin` header came on more than one line: malformed, whatever
    /// `origin` holds (the first line).
    pub several_origins: bool,
    /// The request method, as sent.
    pub method: &'a str,
    /// `Access-Control-Request-Method`; `None` when absent.
    pub request_method: Option<&'a str>,
    /// `Access-Control-Request-Headers`, one element per header line.
    pub request_headers: &'a [H],
    /// Whether `Access-Control-Request-Private-Network: true` was sent.
    pub request_private_network: bool,
    /// The target's scheme as the browser used it; empty when unknown.
    pub scheme: &'a str,
    /// The target's `host[:port]`; empty when unknown.
    pub authority: &'a str,
    /// The target's path, maybe with a query; empty when unknown.
    pub path: &'a str,
}

impl<'a> Request<'a> {
    /// A plain cross-origin `GET` from `origin` over https, to a target the
    /// gateway did not describe (in scope, never the same origin): the
    /// request that shows whether an origin is allowed. Fields can be
    /// changed with struct update syntax.
    pub fn get(origin: &'a str) -> Self {
        Request {
            origin: Some(origin),
            several_origins: false,
            method: "GET",
            request_method: None,
            request_headers: &[],
            request_private_network: false,
            scheme: "https",
            authority: "",
            path: "",
        }
    }
}

/// What the gateway must do with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Send it on to the upstream (adding the decision's headers to its response).
    Forward,
    /// Answer the preflight at once: 204 with the decision's headers.
    Preflight,
    /// Refuse at once: 403 with the decision's headers.
    Deny,
}

impl Answer {
    /// The status of the direct answer; `None` for [`Answer::Forward`].
    pub fn status(self) -> Option<u16> {
        match self {
            Answer::Forward => None,
            Answer::Preflight => Some(204),
            Answer::Deny => Some(403),
        }
    }

    /// The status as the wire writes it: zero means forward.
    pub fn respond_status(self) -> u16 {
        self.status().unwrap_or(0)
    }
}

/// The answer's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A CORS request from an allowlisted origin.
    Allow,
    /// A CORS request that must fail: answer 403.
    Deny,
    /// Not a CORS request (or not governed by the policy): forward it.
    NotCors,
}

impl Verdict {
    /// `allow`, `deny` or `not_cors`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::NotCors => "not_cors",
        }
    }
}

/// Why a decision came out the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The origin is allowlisted and the preflight's checks passed.
    Allowed,
    /// No `Origin` header.
    NoOrigin,
    /// The origin is the target's own.
    SameOrigin,
    /// The policy's scope does not cover the target.
    OutOfScope,
    /// A well-formed origin that no entry allows.
    OriginNotAllowed,
    /// An `Origin` value no browser would send.
    OriginMalformed,
    /// The opaque origin `null`.
    OriginNull,
    /// The preflight asked for a method the policy does not allow.
    MethodNotAllowed,
    /// The preflight asked for a header the policy does not allow.
    HeadersNotAllowed,
    /// The gateway named a tenant that has no policy.
    TenantUnknown,
    /// Several tenants list the target host and the gateway named none.
    TenantAmbiguous,
}

impl Reason {
    /// Every reason, in the order of the wire enum.
    pub const ALL: [Reason; 11] = [
        Reason::Allowed,
        Reason::NoOrigin,
        Reason::SameOrigin,
        Reason::OutOfScope,
        Reason::OriginNotAllowed,
        Reason::OriginMalformed,
        Reason::OriginNull,
        Reason::MethodNotAllowed,
        Reason::HeadersNotAllowed,
        Reason::TenantUnknown,
        Reason::TenantAmbiguous,
    ];

    /// The verdict every decision with this reason has.
    pub fn verdict(self) -> Verdict {
        match self {
            Reason::Allowed => Verdict::Allow,
            Reason::NoOrigin | Reason::SameOrigin | Reason::OutOfScope => Verdict::NotCors,
            _ => Verdict::Deny,
        }
    }

    /// The reason in snake case, as `corsd check --json` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::NoOrigin => "no_origin",
            Reason::SameOrigin => "same_origin",
            Reason::OutOfScope => "out_of_scope",
            Reason::OriginNotAllowed => "origin_not_allowed",
            Reason::OriginMalformed => "origin_malformed",
            Reason::OriginNull => "origin_null",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::HeadersNotAllowed => "headers_not_allowed",
            Reason::TenantUnknown => "tenant_unknown",
            Reason::TenantAmbiguous => "tenant_ambiguous",
        }
    }
}

/// One response header of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeader<'a> {
    /// The header.
    pub name: HeaderName,
    /// The value, borrowed from the policy or the request where it can be.
    pub value: Cow<'a, str>,
    /// Add beside the upstream's values (`Vary`) rather than overwrite them.
    pub append: bool,
}

impl<'a> ResponseHeader<'a> {
    /// A header that replaces any of the upstream's.
    fn new(name: HeaderName, value: impl Into<Cow<'a, str>>) -> Self {
        ResponseHeader {
            name,
            value: value.into(),
            append: false,
        }
    }

    /// `Vary`: added beside the upstream's own on a forwarded request, alone
    /// on a direct answer.
    fn vary(value: &'static str, append: bool) -> Self {
        ResponseHeader {
            name: HeaderName::Vary,
            value: Cow::Borrowed(value),
            append,
        }
    }
}

/// The headers of a decision, in the order they are sent; never more than seven.
///
/// Each decision fills the slots in one array expression, so that a decision is
/// written once, in place, into its caller's. A list grown by pushes would be
/// built aside and copied out of `decide`, and that copy cost a decision more
/// than 10 ns (docs/benchmarks.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHeaders<'a> {
    slots: [Option<ResponseHeader<'a>>; MAX_RESPONSE_HEADERS],
}

/// The headers of a decision, in order.
pub type ResponseHeadersIter<'h, 'a> = std::iter::Flatten<std::slice::Iter<'h, Option<ResponseHeader<'a>>>>;

impl<'a> ResponseHeaders<'a> {
    /// The headers, in the order they are sent.
    pub fn iter(&self) -> ResponseHeadersIter<'_, 'a> {
        self.slots.iter().flatten()
    }

    fn one(header: ResponseHeader<'a>) -> Self {
        ResponseHeaders {
            slots: [Some(header), None, None, None, None, None, None],
        }
    }
}

impl<'h, 'a> IntoIterator for &'h ResponseHeaders<'a> {
    type Item = &'h ResponseHeader<'a>;
    type IntoIter = ResponseHeadersIter<'h, 'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    /// Allow, deny or not CORS.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// Whether the request is a CORS preflight.
    pub preflight: bool,
    /// Forward, or answer at once with 204 or 403.
    pub answer: Answer,
    /// For the direct answer, or to add to the upstream's response.
    pub response_headers: ResponseHeaders<'a>,
    /// The entry that allowed the origin, if one did.
    pub matched: Option<&'a Entry>,
    /// The version of the policy that decided.
    pub policy_version: &'a str,
    /// For a malformed origin: what is wrong with it.
    pub detail: Option<&'static str>,
}

impl Decision<'_> {
    /// The normalised pattern that matched, empty when none did.
    pub fn matched_pattern(&self) -> &str {
        self.matched.map_or("", |e| e.pattern.as_str())
    }
}

/// Decides one request with `policy`.
///
/// Every path ends in one `Decision` expression, returned as it is built.
pub fn decide<'a, H: AsRef<str>>(policy: &'a Policy, request: &Request<'a, H>) -> Decision<'a> {
    decide_parsed(policy, request, &Parsed::of(request))
}

/// [`decide`] with the parts of `request` that `parsed` has read already
/// (for a second policy deciding the same request: a shadow candidate).
pub fn decide_parsed<'a, H: AsRef<str>>(
    policy: &'a Policy,
    request: &Request<'a, H>,
    parsed: &Parsed<'a>,
) -> Decision<'a> {
    decide_for_target(policy, request, parsed)
}

/// The parts of a request that every policy reads the same way, read once:
/// its target, and its origin, parsed when a policy first needs it.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub(crate) target: Target<'a>,
    origin: std::cell::Cell<Option<Result<RequestOrigin<'a>, Malformed>>>,
}

impl<'a> Parsed<'a> {
    /// Nothing read yet but the target.
    pub fn of<H>(request: &Request<'a, H>) -> Self {
        Parsed {
            target: Target::of(request.authority),
            origin: std::cell::Cell::new(None),
        }
    }

    /// `value` (the request's `Origin`) parsed, once.
    fn origin(&self, value: &'a str) -> Result<RequestOrigin<'a>, Malformed> {
        if let Some(parsed) = self.origin.get() {
            return parsed;
        }
        let parsed = parse_request_origin(value);
        self.origin.set(Some(parsed));
        parsed
    }
}

/// The target's host and port, read once from its authority for the tenant,
/// the scope and the same-origin tests; `None` when the colons do not make
/// sense.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a>(Option<(&'a str, Option<&'a str>)>);

impl<'a> Target<'a> {
    pub(crate) fn of(authority: &'a str) -> Self {
        Target(split_host_port(authority))
    }

    /// The host without its port; the whole authority when it does not split.
    pub(crate) fn host_or(&self, authority: &'a str) -> &'a str {
        self.0.map_or(authority, |(host, _)| host)
    }
}

/// [`decide`], with the target already split.
pub(crate) fn decide_for_target<'a, H: AsRef<str>>(
    policy: &'a Policy,
    request: &Request<'a, H>,
    parsed: &Parsed<'a>,
) -> Decision<'a> {
    let target = parsed.target;
    if !policy.scope.covers(target.host_or(request.authority), request.path) {
        return not_cors(policy, Reason::OutOfScope, ResponseHeaders::default());
    }
    let vary_origin = || ResponseHeaders::one(ResponseHeader::vary(VARY_ORIGIN, true));
    let Some(origin_value) = request.origin else {
        return not_cors(policy, Reason::NoOrigin, vary_origin());
    };
    let preflight = request.method == "OPTIONS" && request.request_method.is_some();
    if request.several_origins {
        let why = "the Origin header came on several lines";
        return deny(policy, preflight, Reason::OriginMalformed, None, Some(why));
    }
    let origin = match parsed.origin(origin_value) {
        Ok(RequestOrigin::Tuple(origin)) => origin,
        Ok(RequestOrigin::Null) => return deny(policy, preflight, Reason::OriginNull, None, None),
        Err(Malformed(why)) => return deny(policy, preflight, Reason::OriginMalformed, None, Some(why)),
    };
    if is_same_origin(&origin, request.scheme, target.0) {
        return not_cors(policy, Reason::SameOrigin, vary_origin());
    }
    let Some(entry) = policy.allowlist.find(&origin).and_then(|i| entry(policy, i)) else {
        return deny(policy, preflight, Reason::OriginNotAllowed, None, None);
    };
    match request.request_method.filter(|_| preflight) {
        None => allow_actual(policy, entry, origin_value),
        Some(method) => allow_preflight(policy, entry, origin_value, method, request),
    }
}

/// The decision when no tenant's policy can decide (DESIGN.md section 8):
/// out of scope is forwarded untouched; an unknown or ambiguous tenant is
/// denied with `Vary: Origin` alone, unless the request has no `Origin`,
/// which is never a CORS request. No policy decided, so no version.
pub(crate) fn without_policy<'a, H>(reason: Reason, request: &Request<'a, H>) -> Decision<'a> {
    let vary = |append| ResponseHeaders::one(ResponseHeader::vary(VARY_ORIGIN, append));
    let (verdict, reason, answer, response_headers) = match (reason, request.origin) {
        (Reason::OutOfScope, _) => (Verdict::NotCors, reason, Answer::Forward, ResponseHeaders::default()),
        (_, None) => (Verdict::NotCors, Reason::NoOrigin, Answer::Forward, vary(true)),
        (_, Some(_)) => (Verdict::Deny, reason, Answer::Deny, vary(false)),
    };
    Decision {
        verdict,
        reason,
        preflight: verdict == Verdict::Deny && request.method == "OPTIONS" && request.request_method.is_some(),
        answer,
        response_headers,
        matched: None,
        policy_version: "",
        detail: None,
    }
}

fn entry(policy: &Policy, index: EntryIndex) -> Option<&Entry> {
    policy.entries().get(index as usize)
}

fn not_cors<'a>(policy: &'a Policy, reason: Reason, response_headers: ResponseHeaders<'a>) -> Decision<'a> {
    Decision {
        verdict: Verdict::NotCors,
        reason,
        preflight: false,
        answer: Answer::Forward,
        response_headers,
        matched: None,
        policy_version: policy.version(),
        detail: None,
    }
}

/// A CORS request that must fail. A preflight refused for its method or
/// headers still names the entry that allowed its origin.
fn deny<'a>(
    policy: &'a Policy,
    preflight: bool,
    reason: Reason,
    matched: Option<&'a Entry>,
    detail: Option<&'static str>,
) -> Decision<'a> {
    let vary = if preflight { VARY_PREFLIGHT } else { VARY_ORIGIN };
    Decision {
        verdict: Verdict::Deny,
        reason,
        preflight,
        answer: Answer::Deny,
        response_headers: ResponseHeaders::one(ResponseHeader::vary(vary, false)),
        matched,
        policy_version: policy.version(),
        detail,
    }
}

/// The origin's scheme, host and port equal the target's (a missing port
/// being the default of its own scheme). Unknown targets are never the same.
fn is_same_origin(origin: &OriginTuple<'_>, scheme: &str, target: Option<(&str, Option<&str>)>) -> bool {
    let Some((host, port)) = target else {
        return false;
    };
    if scheme.is_empty() || host.is_empty() || !origin.host.eq_ignore_ascii_case(host) {
        return false;
    }
    let port = match port {
        Some(digits) => digits.parse::<u16>().ok(),
        None => default_port(scheme),
    };
    origin.scheme.eq_ignore_ascii_case(scheme) && origin.port.or_else(|| default_port(origin.scheme)) == port
}

/// The headers every allowed actual request under `policy` gets after its
/// `Access-Control-Allow-Origin`, in order: they depend on the policy alone,
/// so a shell may encode them once per policy.
pub fn allowed_actual_rest(policy: &Policy) -> [Option<ResponseHeader<'_>>; 3] {
    let rules = &policy.cors;
    [
        credentials(rules),
        (rules.expose_headers_value.as_deref()).map(|v| ResponseHeader::new(HeaderName::ExposeHeaders, v)),
        Some(ResponseHeader::vary(VARY_ORIGIN, true)),
    ]
}

fn allow_actual<'a>(policy: &'a Policy, entry: &'a Entry, origin: &'a str) -> Decision<'a> {
    let [credentials, expose, vary] = allowed_actual_rest(policy);
    Decision {
        verdict: Verdict::Allow,
        reason: Reason::Allowed,
        preflight: false,
        answer: Answer::Forward,
        response_headers: ResponseHeaders {
            slots: [
                Some(ResponseHeader::new(HeaderName::AllowOrigin, origin)),
                credentials,
                expose,
                vary,
                None,
                None,
                None,
            ],
        },
        matched: Some(entry),
        policy_version: policy.version(),
        detail: None,
    }
}

fn allow_preflight<'a, H: AsRef<str>>(
    policy: &'a Policy,
    entry: &'a Entry,
    origin: &'a str,
    method: &'a str,
    request: &Request<'a, H>,
) -> Decision<'a> {
    let rules = &policy.cors;
    if !method_allowed(rules, method) {
        return deny(policy, true, Reason::MethodNotAllowed, Some(entry), None);
    }
    let Ok(requested) = check_request_headers(rules, request.request_headers) else {
        return deny(policy, true, Reason::HeadersNotAllowed, Some(entry), None);
    };
    let methods = rules.allow_methods_value.as_deref().unwrap_or(method);
    let allow_headers = (requested > 0).then(|| match &rules.allow_headers_value {
        Some(value) => Cow::Borrowed(&**value),
        None => Cow::Owned(echo_request_headers(request.request_headers)),
    });
    let private_network = request.request_private_network && rules.allow_private_network;
    Decision {
        verdict: Verdict::Allow,
        reason: Reason::Allowed,
        preflight: true,
        answer: Answer::Preflight,
        response_headers: ResponseHeaders {
            slots: [
                Some(ResponseHeader::new(HeaderName::AllowOrigin, origin)),
                Some(ResponseHeader::new(HeaderName::AllowMethods, methods)),
                allow_headers.map(|v| ResponseHeader::new(HeaderName::AllowHeaders, v)),
                Some(ResponseHeader::new(HeaderName::MaxAge, &*rules.max_age_value)),
                credentials(rules),
                private_network.then(|| ResponseHeader::new(HeaderName::AllowPrivateNetwork, "true")),
                Some(ResponseHeader::vary(VARY_PREFLIGHT, false)),
            ],
        },
        matched: Some(entry),
        policy_version: policy.version(),
        detail: None,
    }
}

/// `Access-Control-Allow-Credentials: true` when the policy allows credentials.
fn credentials<'a>(rules: &CorsRules) -> Option<ResponseHeader<'a>> {
    rules
        .allow_credentials
        .then(|| ResponseHeader::new(HeaderName::AllowCredentials, "true"))
}

/// GET, HEAD and POST always; forbidden methods never; others when listed
/// (compared case-sensitively, as browsers send them) or under `*`.
fn method_allowed(rules: &CorsRules, method: &str) -> bool {
    if !is_token(method) || forbidden_method(method).is_some() {
        return false;
    }
    matches!(method, "GET" | "HEAD" | "POST") || rules.any_method || rules.methods.iter().any(|m| **m == *method)
}
