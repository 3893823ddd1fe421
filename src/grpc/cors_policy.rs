//! `corsd.v1.CorsPolicy`: `CheckOrigin` decides with the policy in force;
//! `ListEntries` pages through the allowlist in file order.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admin::AdminGate;
use super::decision::DecisionPath;
use super::pb;
use super::stubs::cors_policy_server::CorsPolicy;
use super::wire::{CheckOriginCall, Encoded, HeaderLines, Writer, str_len, sub_len, varint_len};
use super::{Snapshot, Store};
use crate::core::decide::{MAX_RESPONSE_HEADERS, allowed_actual_rest};
use crate::core::origin::{RequestOrigin, parse_request_origin};
use crate::core::shadow::Shadowed;
use crate::core::{Change, Decision, Policy, Reason, ResponseHeader, Verdict};
use crate::observe::Api;
use crate::store::{Hits, PolicyStore, Prepare};

/// Page size when the request names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page served; larger requests get this many.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The `corsd.v1.CorsPolicy` service.
#[derive(Debug, Clone)]
pub struct CorsPolicyService {
    path: DecisionPath,
    admin: AdminGate,
}

impl CorsPolicyService {
    /// A service answering from `store`.
    pub fn new(store: Arc<Store>) -> Self {
        CorsPolicyService {
            path: DecisionPath::new(store),
            admin: AdminGate::open(),
        }
    }

    /// A service deciding along `path` (which may count into metrics).
    pub fn on_path(path: DecisionPath) -> Self {
        CorsPolicyService {
            path,
            admin: AdminGate::open(),
        }
    }

    /// The same service, with admin calls behind `admin`.
    pub fn with_admin(mut self, admin: AdminGate) -> Self {
        self.admin = admin;
        self
    }

    /// Decides one `CheckOrigin` call with the policy in force.
    pub fn answer(&self, call: &CheckOriginCall) -> Result<Encoded, Status> {
        let mut request_headers = HeaderLines::default();
        let text = call.text(&mut request_headers)?;
        let request = crate::core::Request {
            origin: text.origin,
            several_origins: false,
            method: text.method,
            request_method: text.request_method,
            request_headers: request_headers.as_slice(),
            request_private_network: call.access_control_request_private_network(),
            scheme: text.scheme,
            authority: text.authority,
            path: text.path,
        };
        self.path
            .decide(Api::Corsd, text.tenant, &request, encode_check_origin_from)
    }
}

/// A decision as the generated message: the readable mapping, which
/// [`encode_check_origin`] writes without building.
pub fn to_proto(tenant: &str, decision: &Decision<'_>) -> pb::CheckOriginResponse {
    to_proto_shadowed(tenant, decision, None)
}

/// [`to_proto`] with the candidate's decision, if the tenant has one.
pub fn to_proto_shadowed(
    tenant: &str,
    decision: &Decision<'_>,
    shadow: Option<&Shadowed<'_>>,
) -> pb::CheckOriginResponse {
    pb::CheckOriginResponse {
        verdict: verdict(decision.verdict) as i32,
        reason: reason(decision.reason) as i32,
        preflight: decision.preflight,
        respond_status: u32::from(decision.answer.respond_status()),
        response_headers: decision
            .response_headers
            .iter()
            .map(|h| pb::Header {
                name: h.name.as_str().to_owned(),
                value: h.value.to_string(),
                append: h.append,
            })
            .collect(),
        matched_pattern: decision.matched_pattern().to_owned(),
        policy_version: decision.policy_version.to_owned(),
        tenant: tenant.to_owned(),
        shadow: shadow.map(|s| pb::ShadowDecision {
            verdict: verdict(s.decision.verdict) as i32,
            reason: reason(s.decision.reason) as i32,
            matched_pattern: s.decision.matched_pattern().to_owned(),
            policy_version: s.decision.policy_version.to_owned(),
            change: change(s.change) as i32,
        }),
    }
}

