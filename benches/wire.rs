//! One call's work inside corsd, from the request's bytes to the answer's
//! bytes: decode, handle, encode. `CheckOrigin` and ext_authz `Check` are set
//! against `grpc.health.v1.Health/Check`, the floor of a gRPC call, so the
//! difference is what corsd adds to a call (the HTTP/2 transport around it is
//! the same for all three and is measured by the load harness instead).
//!
//! `check_origin_prost_*` makes the same `CheckOrigin` call with prost's
//! generated messages instead of corsd's wire forms (`src/grpc/wire`): the
//! baseline that says whether the hand-written ones pay for themselves.
//!
//! Run: `cargo bench --bench wire`.
#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark's setup may panic")]

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corsd::grpc::Store;
use corsd::grpc::cors_policy::{CorsPolicyService, to_proto};
use corsd::grpc::decision::DecisionPath;
use corsd::grpc::ext_authz::AuthorizationService;
use corsd::grpc::pb::CheckOriginRequest;
use corsd::grpc::stubs::authorization_server::Authorization;
use corsd::grpc::stubs::cors_policy_server::CorsPolicy;
use corsd::observe::Api;
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_server::Health;

#[path = "support/requests.rs"]
mod requests;
#[path = "support/synthetic.rs"]
mod synthetic;
use requests::{authz_request, check_origin_request};
use synthetic::policy_text;

fn encoded(message: &impl Message) -> Bytes {
    message.encode_to_vec().into()
}

/// Decodes `bytes` as the server would, runs `handle`, encodes its answer into
/// `out` (cleared first, as tonic reuses its buffer); returns the answer's length.
fn call<Req: Message + Default, Resp: Message>(
    rt: &tokio::runtime::Runtime,
    bytes: &Bytes,
    out: &mut BytesMut,
    handle: impl AsyncFnOnce(tonic::Request<Req>) -> Result<tonic::Response<Resp>, tonic::Status>,
) -> usize {
    let request = Req::decode(bytes.clone()).unwrap();
    let answer = rt.block_on(handle(tonic::Request::new(request))).unwrap();
    out.clear();
    answer.get_ref().encode(out).unwrap();
    out.len()
}

fn calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let store = Store::for_test(&policy_text(10_000)).unwrap();
    let cors = CorsPolicyService::new(store.clone());
    let path = DecisionPath::new(store.clone());
    let authz = AuthorizationService::new(store);
    let reporter = tonic_health::server::HealthReporter::new();
    rt.block_on(reporter.set_service_status("", tonic_health::ServingStatus::Serving));
    let health = tonic_health::server::HealthService::from_health_reporter(reporter);
    let mut out = BytesMut::with_capacity(8 * 1024);

    let mut group = c.benchmark_group("call");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let health_request: Bytes = HealthCheckRequest { service: String::new() }.encode_to_vec().into();
    group.bench_function("health", |b| {
        b.iter(|| {
            call(&rt, black_box(&health_request), &mut out, async |r| {
                health.check(r).await
            })
        })
    });
    for (name, origin) in [
        ("exact", "https://app-5000.example.com"),
        ("wildcard", "https://x.t5001.example.net"),
        ("miss", "https://nobody.example.org"),
    ] {
        let request = encoded(&check_origin_request(origin));
        group.bench_function(format!("check_origin_{name}"), |b| {
            b.iter(|| call(&rt, black_box(&request), &mut out, async |r| cors.check_origin(r).await))
        });
        group.bench_function(format!("check_origin_prost_{name}"), |b| {
            b.iter(|| {
                call(&rt, black_box(&request), &mut out, async |r| {
                    Ok(tonic::Response::new(prost_check_origin(&path, r.get_ref())))
                })
            })
        });
        let request = encoded(&authz_request(origin, true));
        group.bench_function(format!("ext_authz_{name}"), |b| {
            b.iter(|| {
                call(&rt, black_box(&request), &mut out, async |r| {
                    Authorization::check(&authz, r).await
                })
            })
        });
    }
    group.finish();
}

/// `CheckOrigin` as a handler on prost's messages would answer it.
fn prost_check_origin(path: &DecisionPath, call: &CheckOriginRequest) -> corsd::grpc::pb::CheckOriginResponse {
    let lines: Vec<&str> = call.access_control_request_headers.iter().map(String::as_str).collect();
    let request = corsd::core::Request {
        origin: call.origin.as_deref(),
        several_origins: false,
        method: &call.method,
        request_method: call.access_control_request_method.as_deref(),
        request_headers: &lines,
        request_private_network: call.access_control_request_private_network,
        scheme: &call.scheme,
        authority: &call.authority,
        path: &call.path,
    };
    path.decide(Api::Corsd, &call.tenant, &request, |tenant, decision, _, _| {
        to_proto(tenant, decision)
    })
}

criterion_group!(benches, calls);
criterion_main!(benches);
