//! The zero-copy wire forms agree with the generated messages: answers are
//! the same bytes prost writes, requests read the same values prost reads, and
//! a served call whose strings are not UTF-8 is refused by name.

use std::collections::HashMap;

use corsd::core::{Policy, decide};
use corsd::grpc::Store;
use corsd::grpc::cors_policy::{encode_check_origin, encode_check_origin_from, to_proto};
use corsd::grpc::ext_authz::{encode_check_response, to_check_response};
use corsd::grpc::pb::CheckOriginRequest;
use corsd::grpc::wire::{AuthzCall, CheckOriginCall, Encoded};
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use proptest::prelude::*;
use prost::Message;
use prost::bytes::Bytes;
use tonic::Code;

use crate::common;
use crate::common::serve::TestServer;

#[test]
fn answers_are_the_bytes_prost_writes_for_every_case() {
    let policies: HashMap<String, Policy> = common::policies()
        .into_iter()
        .map(|(name, text)| (name, Policy::compile("case", text.as_bytes()).unwrap().policy))
        .collect();
    let compile = |text: &str| Policy::compile("case", text.as_bytes()).unwrap().policy;
    let snapshots: HashMap<String, _> = common::policies()
        .into_iter()
        .map(|(name, text)| {
            let single = Store::new(compile(&text)).load_full().unwrap();
            let acme = Store::with_tenants([("acme".to_owned(), compile(&text))])
                .tenant("acme")
                .unwrap();
            (name, (single, acme))
        })
        .collect();
    let mut failures = Vec::new();
    for (case, r) in common::decision_cases() {
        let decision = decide(&policies[&r.policy], &r.request());
        if encode_check_origin("", &decision).unwrap().as_bytes() != to_proto("", &decision).encode_to_vec()
            || encode_check_origin("acme", &decision).unwrap().as_bytes() != to_proto("acme", &decision).encode_to_vec()
        {
            failures.push(format!("{}: CheckOriginResponse differs", case.name));
        }
        // As served: with the parts prepared for the snapshot that decided
        // (and for one that did not, which must not use them).
        let (single, acme) = &snapshots[&r.policy];
        for (tenant, snapshot) in [("", single), ("acme", acme)] {
            let decision = decide(&snapshot.policy, &r.request());
            let want = to_proto(tenant, &decision).encode_to_vec();
            if encode_check_origin_from(tenant, &decision, Some(snapshot), None)
                .unwrap()
                .as_bytes()
                != want
            {
                failures.push(format!(
                    "{}: CheckOriginResponse from prepared parts differs",
                    case.name
                ));
            }
            if !snapshot.prepared.has_answer_parts() {
                failures.push(format!("{}: no parts were prepared for tenant {tenant:?}", case.name));
            }
            let other = to_proto("other", &decision).encode_to_vec();
            if encode_check_origin_from("other", &decision, Some(snapshot), None)
                .unwrap()
                .as_bytes()
                != other
            {
                failures.push(format!("{}: another tenant's answer differs", case.name));
            }
        }
        // The metadata is a map, which the generated message keeps in a
        // HashMap and encodes in any order: compare the messages read back.
        for with_metadata in [true, false] {
            let ours = envoy_types::pb::envoy::service::auth::v3::CheckResponse::decode(
                encode_check_response("acme", &decision, with_metadata)
                    .unwrap()
                    .as_bytes(),
            )
            .unwrap();
            if ours != to_check_response("acme", &decision, with_metadata) {
                failures.push(format!(
                    "{}: CheckResponse differs (metadata: {with_metadata})",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn header() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("origin".to_owned()),
            Just("access-control-request-method".to_owned()),
            "[a-z-]{1,20}"
        ],
        text(),
    )
}

proptest! {
    #[test]
    fn check_origin_calls_read_what_prost_reads(
        origin in prop::option::of(text()),
        method in text(),
        request_method in prop::option::of(text()),
        request_headers in prop::collection::vec(text(), 0..4),
        private_network in any::<bool>(),
        (scheme, authority, path) in (text(), text(), text()),
    ) {
        let tenant = scheme.clone();
        let request = CheckOriginRequest {
            origin,
            method,
            access_control_request_method: request_method,
            access_control_request_headers: request_headers,
            scheme,
            authority,
            path,
            access_control_request_private_network: private_network,
            tenant,
        };
        let call = CheckOriginCall::decode(Bytes::from(request.encode_to_vec())).unwrap();
        // As text: through one check of the whole message, or string by
        // string when a length takes two bytes (a string of 128 or more).
        let mut lines = corsd::grpc::wire::HeaderLines::default();
        let text = call.text(&mut lines).unwrap();
        prop_assert_eq!(text.origin, request.origin.as_deref());
        prop_assert_eq!(text.method, &request.method);
        prop_assert_eq!(text.request_method, request.access_control_request_method.as_deref());
        prop_assert_eq!(lines.as_slice(), &request.access_control_request_headers);
        prop_assert_eq!((text.scheme, text.authority, text.path, text.tenant), (&*request.scheme, &*request.authority, &*request.path, &*request.tenant));
        let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        prop_assert_eq!(call.origin().map(utf8), request.origin);
        prop_assert_eq!(utf8(call.method()), request.method);
        prop_assert_eq!(call.access_control_request_method().map(utf8), request.access_control_request_method);
        prop_assert_eq!(call.access_control_request_headers().map(utf8).collect::<Vec<_>>(), request.access_control_request_headers);
        prop_assert_eq!(utf8(call.scheme()), request.scheme);
        prop_assert_eq!(utf8(call.authority()), request.authority);
        prop_assert_eq!(utf8(call.path()), request.path);
        prop_assert_eq!(utf8(call.tenant()), request.tenant);
        prop_assert_eq!(call.access_control_request_private_network(), request.access_control_request_private_network);
    }

    /// Merging a second message into a call read from a first one reads
    /// what prost's merge gives: later strings win, header lines add up.
    #[test]
    fn check_origin_calls_merge_as_prost_merges(
        (first, second) in (prop::collection::vec(text(), 5), prop::collection::vec(text(), 5)),
    ) {
        let request = |s: &[String]| CheckOriginRequest {
            origin: Some(s[0].clone()),
            method: s[1].clone(),
            access_control_request_headers: vec![s[2].clone()],
            authority: s[3].clone(),
            tenant: s[4].clone(),
            ..Default::default()
        };
        let mut prost = request(&first);
        prost.merge(&request(&second).encode_to_vec()[..]).unwrap();
        let mut call = CheckOriginCall::decode(&request(&first).encode_to_vec()[..]).unwrap();
        call.merge(&request(&second).encode_to_vec()[..]).unwrap();
        let mut lines = corsd::grpc::wire::HeaderLines::default();
        let text = call.text(&mut lines).unwrap();
        prop_assert_eq!(text.origin, prost.origin.as_deref());
        prop_assert_eq!(text.method, &prost.method);
        prop_assert_eq!(lines.as_slice(), &prost.access_control_request_headers);
        prop_assert_eq!((text.authority, text.tenant), (&*prost.authority, &*prost.tenant));
        prop_assert_eq!(call.encoded_len(), prost.encoded_len());
    }

    /// Any bytes at all: where prost's generated message decodes, the
    /// one-pass reader reads the same fields; where prost refuses for any
    /// reason but UTF-8, so does the reader (which leaves UTF-8 to the
    /// handler).
    #[test]
    fn check_origin_calls_refuse_what_prost_refuses(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let ours = CheckOriginCall::decode(&bytes[..]);
        match CheckOriginRequest::decode(&bytes[..]) {
            Ok(request) => {
                let call = ours.unwrap();
                let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                prop_assert_eq!(call.origin().map(utf8), request.origin);
                prop_assert_eq!(utf8(call.method()), request.method);
                prop_assert_eq!(utf8(call.path()), request.path);
                prop_assert_eq!((utf8(call.scheme()), utf8(call.authority()), utf8(call.tenant())), (request.scheme, request.authority, request.tenant));
                prop_assert_eq!(call.access_control_request_headers().len(), request.access_control_request_headers.len());
                prop_assert_eq!(call.access_control_request_private_network(), request.access_control_request_private_network);
            }
            // prost refuses a string that is not UTF-8 where it reads it, even
            // one a later occurrence of the field replaces; the reader leaves
            // UTF-8 to the handler, which checks the strings that count.
            Err(error) if error.to_string().contains("UTF-8") => {}
            Err(error) => prop_assert!(ours.is_err(), "accepted what prost refuses ({}): {:?}", error, bytes),
        }
    }

    /// Envoy's full attribute context, with peers, extensions and metadata
    /// around the HTTP request, reads down to the same method, target and headers.
    #[test]
    fn authz_calls_read_what_prost_reads(
        headers in prop::collection::hash_map("[a-z-]{1,20}", text(), 0..12),
        raw in prop::collection::vec(header(), 0..6),
        (method, host, path, scheme) in (text(), text(), text(), text()),
        noise in text(),
    ) {
        let peer = Peer {
            address: Some(Address::default()),
            service: noise.clone(),
            labels: HashMap::from([(noise.clone(), noise.clone())]),
            principal: noise.clone(),
            certificate: noise.clone(),
        };
        let http = HttpRequest {
            id: noise.clone(),
            method,
            headers,
            header_map: (!raw.is_empty()).then(|| HeaderMap {
                headers: raw
                    .iter()
                    .map(|(key, value)| HeaderValue { key: key.clone(), value: String::new(), raw_value: value.clone().into_bytes() })
                    .collect(),
            }),
            path,
            host,
            scheme,
            query: noise.clone(),
            protocol: "HTTP/2".into(),
            body: noise.clone(),
            raw_body: noise.clone().into_bytes(),
            ..Default::default()
        };
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer.clone()),
                destination: Some(peer),
                request: Some(AttrRequest { time: None, http: Some(http) }),
                context_extensions: HashMap::from([(noise.clone(), noise)]),
                metadata_context: Some(Metadata::default()),
                ..Default::default()
            }),
        };
        let call = AuthzCall::decode(Bytes::from(request.encode_to_vec())).unwrap();
        let http = call.attributes.unwrap().request.unwrap().http.unwrap();
        let want = request.attributes.unwrap().request.unwrap().http.unwrap();
        let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        prop_assert_eq!(utf8(&http.method), want.method);
        prop_assert_eq!(utf8(&http.host), want.host);
        prop_assert_eq!(utf8(&http.path), want.path);
        prop_assert_eq!(utf8(&http.scheme), want.scheme);
        let read: HashMap<String, String> = http.headers.iter().map(|h| (utf8(&h.key), utf8(&h.value))).collect();
        prop_assert_eq!(read, want.headers);
        let read_raw: Vec<(String, String)> = http
            .header_map
            .map(|m| m.headers.iter().map(|h| (utf8(&h.key), utf8(&h.raw_value))).collect())
            .unwrap_or_default();
        prop_assert_eq!(read_raw, raw);
    }
}