fn change(c: Change) -> pb::Change {
    match c {
        Change::Same => pb::Change::Same,
        Change::NewlyDenied => pb::Change::NewlyDenied,
        Change::NewlyAllowed => pb::Change::NewlyAllowed,
        Change::Changed => pb::Change::Changed,
    }
}

fn verdict(v: Verdict) -> pb::Verdict {
    match v {
        Verdict::Allow => pb::Verdict::Allow,
        Verdict::Deny => pb::Verdict::Deny,
        Verdict::NotCors => pb::Verdict::NotCors,
    }
}

fn reason(r: Reason) -> pb::Reason {
    match r {
        Reason::Allowed => pb::Reason::Allowed,
        Reason::NoOrigin => pb::Reason::NoOrigin,
        Reason::SameOrigin => pb::Reason::SameOrigin,
        Reason::OutOfScope => pb::Reason::OutOfScope,
        Reason::OriginNotAllowed => pb::Reason::OriginNotAllowed,
        Reason::OriginMalformed => pb::Reason::OriginMalformed,
        Reason::OriginNull => pb::Reason::OriginNull,
        Reason::MethodNotAllowed => pb::Reason::MethodNotAllowed,
        Reason::HeadersNotAllowed => pb::Reason::HeadersNotAllowed,
        Reason::TenantUnknown => pb::Reason::TenantUnknown,
        Reason::TenantAmbiguous => pb::Reason::TenantAmbiguous,
    }
}

/// Field numbers of `CheckOriginResponse` and `Header` (`proto/corsd/v1/corsd.proto`).
mod field {
    pub const VERDICT: u32 = 1;
    pub const REASON: u32 = 2;
    pub const PREFLIGHT: u32 = 3;
    pub const RESPOND_STATUS: u32 = 4;
    pub const RESPONSE_HEADERS: u32 = 5;
    pub const MATCHED_PATTERN: u32 = 6;
    pub const POLICY_VERSION: u32 = 7;
    pub const TENANT: u32 = 8;
    pub const SHADOW: u32 = 9;
    pub const SHADOW_VERDICT: u32 = 1;
    pub const SHADOW_REASON: u32 = 2;
    pub const SHADOW_MATCHED_PATTERN: u32 = 3;
    pub const SHADOW_POLICY_VERSION: u32 = 4;
    pub const SHADOW_CHANGE: u32 = 5;
    pub const HEADER_NAME: u32 = 1;
    pub const HEADER_VALUE: u32 = 2;
    pub const HEADER_APPEND: u32 = 3;
}

/// Writes a decision as a `CheckOriginResponse`: the bytes prost writes for
/// [`to_proto`], without building it.
pub fn encode_check_origin(tenant: &str, decision: &Decision<'_>) -> Result<Encoded, Status> {
    encode(tenant, decision, None, None)
}

/// [`encode_check_origin`] for a decision made with `snapshot`'s policy:
/// the same bytes, with the parts that are the same for every answer from
/// the snapshot copied in, encoded on its first answer ([`AnswerParts`]).
pub fn encode_check_origin_from(
    tenant: &str,
    decision: &Decision<'_>,
    snapshot: Option<&Snapshot>,
    shadow: Option<&Shadowed<'_>>,
) -> Result<Encoded, Status> {
    let parts = snapshot
        .filter(|s| std::ptr::eq(decision.policy_version, s.policy.version()) && *s.tenant == *tenant)
        .and_then(|s| s.prepared.answer.as_ref());
    encode(tenant, decision, parts, shadow)
}

/// The length of a `ShadowDecision`'s own fields.
fn shadow_len(s: &Shadowed<'_>) -> usize {
    use field::*;
    varint_len(SHADOW_VERDICT, verdict(s.decision.verdict) as u64)
        + varint_len(SHADOW_REASON, reason(s.decision.reason) as u64)
        + str_len(SHADOW_MATCHED_PATTERN, s.decision.matched_pattern())
        + str_len(SHADOW_POLICY_VERSION, s.decision.policy_version)
        + varint_len(SHADOW_CHANGE, change(s.change) as u64)
}

