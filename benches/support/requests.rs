//! The requests the benchmarks and the load harness send (shared with
//! `#[path]`): a browser's `GET` of `https://api.example.com/...` from `origin`,
//! as corsd's `CheckOriginRequest` and as the ext_authz `CheckRequest` Envoy
//! sends for it, with the other headers a browser sends.

use std::collections::HashMap;

use corsd::grpc::pb::CheckOriginRequest;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};

const HOST: &str = "api.example.com";
const PATH: &str = "/services/data/v60.0/query";

/// The headers Envoy passes on of a typical browser request, besides `origin`.
const BROWSER_HEADERS: [(&str, &str); 8] = [
    (":authority", HOST),
    (":method", "GET"),
    (":path", PATH),
    (":scheme", "https"),
    ("accept", "application/json"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36",
    ),
    ("x-forwarded-proto", "https"),
    ("x-request-id", "3c1f9a52-7b1e-4d0e-9a57-5d2f0e6f1c11"),
];

/// The request as corsd's own API carries it.
pub fn check_origin_request(origin: &str) -> CheckOriginRequest {
    CheckOriginRequest {
        origin: Some(origin.to_owned()),
        method: "GET".into(),
        scheme: "https".into(),
        authority: HOST.into(),
        path: PATH.into(),
        ..Default::default()
    }
}

/// The request as Envoy's ext_authz filter carries it: with the `Origin`
/// alone (what `CheckOrigin` carries too), or with all of a browser's headers.
pub fn authz_request(origin: &str, browser_headers: bool) -> CheckRequest {
    let mut headers: HashMap<String, String> = BROWSER_HEADERS
        .iter()
        .filter(|_| browser_headers)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    headers.insert("origin".into(), origin.into());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    headers,
                    host: HOST.into(),
                    path: PATH.into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