#[tokio::test]
async fn strings_that_are_not_utf8_are_refused_by_name() {
    let server = TestServer::start(Store::for_test("[[entries]]\norigin = \"https://a.example\"\n").unwrap()).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    // CheckOriginRequest with `method` (field 2) = "GE\xFF".
    let request: Encoded = Bytes::from_static(b"\x12\x03GE\xFF").into();
    grpc.ready().await.unwrap();
    let refused = grpc
        .unary(
            tonic::Request::new(request),
            tonic::codegen::http::uri::PathAndQuery::from_static("/corsd.v1.CorsPolicy/CheckOrigin"),
            tonic_prost::ProstCodec::<Encoded, Encoded>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(refused.message(), "`method` is not UTF-8");
    server.stop().await;
}

#[test]
fn a_request_with_more_header_lines_than_the_core_reads_is_refused() {
    use corsd::grpc::cors_policy::CorsPolicyService;
    use corsd::grpc::pb::{CheckOriginResponse, Reason, Verdict};
    let store =
        Store::for_test("[cors]\nallow_headers = [\"content-type\"]\n[[entries]]\norigin = \"https://a.example\"\n")
            .unwrap();
    let cors = CorsPolicyService::new(store);
    let answer = |lines: usize| {
        let request = CheckOriginRequest {
            origin: Some("https://a.example".into()),
            method: "OPTIONS".into(),
            access_control_request_method: Some("PUT".into()),
            access_control_request_headers: vec!["content-type".into(); lines],
            ..Default::default()
        };
        let call = CheckOriginCall::decode(Bytes::from(request.encode_to_vec())).unwrap();
        let answer = cors.answer(&call).unwrap();
        let read = CheckOriginResponse::decode(answer.as_bytes()).unwrap();
        (read.verdict, read.reason)
    };
    assert_eq!(answer(2), (Verdict::Allow as i32, Reason::Allowed as i32));
    for lines in [corsd::core::decide::MAX_REQUEST_HEADER_LINES + 1, 1000] {
        assert_eq!(
            answer(lines),
            (Verdict::Deny as i32, Reason::HeadersNotAllowed as i32),
            "{lines} lines"
        );
    }
}

/// A policy with long values (an exposed header list far past 127 bytes,
/// wildcards), and requests drawn to reach every reason: the answers are the
/// bytes prost writes for the readable mapping, whatever the decision.
fn long_policy() -> Policy {
    let exposed: Vec<String> = (0..24).map(|i| format!("\"x-exposed-header-number-{i}\"")).collect();
    let text = format!(
        "[cors]\nallow_methods = [\"GET\", \"PUT\", \"PATCH\"]\nallow_headers = [\"content-type\", \"x-a\", \"x-b\"]\n\
         expose_headers = [{}]\nallow_private_network = true\nmax_age = 86400\n\
         [scope]\nhosts = [\"api.example.com\"]\npaths = [\"/api\"]\n\
         [[entries]]\norigin = \"https://{}.example.com\"\n[[entries]]\norigin = \"https://*.wild.example.net\"\n",
        exposed.join(", "),
        "a".repeat(60) + "." + &"b".repeat(60)
    );
    Policy::compile("long", text.as_bytes()).unwrap().policy
}

fn long_origin() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(Some(format!(
            "https://{}.{}.example.com",
            "a".repeat(60),
            "b".repeat(60)
        ))),
        "[a-z]{1,63}".prop_map(|l| Some(format!("https://{l}.wild.example.net"))),
        Just(Some("https://evil.example".to_owned())),
        Just(Some("null".to_owned())),
        Just(Some("https://api.example.com".to_owned())),
        Just(Some("not an origin".to_owned())),
        Just(None),
    ]
}

