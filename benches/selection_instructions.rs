//! What choosing the tenant adds to a decision, counted in instructions by
//! `benches/tenants-instructions.sh`, which runs this under valgrind's
//! callgrind, one case per run, counting only inside [`measure`]. Instruction
//! counts do not move with the machine's load, unlike the nanoseconds of
//! `cargo bench --bench tenants`, which times the same cases.
//!
//! `cargo bench --bench selection_instructions -- CASE [N]` runs one case N
//! times (default 100,000); with no case it lists them.
#![allow(missing_docs, reason = "a benchmark binary")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark's setup may panic"
)]

use std::hint::black_box;
use std::sync::Arc;

use corsd::core::{TenantSet, Verdict, decide, decide_for};

#[path = "support/tenants.rs"]
mod support;
use support::{Held, compile, request, set_of};

/// Iterations of a case unless the command line says.
const ITERATIONS: usize = 100_000;

/// The loop whose instructions are counted.
#[inline(never)]
fn measure(iterations: usize, mut decide_once: impl FnMut() -> Verdict) {
    for _ in 0..iterations {
        black_box(decide_once());
    }
}

fn main() {
    let cases = [
        "decide_alone",
        "single_mode",
        "by_host/10",
        "by_name/10",
        "by_host/10000",
        "by_name/10000",
    ];
    // cargo bench passes `--bench`; the case and the count are the others.
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let Some(case) = args.next() else {
        println!("cases: {}", cases.join(" "));
        return;
    };
    let iterations = args
        .next()
        .map_or(ITERATIONS, |n| n.parse().expect("an iteration count"));
    let own = request("org-7.my.example.com");
    let shared = request("api.example.com");
    let check = |verdict| assert_eq!(verdict, Verdict::Allow, "{case}");
    match case.split_once('/') {
        None if case == "decide_alone" => {
            let alone = compile(7);
            check(decide(&alone, &own).verdict);
            measure(iterations, || decide(black_box(&alone), black_box(&own)).verdict);
        }
        None if case == "single_mode" => {
            let single = TenantSet::single(Arc::new(Held(compile(7))));
            check(decide_for(&single, "", &own).decision.verdict);
            measure(iterations, || {
                decide_for(black_box(&single), "", black_box(&own)).decision.verdict
            });
        }
        Some((how, n)) => {
            let set = set_of(n.parse().expect("a tenant count"));
            let (named, req) = match how {
                "by_host" => ("", &own),
                "by_name" => ("org-7", &shared),
                _ => panic!("unknown case {case}"),
            };
            check(decide_for(&set, named, req).decision.verdict);
            measure(iterations, || {
                decide_for(black_box(&set), black_box(named), black_box(req))
                    .decision
                    .verdict
            });
        }
        None => panic!("unknown case {case}; cases: {}", cases.join(" ")),
    }
}
