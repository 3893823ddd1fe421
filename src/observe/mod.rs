//! What corsd shows of its decisions: a debug-level tracing span per
//! decision, and Prometheus metrics ([`metrics`], served by [`http`]). Fed
//! only by the one decision path (`grpc::decision`), so every decision is
//! observed once, whichever API asked.

pub mod audit;
pub mod denials;
pub mod http;
pub mod metrics;

use tracing::debug_span;

use crate::core::{Decision, Request};

/// The API a decision was asked through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `corsd.v1.CorsPolicy/CheckOrigin`.
    Corsd,
    /// `envoy.service.auth.v3.Authorization/Check`.
    ExtAuthz,
}

impl Api {
    /// `corsd` or `ext_authz`, as logs and metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Corsd => "corsd",
            Api::ExtAuthz => "ext_authz",
        }
    }

    /// The RPC's name.
    pub fn rpc(self) -> &'static str {
        match self {
            Api::Corsd => "CheckOrigin",
            Api::ExtAuthz => "Authorization/Check",
        }
    }
}

/// Observes one decision: a debug-level span named after the RPC. Nothing is
/// recorded (or built) unless debug is enabled for this module.
pub fn decision(api: Api, tenant: &str, request: &Request<'_>, decision: &Decision<'_>) {
    let span = debug_span!(
        "decide",
        rpc = api.rpc(),
        tenant,
        origin = request.origin,
        method = request.method,
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
    span.record("status", decision.answer.respond_status());
    span.record("matched", decision.matched_pattern());
    span.record("version", decision.policy_version);
}
