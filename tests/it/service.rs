//! The gRPC service on a real server at `127.0.0.1:0` with real clients:
//! the decision table through `CheckOrigin`, paging, health, reflection and
//! message limits.

use crate::common;

use std::collections::HashMap;

use common::serve::TestServer;
use corsd::grpc::Store;
use corsd::grpc::pb::{CheckOriginRequest, ListEntriesRequest, Reason, Verdict};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

pub fn check_request(r: &common::Resolved) -> CheckOriginRequest {
    CheckOriginRequest {
        origin: r.origin.clone(),
        method: r.method.clone(),
        access_control_request_method: r.request_method.clone(),
        access_control_request_headers: r.request_headers.clone(),
        scheme: r.scheme.clone(),
        authority: r.authority.clone(),
        path: r.path.clone(),
        access_control_request_private_network: r.private_network,
        tenant: String::new(),
    }
}

fn snake(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_origin_replays_the_decision_table() {
    let mut servers = HashMap::new();
    for (name, text) in common::policies() {
        servers.insert(name, TestServer::start(Store::for_test(&text).unwrap()).await);
    }
    let mut clients = HashMap::new();
    for (name, server) in &servers {
        clients.insert(name.clone(), server.client().await);
    }
    let mut answers = HashMap::new();
    for (case, r) in common::decision_cases() {
        let client = clients.get_mut(&r.policy).unwrap();
        let got = client.check_origin(check_request(&r)).await.unwrap().into_inner();
        answers.insert(case.name.clone(), got);
    }
    common::replay(|case, _, _| {
        let got = &answers[&case.name];
        Some(common::Outcome {
            verdict: snake(
                Verdict::try_from(got.verdict)
                    .unwrap()
                    .as_str_name()
                    .trim_start_matches("VERDICT_"),
            ),
            reason: snake(
                Reason::try_from(got.reason)
                    .unwrap()
                    .as_str_name()
                    .trim_start_matches("REASON_"),
            ),
            status: got.respond_status,
            preflight: got.preflight,
            matched: got.matched_pattern.clone(),
            headers: got
                .response_headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone(), h.append))
                .collect(),
            version: got.policy_version.clone(),
        })
    });
    for (_, server) in servers {
        server.stop().await;
    }
}

fn many_entries(n: usize) -> String {
    let mut text = String::from("label = \"paging\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "[[entries]]\norigin = \"https://app{i}.example.com\"\nnote = \"n{i}\"\n"
        ));
    }
    text.push_str("[[entries]]\norigin = \"https://*.example.com\"\nnote = \"wild\"\n");
    text.push_str("[[entries]]\norigin = \"https://*.app7.example.com\"\n");
    text
}

