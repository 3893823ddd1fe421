//! `envoy.service.auth.v3.Authorization/Check`: Envoy's ext_authz filter asks,
//! corsd decides with the same core, and the answer is mapped onto Envoy's
//! terms. Forwarded requests get OK with `response_headers_to_add`; direct
//! answers (204 preflights, 403 denials) get PERMISSION_DENIED with a
//! `denied_response` carrying the status, the headers and a short body.

use std::sync::Arc;

use arrayvec::ArrayVec;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use tonic::{Request, Response, Status};

use super::cors_policy::trace_decision;
use crate::core::{Decision, decide};
use crate::store::PolicyStore;

/// Stands in for an `Origin` sent on several header lines: malformed, denied.
const SEVERAL_ORIGINS: &str = "<several Origin lines>, <denied>";
/// Most `Access-Control-Request-Headers` lines read from a raw header map; a
/// request with more is over the parse's limits anyway.
const MAX_REQUEST_HEADER_LINES: usize = 96;

/// The ext_authz v3 service.
#[derive(Debug, Clone)]
pub struct AuthorizationService {
    store: Arc<PolicyStore>,
}

impl AuthorizationService {
    /// A service answering from `store`.
    pub fn new(store: Arc<PolicyStore>) -> Self {
        AuthorizationService { store }
    }
}

/// The CORS-relevant request headers, borrowed from Envoy's attributes.
#[derive(Debug, Default)]
struct CorsHeaders<'a> {
    origin: Option<&'a str>,
    request_method: Option<&'a str>,
    request_headers: ArrayVec<&'a str, MAX_REQUEST_HEADER_LINES>,
    private_network: bool,
    /// More `Access-Control-Request-Headers` lines than were kept.
    too_many_lines: bool,
}

impl<'a> CorsHeaders<'a> {
    fn add(&mut self, name: &str, value: &'a str) {
        if name.eq_ignore_ascii_case("origin") {
            self.origin = Some(if self.origin.is_some() { SEVERAL_ORIGINS } else { value });
        } else if name.eq_ignore_ascii_case("access-control-request-method") {
            // Several lines make a list, which is not a method: denied.
            self.request_method = Some(if self.request_method.is_some() { "," } else { value });
        } else if name.eq_ignore_ascii_case("access-control-request-headers") {
            self.too_many_lines |= self.request_headers.try_push(value).is_err();
        } else if name.eq_ignore_ascii_case("access-control-request-private-network") {
            self.private_network = value.trim().eq_ignore_ascii_case("true");
        }
    }

    /// From `header_map` when Envoy sends raw headers, else from `headers`.
    fn read(http: &'a HttpRequest) -> Self {
        let mut headers = CorsHeaders::default();
        match &http.header_map {
            Some(map) if !map.headers.is_empty() => {
                for h in &map.headers {
                    let value = if h.raw_value.is_empty() {
                        h.value.as_str()
                    } else {
                        // Not UTF-8: cannot be a legal value of these headers.
                        std::str::from_utf8(&h.raw_value).unwrap_or("\u{0}")
                    };
                    headers.add(&h.key, value);
                }
            }
            _ => {
                for (name, value) in &http.headers {
                    headers.add(name, value);
                }
            }
        }
        headers
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let Some(http) = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref()?.http.as_ref())
        else {
            return Err(Status::invalid_argument(
                "the check request has no HTTP request attributes",
            ));
        };
        let headers = CorsHeaders::read(http);
        // Over the line limit: a header list the parse would refuse anyway.
        let hostile = ["\u{0}"];
        let request_headers: &[&str] = if headers.too_many_lines {
            &hostile
        } else {
            &headers.request_headers
        };
        let snapshot = self.store.load();
        let decision = decide(
            &snapshot.policy,
            &crate::core::Request {
                origin: headers.origin,
                method: &http.method,
                request_method: headers.request_method,
                request_headers,
                request_private_network: headers.private_network,
                scheme: &http.scheme,
                authority: &http.host,
                path: &http.path,
            },
        );
        trace_decision("Authorization/Check", headers.origin, &http.method, &decision);
        Ok(Response::new(to_check_response(&decision)))
    }
}

/// Maps a decision onto Envoy's `CheckResponse`.
pub fn to_check_response(decision: &Decision<'_>) -> CheckResponse {
    let mut response = CheckResponse::new();
    if decision.respond_status == 0 {
        let mut ok = OkHttpResponseBuilder::new();
        for h in &decision.response_headers {
            let action = if h.append {
                HeaderAppendAction::AppendIfExistsOrAdd
            } else {
                HeaderAppendAction::OverwriteIfExistsOrAdd
            };
            ok.add_response_header(h.name.as_str(), h.value.as_ref(), Some(action), false);
        }
        response.set_status(Status::ok("")).set_http_response(ok);
    } else {
        let mut denied = DeniedHttpResponseBuilder::new();
        let code = match decision.respond_status {
            204 => HttpStatusCode::NoContent,
            _ => HttpStatusCode::Forbidden,
        };
        denied.set_http_status(code);
        for h in &decision.response_headers {
            denied.add_header(
                h.name.as_str(),
                h.value.as_ref(),
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
        }
        if code == HttpStatusCode::Forbidden {
            denied.add_header(
                "content-type",
                "text/plain; charset=utf-8",
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
            denied.set_body(format!("CORS request denied: {}\n", decision.reason.as_str()));
        }
        response
            .set_status(Status::permission_denied(decision.reason.as_str()))
            .set_http_response(denied);
    }
    response
}
