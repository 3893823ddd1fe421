//! `decide()` over policies of 10, 10k and 1M entries, and compiling 100k.
//!
//! Run: `cargo bench --bench decide`. Goals (docs/benchmarks.md): a hit in at
//! most 60 ns, a miss in at most 40 ns, 1M entries within 1.2x of 10, and
//! compiling 100k entries in at most 100 ms.
#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark's setup may panic")]

use std::hint::black_box;
use std::time::Duration;

use corsd::core::{Policy, Request, Verdict, decide};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/synthetic.rs"]
mod synthetic;
use synthetic::policy_text;

fn request<'a>(
    origin: &'a str,
    method: &'a str,
    request_method: Option<&'a str>,
    headers: &'a [&'a str],
) -> Request<'a> {
    Request {
        origin: Some(origin),
        several_origins: false,
        method,
        request_method,
        request_headers: headers,
        request_private_network: false,
        scheme: "https",
        authority: "api.example.com",
        path: "/services/data/v60.0/query",
    }
}

fn decisions(c: &mut Criterion) {
    let hostile_line = "x-a, ".repeat((1 << 20) / 5);
    let hostile = [hostile_line.as_str()];
    let listed = ["content-type, X-Requested-With"];
    let mut group = c.benchmark_group("decide");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [10usize, 10_000, 1_000_000] {
        let policy = Policy::compile("bench", policy_text(n).as_bytes()).unwrap().policy;
        let exact = format!("https://app-{}.example.com", (n / 2) & !1);
        let wildcard = format!("https://x.y.t{}.example.net", (n / 2) | 1);
        let cases: [(&str, Request<'_>, Verdict); 6] = [
            ("exact_hit", request(&exact, "GET", None, &[]), Verdict::Allow),
            ("wildcard_hit", request(&wildcard, "GET", None, &[]), Verdict::Allow),
            (
                "miss",
                request("https://nobody.example.org", "GET", None, &[]),
                Verdict::Deny,
            ),
            // A miss that shares the listed names down to the last label.
            (
                "miss_listed_domain",
                request("https://nobody.example.com", "GET", None, &[]),
                Verdict::Deny,
            ),
            (
                "preflight_headers",
                request(&exact, "OPTIONS", Some("PUT"), &listed),
                Verdict::Allow,
            ),
            (
                "hostile_1mib_headers",
                request(&exact, "OPTIONS", Some("PUT"), &hostile),
                Verdict::Deny,
            ),
        ];
        for (name, req, want) in &cases {
            assert_eq!(decide(&policy, req).verdict, *want, "{name} at {n}");
            group.bench_with_input(BenchmarkId::new(*name, n), req, |b, req| {
                b.iter(|| black_box(decide(&policy, black_box(req))).verdict)
            });
        }
    }
    group.finish();
}

fn compiling(c: &mut Criterion) {
    let text = policy_text(100_000);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(100_000));
    // The compiled policy is freed outside the timing: corsd frees the old
    // policy after a swap, off the path of any request. `_and_free` times both.
    group.bench_function("100k_entries", |b| {
        b.iter_with_large_drop(|| Policy::compile("bench", black_box(text.as_bytes())).unwrap())
    });
    group.bench_function("100k_entries_and_free", |b| {
        b.iter(|| Policy::compile("bench", black_box(text.as_bytes())).unwrap())
    });
    // The floor: parsing the same TOML into a spanned tree, nothing else.
    group.bench_function("100k_entries_toml_parse_only", |b| {
        b.iter(|| toml::de::DeTable::parse(black_box(&text)).unwrap())
    });
    group.finish();
}

/// The pieces of a decision, to see where its time goes.
fn pieces(c: &mut Criterion) {
    use corsd::core::origin::{RequestOrigin, parse_request_origin};
    let policy = Policy::compile("bench", policy_text(10).as_bytes()).unwrap().policy;
    let mut group = c.benchmark_group("pieces");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let origin = "https://nobody.example.org";
    group.bench_function("parse_origin", |b| {
        b.iter(|| parse_request_origin(black_box(origin)).is_ok())
    });
    let Ok(RequestOrigin::Tuple(tuple)) = parse_request_origin(origin) else {
        unreachable!()
    };
    group.bench_function("allowlist_miss", |b| {
        b.iter(|| policy.allowlist().find(black_box(&tuple)).is_some())
    });
    // The walk down the label tree to a wildcard, among 5 and 5,000 siblings.
    for n in [10usize, 10_000] {
        let policy = Policy::compile("bench", policy_text(n).as_bytes()).unwrap().policy;
        let origin = format!("https://x.y.t{}.example.net", (n / 2) | 1);
        let Ok(RequestOrigin::Tuple(tuple)) = parse_request_origin(&origin) else {
            unreachable!()
        };
        assert!(policy.allowlist().find(&tuple).is_some());
        group.bench_function(BenchmarkId::new("allowlist_wildcard_hit", n), |b| {
            b.iter(|| policy.allowlist().find(black_box(&tuple)).is_some())
        });
    }
    let mut no_origin = request(origin, "GET", None, &[]);
    no_origin.origin = None;
    group.bench_function("decide_no_origin", |b| {
        b.iter(|| black_box(decide(&policy, black_box(&no_origin))).verdict)
    });
    group.finish();
}

criterion_group!(benches, decisions, compiling, pieces);
criterion_main!(benches);