#[tokio::test]
async fn list_entries_pages_in_file_order() {
    let server = TestServer::start(Store::for_test(&many_entries(250)).unwrap()).await;
    let mut client = server.client().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_entries(ListEntriesRequest {
                page_size: 0,
                page_token: token.clone(),
                origin: String::new(),
                tenant: String::new(),
                unused_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert_eq!(page.total_size, 252);
        let info = page.policy.unwrap();
        assert_eq!(
            (info.label.as_str(), info.entry_count, info.last_reload_error.as_str()),
            ("paging", 252, "")
        );
        assert!(info.loaded_at_unix_ms > 0);
        seen.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3, "100 + 100 + 52");
    assert_eq!(seen.len(), 252);
    assert_eq!(seen[0].pattern, "https://app0.example.com");
    assert_eq!((seen[0].note.as_str(), seen[0].line), ("n0", 3));
    assert_eq!(seen[250].pattern, "https://*.example.com");
    assert!(seen.windows(2).all(|w| w[0].line < w[1].line), "file order");

    let big = client
        .list_entries(ListEntriesRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(big.get_ref().entries.len(), 252);
    let small = client
        .list_entries(ListEntriesRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(small.get_ref().entries.len(), 2);
    assert!(!small.get_ref().next_page_token.is_empty());

    // Filtered: every entry that allows the origin, in file order.
    let filtered = client
        .list_entries(ListEntriesRequest {
            origin: "https://x.app7.example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let patterns: Vec<&str> = filtered.entries.iter().map(|e| e.pattern.as_str()).collect();
    assert_eq!(patterns, ["https://*.example.com", "https://*.app7.example.com"]);
    assert_eq!(filtered.total_size, 2);
    let exact = client
        .list_entries(ListEntriesRequest {
            origin: "https://app7.example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let patterns: Vec<&str> = exact.entries.iter().map(|e| e.pattern.as_str()).collect();
    assert_eq!(patterns, ["https://app7.example.com", "https://*.example.com"]);
    let none = client
        .list_entries(ListEntriesRequest {
            origin: "https://evil.net".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((none.entries.len(), none.total_size), (0, 0));
    let bad = client
        .list_entries(ListEntriesRequest {
            origin: "not an origin".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);

    // A token from an older policy version: ABORTED; a made-up one: INVALID_ARGUMENT.
    let first = client
        .list_entries(ListEntriesRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    server.store.swap(
        corsd::core::Policy::compile("new", many_entries(30).as_bytes())
            .unwrap()
            .policy,
    );
    let stale = client
        .list_entries(ListEntriesRequest {
            page_token: first.into_inner().next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(stale.message(), "policy changed; list again");
    let garbage = client
        .list_entries(ListEntriesRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(garbage.unwrap_err().code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn health_reports_every_service() {
    let server = TestServer::start(Store::for_test("# empty\n").unwrap()).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "corsd.v1.CorsPolicy", "envoy.service.auth.v3.Authorization"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest { service: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start(Store::for_test("# empty\n").unwrap()).await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("corsd.v1.CorsPolicy".into())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "envoy.service.auth.v3.Authorization".into(),
            )),
        },
    ]);
    let mut responses = client.server_reflection_info(requests).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "corsd.v1.CorsPolicy",
        "grpc.health.v1.Health",
        "envoy.service.auth.v3.Authorization",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("no descriptor")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    // Envoy's service is described from its own proto, messages and imports
    // included, so `grpcurl describe envoy.service.auth.v3.Authorization` works.
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("no descriptor for envoy.service.auth.v3.Authorization")
    };
    let files: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost::Message::decode(b.as_slice()).unwrap())
        .collect();
    let authz = files
        .iter()
        .find(|f| f.name() == "envoy/service/auth/v3/external_auth.proto")
        .expect("external_auth.proto");
    assert_eq!(authz.service[0].name(), "Authorization");
    assert!(authz.message_type.iter().any(|m| m.name() == "CheckRequest"));
    // Each file it imports is served too, as a describing tool asks for them.
    assert!(!authz.dependency.is_empty());
    let requests: Vec<ServerReflectionRequest> = authz
        .dependency
        .iter()
        .map(|name| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileByFilename(name.clone())),
        })
        .collect();
    let mut imports = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    for name in &authz.dependency {
        let answer = imports.next().await.unwrap().unwrap().message_response;
        assert!(
            matches!(answer, Some(MessageResponse::FileDescriptorResponse(_))),
            "{name}: {answer:?}"
        );
    }

    // The v1alpha protocol, still used by older tools, answers too.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    let mut alpha = AlphaClient::new(server.channel().await);
    let requests = tokio_stream::iter([tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    }]);
    let mut responses = alpha.server_reflection_info(requests).await.unwrap().into_inner();
    assert!(responses.next().await.unwrap().is_ok());
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_without_harm() {
    let server = TestServer::start(Store::for_test("[[entries]]\norigin = \"https://a.example\"\n").unwrap()).await;
    let mut client = server.client().await;
    let huge = CheckOriginRequest {
        origin: Some("https://a.example".into()),
        method: "OPTIONS".into(),
        access_control_request_method: Some("PUT".into()),
        access_control_request_headers: vec!["x-a, ".repeat(40_000)],
        ..Default::default()
    };
    let refused = client.check_origin(huge).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let fine = crate::common::serve::get_request("https://a.example");
    let answer = client.check_origin(fine).await.unwrap().into_inner();
    assert_eq!(answer.verdict, Verdict::Allow as i32);
    // A hostile but legal-size header list is a decision, not an error.
    let hostile = CheckOriginRequest {
        origin: Some("https://a.example".into()),
        method: "OPTIONS".into(),
        access_control_request_method: Some("PUT".into()),
        access_control_request_headers: vec![",".repeat(60_000)],
        ..Default::default()
    };
    let answer = client.check_origin(hostile).await.unwrap().into_inner();
    assert_eq!(
        (answer.verdict, answer.reason),
        (Verdict::Deny as i32, Reason::HeadersNotAllowed as i32)
    );
    server.stop().await;
}