/// A candidate for [`long_policy`]'s tenant: other origins, other headers.
fn candidate_policy() -> corsd::core::Policy {
    let text = "[cors]\nexpose_headers = [\"x-request-id\"]\nallow_credentials = false\n\
                [[entries]]\norigin = \"https://evil.example\"\n\
                [[entries]]\norigin = \"https://*.wild.example.net\"\n";
    corsd::core::Policy::compile("candidate.toml", text.as_bytes())
        .unwrap()
        .policy
}

proptest! {
    #[test]
    fn answers_are_the_bytes_prost_writes_for_arbitrary_decisions(
        origin in long_origin(),
        method in prop_oneof![Just("GET"), Just("OPTIONS"), Just("PUT"), Just("DELETE")],
        request_method in prop::option::of(prop_oneof![Just("PATCH"), Just("DELETE"), Just(""), Just("PUT")]),
        request_headers in prop::collection::vec(prop_oneof![Just("content-type".to_owned()), Just("x-a, x-b".to_owned()), "[a-z-]{1,140}"], 0..80),
        private_network in any::<bool>(),
        authority in prop_oneof![Just("api.example.com"), Just("elsewhere.example.org")],
        path in prop_oneof![Just("/api/v1/things"), Just("/other")],
    ) {
        let policy = long_policy();
        let request = corsd::core::Request {
            origin: origin.as_deref(),
            several_origins: false,
            method,
            request_method,
            request_headers: &request_headers,
            request_private_network: private_network,
            scheme: "https",
            authority,
            path,
        };
        let decision = decide(&policy, &request);
        let candidate = candidate_policy();
        let shadow_decision = decide(&candidate, &request);
        let shadowed = corsd::core::shadow::Shadowed {
            change: corsd::core::shadow::compare(&decision, &shadow_decision),
            decision: shadow_decision,
        };
        for tenant in ["", "acme"] {
            let ours = encode_check_origin(tenant, &decision).unwrap();
            prop_assert_eq!(ours.as_bytes(), &to_proto(tenant, &decision).encode_to_vec()[..]);
            let ours = encode_check_origin_from(tenant, &decision, None, Some(&shadowed)).unwrap();
            let want = corsd::grpc::cors_policy::to_proto_shadowed(tenant, &decision, Some(&shadowed));
            prop_assert_eq!(ours.as_bytes(), &want.encode_to_vec()[..]);
            for with_metadata in [true, false] {
                let ours = envoy_types::pb::envoy::service::auth::v3::CheckResponse::decode(
                    corsd::grpc::ext_authz::encode_check_response_shadowed(tenant, &decision, with_metadata, Some(shadowed.change))
                        .unwrap()
                        .as_bytes(),
                )
                .unwrap();
                let want = corsd::grpc::ext_authz::to_check_response_shadowed(tenant, &decision, with_metadata, Some(shadowed.change));
                prop_assert_eq!(ours, want);
            }
            for with_metadata in [true, false] {
                let ours = envoy_types::pb::envoy::service::auth::v3::CheckResponse::decode(
                    encode_check_response(tenant, &decision, with_metadata).unwrap().as_bytes(),
                )
                .unwrap();
                prop_assert_eq!(ours, to_check_response(tenant, &decision, with_metadata));
            }
        }
    }
}