fn put_shadow(out: &mut Writer, s: &Shadowed<'_>, len: usize) {
    use field::*;
    out.put_sub(SHADOW, len);
    out.put_varint(SHADOW_VERDICT, verdict(s.decision.verdict) as u64);
    out.put_varint(SHADOW_REASON, reason(s.decision.reason) as u64);
    out.put_str(SHADOW_MATCHED_PATTERN, s.decision.matched_pattern());
    out.put_str(SHADOW_POLICY_VERSION, s.decision.policy_version);
    out.put_varint(SHADOW_CHANGE, change(s.change) as u64);
}

/// What the gRPC API keeps with each snapshot, built when it is swapped in.
#[derive(Debug)]
pub struct Prepared {
    /// `None` when the parts did not encode (each answer is then written whole).
    answer: Option<AnswerParts>,
}

impl Prepared {
    /// Whether the answer parts were encoded (else each answer is whole).
    pub fn has_answer_parts(&self) -> bool {
        self.answer.is_some()
    }
}

impl Prepare for Prepared {
    fn prepare(tenant: &str, policy: &Policy) -> Self {
        Prepared {
            answer: AnswerParts::of(tenant, policy),
        }
    }
}

/// The fields of `CheckOriginResponse` that one snapshot writes the same
/// into every answer, encoded once, at swap time: nearly half of an allowed
/// answer's bytes.
#[derive(Debug)]
pub struct AnswerParts {
    /// An allowed actual request's headers after its
    /// `Access-Control-Allow-Origin` (credentials, exposed headers, `Vary`).
    allowed_rest: Encoded,
    /// The policy version and the tenant, which end every answer.
    tail: Encoded,
}

impl AnswerParts {
    /// The parts, or `None` (each answer then written whole) when they do
    /// not encode to the length summed.
    fn of(tenant: &str, policy: &Policy) -> Option<Self> {
        use field::*;
        let rest = allowed_actual_rest(policy);
        let rest = rest.iter().flatten();
        let len = rest.clone().map(|h| sub_len(RESPONSE_HEADERS, header_len(h))).sum();
        let mut allowed_rest = Writer::with_len(len);
        for h in rest {
            put_header(&mut allowed_rest, h, header_len(h));
        }
        let version = policy.version();
        let mut tail = Writer::with_len(str_len(POLICY_VERSION, version) + str_len(TENANT, tenant));
        tail.put_str(POLICY_VERSION, version);
        tail.put_str(TENANT, tenant);
        Some(AnswerParts {
            allowed_rest: allowed_rest.finish().ok()?,
            tail: tail.finish().ok()?,
        })
    }
}

fn header_len(h: &ResponseHeader<'_>) -> usize {
    use field::*;
    str_len(HEADER_NAME, h.name.as_str()) + str_len(HEADER_VALUE, &h.value) + varint_len(HEADER_APPEND, h.append.into())
}

fn put_header(out: &mut Writer, h: &ResponseHeader<'_>, len: usize) {
    use field::*;
    out.put_sub(RESPONSE_HEADERS, len);
    out.put_str(HEADER_NAME, h.name.as_str());
    out.put_str(HEADER_VALUE, &h.value);
    out.put_varint(HEADER_APPEND, h.append.into());
}

