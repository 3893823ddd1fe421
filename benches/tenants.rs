//! Tenants: what choosing the tenant adds to a decision, and what one
//! tenant's change costs with 10,000 loaded.
//!
//! Run: `cargo bench --bench tenants`. Goals (DESIGN.md section 8,
//! docs/benchmarks.md): selection adds at most 15 ns; one tenant's change is
//! compiled and swapped in at most 5 ms, not growing with the tenant count.
//! Start-up with 10,000 tenants is measured by `benches/tenants-startup.sh`.
#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark's setup may panic")]

use std::hint::black_box;
use std::sync::Arc;

use corsd::core::{Policy, TenantSet, Verdict, decide, decide_for};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

#[path = "support/tenants.rs"]
mod support;
use support::{Held, compile, request, set_of, tenant_text};

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("selection");
    let alone = compile(7);
    let req = request("org-7.my.example.com");
    assert_eq!(decide(&alone, &req).verdict, Verdict::Allow);
    group.bench_function("decide_alone", |b| {
        b.iter(|| decide(black_box(&alone), black_box(&req)).verdict)
    });
    let single = TenantSet::single(Arc::new(Held(compile(7))));
    group.bench_function("single_mode", |b| {
        b.iter(|| decide_for(black_box(&single), "", black_box(&req)).decision.verdict)
    });
    for n in [10, 10_000] {
        let set = set_of(n);
        assert_eq!(decide_for(&set, "", &req).decision.verdict, Verdict::Allow);
        group.bench_with_input(BenchmarkId::new("by_host", n), &set, |b, set| {
            b.iter(|| decide_for(black_box(set), "", black_box(&req)).decision.verdict)
        });
        let shared = request("api.example.com");
        assert_eq!(decide_for(&set, "org-7", &shared).decision.verdict, Verdict::Allow);
        group.bench_with_input(BenchmarkId::new("by_name", n), &set, |b, set| {
            b.iter(|| {
                decide_for(black_box(set), black_box("org-7"), black_box(&shared))
                    .decision
                    .verdict
            })
        });
    }
    group.finish();
}

fn one_tenant_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("change");
    group.sample_size(20);
    for n in [100, 10_000] {
        let set = set_of(n);
        let text = tenant_text(n / 2);
        group.bench_with_input(BenchmarkId::new("compile_and_swap", n), &set, |b, set| {
            b.iter(|| {
                let policy = Policy::compile("t", black_box(text.as_bytes())).unwrap().policy;
                set.with(&format!("org-{}", n / 2), Some(Arc::new(Held(policy))))
            })
        });
        // The rarer change: its scope hosts change too, so the set's index
        // of names and hosts is copied.
        let moved = text.replace("api.example.com", "api2.example.com");
        group.bench_with_input(BenchmarkId::new("compile_and_swap_new_hosts", n), &set, |b, set| {
            b.iter(|| {
                let policy = Policy::compile("t", black_box(moved.as_bytes())).unwrap().policy;
                set.with(&format!("org-{}", n / 2), Some(Arc::new(Held(policy))))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, selection, one_tenant_change);
criterion_main!(benches);
