//! `corsd.v1.CorsPolicy`: `CheckOrigin` decides with the policy in force;
//! `ListEntries` pages through the allowlist in file order.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::debug_span;

use super::pb;
use crate::core::origin::{RequestOrigin, parse_request_origin};
use crate::core::{Decision, Reason, Verdict, decide};
use crate::store::PolicyStore;

/// Page size when the request names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page served; larger requests get this many.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The `corsd.v1.CorsPolicy` service.
#[derive(Debug, Clone)]
pub struct CorsPolicyService {
    store: Arc<PolicyStore>,
}

impl CorsPolicyService {
    /// A service answering from `store`.
    pub fn new(store: Arc<PolicyStore>) -> Self {
        CorsPolicyService { store }
    }
}

/// Converts a decision to its wire form.
pub fn to_proto(decision: &Decision<'_>) -> pb::CheckOriginResponse {
    pb::CheckOriginResponse {
        verdict: verdict(decision.verdict) as i32,
        reason: reason(decision.reason) as i32,
        preflight: decision.preflight,
        respond_status: u32::from(decision.respond_status),
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
    }
}

/// Traces one decision as a debug-level span named after the RPC; nothing
/// is recorded (or built) unless debug is enabled for this module.
pub(crate) fn trace_decision(rpc: &'static str, origin: Option<&str>, method: &str, decision: &Decision<'_>) {
    let span = debug_span!(
        "decide",
        rpc,
        origin,
        method,
        verdict = tracing::field::Empty,
        reason = tracing::field::Empty,
        preflight = tracing::field::Empty,
        status = tracing::field::Empty,
        matched = tracing::field::Empty,
        version = tracing::field::Empty,
    );
    if span.is_disabled() {
        return;
    }
    span.record("verdict", decision.verdict.as_str());
    span.record("reason", decision.reason.as_str());
    span.record("preflight", decision.preflight);
    span.record("status", decision.respond_status);
    span.record("matched", decision.matched_pattern());
    span.record("version", decision.policy_version);
}

#[tonic::async_trait]
impl pb::cors_policy_server::CorsPolicy for CorsPolicyService {
    async fn check_origin(
        &self,
        request: Request<pb::CheckOriginRequest>,
    ) -> Result<Response<pb::CheckOriginResponse>, Status> {
        let r = request.get_ref();
        let snapshot = self.store.load();
        let decision = decide(
            &snapshot.policy,
            &crate::core::Request {
                origin: r.origin.as_deref(),
                method: &r.method,
                request_method: r.access_control_request_method.as_deref(),
                request_headers: &r.access_control_request_headers,
                request_private_network: r.access_control_request_private_network,
                scheme: &r.scheme,
                authority: &r.authority,
                path: &r.path,
            },
        );
        trace_decision("CheckOrigin", r.origin.as_deref(), &r.method, &decision);
        Ok(Response::new(to_proto(&decision)))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = request.get_ref();
        let snapshot = self.store.load_full();
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
        let matching: Vec<(usize, &crate::core::Entry)> = policy
            .entries()
            .iter()
            .enumerate()
            .filter(|(_, e)| match &filter {
                None => true,
                Some(None) => false,
                Some(Some(origin)) => crate::core::allowlist::matches(&e.pattern, origin),
            })
            .collect();
        let total = matching.len();
        let page: Vec<pb::Entry> = matching
            .iter()
            .skip(start)
            .take(page_size)
            .map(|(_, e)| pb::Entry {
                pattern: e.pattern.to_string(),
                note: e.note.clone(),
                line: e.line,
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
            policy: Some(pb::PolicyInfo {
                version: policy.version().to_owned(),
                label: policy.label().to_owned(),
                source: policy.source().to_owned(),
                loaded_at_unix_ms: snapshot.loaded_at_unix_ms,
                entry_count: u32::try_from(policy.entries().len()).unwrap_or(u32::MAX),
                last_reload_error: self
                    .store
                    .last_reload_error()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
            }),
        }))
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