/// One answer, with `parts` (prepared for the policy and tenant that
/// decided) standing in for the fields they hold.
fn encode(
    tenant: &str,
    decision: &Decision<'_>,
    parts: Option<&AnswerParts>,
    shadow: Option<&Shadowed<'_>>,
) -> Result<Encoded, Status> {
    use field::*;
    // An allowed actual request: only its first header depends on it.
    let allowed_rest = parts
        .filter(|_| decision.reason == Reason::Allowed && !decision.preflight)
        .map(|p| &p.allowed_rest);
    let written = if allowed_rest.is_some() {
        1
    } else {
        MAX_RESPONSE_HEADERS
    };
    let headers = || decision.response_headers.iter().take(written);
    // Each header's length is needed twice: in the message's and before it.
    let mut header_lens = [0; MAX_RESPONSE_HEADERS];
    for (len, h) in header_lens.iter_mut().zip(headers()) {
        *len = header_len(h);
    }
    let shadow_lens = shadow.map(|s| (s, shadow_len(s)));
    let verdict = verdict(decision.verdict) as u64;
    let reason = reason(decision.reason) as u64;
    let len = varint_len(VERDICT, verdict)
        + varint_len(REASON, reason)
        + varint_len(PREFLIGHT, decision.preflight.into())
        + varint_len(RESPOND_STATUS, decision.answer.respond_status().into())
        + headers()
            .zip(&header_lens)
            .map(|(_, &len)| sub_len(RESPONSE_HEADERS, len))
            .sum::<usize>()
        + allowed_rest.map_or(0, |rest| rest.as_bytes().len())
        + str_len(MATCHED_PATTERN, decision.matched_pattern())
        + match parts {
            Some(parts) => parts.tail.as_bytes().len(),
            None => str_len(POLICY_VERSION, decision.policy_version) + str_len(TENANT, tenant),
        }
        + shadow_lens.map_or(0, |(_, len)| sub_len(SHADOW, len));
    let mut out = Writer::with_len(len);
    out.put_varint(VERDICT, verdict);
    out.put_varint(REASON, reason);
    out.put_varint(PREFLIGHT, decision.preflight.into());
    out.put_varint(RESPOND_STATUS, decision.answer.respond_status().into());
    for (h, &len) in headers().zip(&header_lens) {
        put_header(&mut out, h, len);
    }
    if let Some(rest) = allowed_rest {
        out.put_encoded(rest);
    }
    out.put_str(MATCHED_PATTERN, decision.matched_pattern());
    match parts {
        Some(parts) => out.put_encoded(&parts.tail),
        None => {
            out.put_str(POLICY_VERSION, decision.policy_version);
            out.put_str(TENANT, tenant);
        }
    }
    if let Some((shadow, len)) = shadow_lens {
        put_shadow(&mut out, shadow, len);
    }
    out.finish()
}