/// A 64 KiB call of single-byte header lines keeps only one line past the 64
/// the core reads (and is denied for its count), however many it holds.
#[test]
fn a_call_of_many_header_lines_keeps_what_the_core_reads() {
    let request = CheckOriginRequest {
        origin: Some("https://a.example".into()),
        method: "OPTIONS".into(),
        access_control_request_method: Some("PUT".into()),
        access_control_request_headers: vec!["x".to_owned(); 20_000],
        ..Default::default()
    };
    let call = CheckOriginCall::decode(Bytes::from(request.encode_to_vec())).unwrap();
    assert_eq!(
        call.access_control_request_headers().len(),
        corsd::core::decide::MAX_REQUEST_HEADER_LINES + 1
    );
    let mut lines = corsd::grpc::wire::HeaderLines::default();
    call.text(&mut lines).unwrap();
    assert_eq!(
        lines.as_slice().len(),
        corsd::core::decide::MAX_REQUEST_HEADER_LINES + 1
    );
    // A line past those kept that is not UTF-8 is still refused, as prost does.
    let mut bytes = request.encode_to_vec();
    let last = bytes.len() - 1;
    bytes[last] = 0xff;
    let call = CheckOriginCall::decode(Bytes::from(bytes)).unwrap();
    let refused = call.text(&mut corsd::grpc::wire::HeaderLines::default()).unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("access_control_request_headers"),
        "{}",
        refused.message()
    );
}