#[tonic::async_trait]
impl CorsPolicy for CorsPolicyService {
    async fn check_origin(&self, request: Request<CheckOriginCall>) -> Result<Response<Encoded>, Status> {
        self.answer(request.get_ref()).map(Response::new)
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        self.admin.admit_for(&request, &request.get_ref().tenant)?;
        let r = request.get_ref();
        let store = self.path.store();
        let Some(snapshot) = store.tenant(&r.tenant) else {
            return Err(Status::not_found(format!("no tenant `{}`", r.tenant)));
        };
        let policy = &snapshot.policy;
        let page_size = match r.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let start = if r.page_token.is_empty() {
            0
        } else {
            parse_page_token(&r.page_token, policy.version())?
        };
        let filter = if r.origin.is_empty() {
            None
        } else {
            match parse_request_origin(&r.origin) {
                Ok(RequestOrigin::Tuple(t)) => Some(Some(t)),
                Ok(RequestOrigin::Null) => Some(None),
                Err(why) => return Err(Status::invalid_argument(format!("`origin` filter: {why}"))),
            }
        };
        let matching: Vec<(usize, &crate::core::Entry, Hits)> = policy
            .entries()
            .iter()
            .enumerate()
            .filter(|(_, e)| match &filter {
                None => true,
                Some(None) => false,
                Some(Some(origin)) => crate::core::allowlist::matches(&e.pattern, origin),
            })
            .map(|(i, e)| (i, e, snapshot.usage.total(i)))
            .filter(|(_, _, hits)| !r.unused_only || hits.hits == 0)
            .collect();
        let total = matching.len();
        let page: Vec<pb::Entry> = matching
            .iter()
            .skip(start)
            .take(page_size)
            .map(|(_, e, hits)| pb::Entry {
                pattern: e.pattern.to_string(),
                note: e.note.clone(),
                line: e.line,
                hits: hits.hits,
                last_hit_unix_ms: hits.last_hit_unix_ms,
            })
            .collect();
        let end = start.saturating_add(page.len());
        let next_page_token = if end < total {
            format!("{}.{end}", policy.version())
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListEntriesResponse {
            entries: page,
            next_page_token,
            total_size: u32::try_from(total).unwrap_or(u32::MAX),
            policy: Some(policy_info(store, self.path.shadow().map(|s| &**s), &snapshot)),
        }))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let caller = self.admin.admit_any(&request)?;
        let r = request.get_ref();
        let store = self.path.store();
        let tenants = store.tenants_full();
        let page_size = match r.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let mut sorted = tenants.sorted();
        // A tenant's token lists its own tenant alone.
        if let Some(only) = caller.only_tenant() {
            sorted.retain(|(name, _)| *name == only);
        }
        // A token names the last tenant listed, so a page never repeats or
        // skips one that stayed, whatever came or went in between.
        let start = match r.page_token.strip_prefix(TENANT_TOKEN) {
            _ if r.page_token.is_empty() => 0,
            Some(after) => sorted.partition_point(|(name, _)| *name <= after),
            None => {
                return Err(Status::invalid_argument(
                    "`page_token` is not a token ListTenants gave out",
                ));
            }
        };
        let page: Vec<pb::PolicyInfo> = sorted
            .iter()
            .skip(start)
            .take(page_size)
            .map(|(_, snapshot)| policy_info(store, self.path.shadow().map(|s| &**s), snapshot))
            .collect();
        let end = start.saturating_add(page.len());
        let next_page_token = match page.last() {
            Some(last) if end < sorted.len() => format!("{TENANT_TOKEN}{}", last.tenant),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: page,
            next_page_token,
            total_size: u32::try_from(sorted.len()).unwrap_or(u32::MAX),
        }))
    }
}

/// What a `ListTenants` page token starts with; the last name listed follows.
const TENANT_TOKEN: &str = "after:";

/// A tenant's policy in force and the state of its file.
fn policy_info(store: &Store, shadow: Option<&PolicyStore>, snapshot: &Snapshot) -> pb::PolicyInfo {
    let policy = &snapshot.policy;
    let candidate = shadow.and_then(|s| s.tenant(&snapshot.tenant));
    pb::PolicyInfo {
        shadow_version: candidate.map(|c| c.policy.version().to_owned()).unwrap_or_default(),
        shadow_last_reload_error: shadow
            .and_then(|s| s.reload_error(&snapshot.tenant))
            .map(|e| e.to_string())
            .unwrap_or_default(),
        version: policy.version().to_owned(),
        label: policy.label().to_owned(),
        source: policy.source().to_owned(),
        loaded_at_unix_ms: snapshot.loaded_at_unix_ms,
        entry_count: u32::try_from(policy.entries().len()).unwrap_or(u32::MAX),
        last_reload_error: store
            .reload_error(&snapshot.tenant)
            .map(|e| e.to_string())
            .unwrap_or_default(),
        tenant: snapshot.tenant.to_string(),
    }
}

/// A page token is `VERSION.OFFSET`; one from another policy version is
/// `ABORTED`, anything unreadable `INVALID_ARGUMENT`.
fn parse_page_token(token: &str, version: &str) -> Result<usize, Status> {
    let unreadable = || Status::invalid_argument("`page_token` is not a token ListEntries gave out");
    let (token_version, offset) = token.split_once('.').ok_or_else(unreadable)?;
    let offset: usize = offset.parse().map_err(|_| unreadable())?;
    if token_version.len() != 16 || !token_version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(unreadable());
    }
    if token_version != version {
        return Err(Status::aborted("policy changed; list again"));
    }
    Ok(offset)
}
