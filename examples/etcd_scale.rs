//! A platform on etcd (DESIGN.md section 17), measured with real processes
//! on loopback: a three-member etcd (Debian's `etcd-server`), `--tenants`
//! tenants written into it, and `--replicas` `corsd serve --policy-etcd`.
//!
//! - start-up from etcd: exec to gRPC health SERVING, per replica;
//! - a write's latency: `AddEntry` through replica 0, until the call returns
//!   and until the new entry is answered by every replica (p50, p99);
//! - decisions while writes land: `CheckOrigin` throughput on replica 1,
//!   alternating phases with and without a write every 20 ms (A/B/B/A).
//!
//! Every loop is bounded in time and count.
//!
//!     cargo build --profile dist --bin corsd --example etcd_scale
//!     target/dist/examples/etcd_scale --tenants 10000
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a harness fails loudly"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use corsd::etcd::Etcd;
use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::grpc::pb::policy_admin_client::PolicyAdminClient;
use corsd::grpc::pb::{AddEntryRequest, CheckOriginRequest, Verdict};
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Parser)]
struct Args {
    /// The corsd binary to run.
    #[arg(long, default_value = "target/dist/corsd")]
    corsd: PathBuf,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Tenants in etcd.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// Entries per tenant.
    #[arg(long, default_value_t = 20)]
    entries: usize,
    /// corsd replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Writes timed.
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 3.0)]
    phase_secs: f64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Children killed when dropped.
struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn policy(tenant: usize, entries: usize) -> String {
    (0..entries)
        .map(|e| format!("[[entries]]\norigin = \"https://app-{e}.t{tenant}.example.com\"\n"))
        .collect()
}

#[path = "../benches/support/requests.rs"]
#[allow(dead_code, reason = "the harnesses share these requests, each uses some")]
mod requests;

fn check(tenant: &str, origin: &str) -> CheckOriginRequest {
    CheckOriginRequest {
        tenant: tenant.into(),
        ..requests::check_origin_request(origin)
    }
}

async fn allowed(channel: &Channel, tenant: &str, origin: &str) -> bool {
    CorsPolicyClient::new(channel.clone())
        .check_origin(check(tenant, origin))
        .await
        .is_ok_and(|a| a.into_inner().verdict() == Verdict::Allow)
}

/// User + system CPU time of process `pid` so far (USER_HZ is 100).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();

    // A three-member etcd on loopback.
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut etcd_children = Killed(Vec::new());
    for (i, (client, peer)) in ports.iter().enumerate() {
        let data = dir.path().join(format!("etcd{i}"));
        etcd_children.0.push(
            Command::new(&args.etcd)
                .arg(format!("--name=m{i}"))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e} (apt-get install etcd-server)", args.etcd.display())),
        );
    }
    let urls: Vec<String> = ports.iter().map(|(c, _)| format!("http://127.0.0.1:{c}")).collect();
    let etcd = Etcd::new(&urls, "/corsd/tenants/").unwrap();
    let started = Instant::now();
    while etcd.read_all().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "etcd did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The tenants, written 64 at a time.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..64 {
        let (etcd, next, tenants, entries) = (etcd.clone(), Arc::clone(&next), args.tenants, args.entries);
        writers.push(tokio::spawn(async move {
            loop {
                let t = next.fetch_add(1, Ordering::Relaxed) as usize;
                if t >= tenants {
                    return;
                }
                // A member may still be starting: try again, a bounded number of times.
                let text = policy(t, entries);
                let mut tries = 0;
                while etcd.put_if(&format!("t{t}"), text.as_bytes(), 0).await.is_err() {
                    tries += 1;
                    assert!(tries < 200, "etcd refused tenant t{t}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    println!(
        "etcd: 3 members, {} tenants of {} entries written in {:.1} s",
        args.tenants,
        args.entries,
        started.elapsed().as_secs_f64()
    );

    // The replicas; each one's start-up from etcd.
    let mut replicas = Killed(Vec::new());
    let mut channels = Vec::new();
    println!("\nstart-up from etcd ({} tenants), exec to SERVING:", args.tenants);
    for r in 0..args.replicas {
        let port = free_port();
        let started = Instant::now();
        replicas.0.push(
            Command::new(&args.corsd)
                .args([
                    "serve",
                    "--policy-etcd",
                    &urls.join(","),
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {}: {e} (cargo build --profile dist first)",
                        args.corsd.display()
                    )
                }),
        );
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        let channel = loop {
            if let Ok(channel) = endpoint.connect().await {
                let serving = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest { service: String::new() })
                    .await
                    .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving.into());
                if serving {
                    break channel;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(60), "replica {r} did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        println!("  replica {r}: {:.2} s", started.elapsed().as_secs_f64());
        channels.push(channel);
    }

    // Writes through replica 0, each until answered by every replica.
    let mut returned = Vec::new();
    let mut everywhere = Vec::new();
    let mut admin = PolicyAdminClient::new(channels[0].clone());
    for w in 0..args.writes {
        let tenant = format!("t{}", (w * 7919) % args.tenants);
        let origin = format!("https://written-{w}.example.org");
        let started = Instant::now();
        admin
            .add_entry(AddEntryRequest {
                tenant: tenant.clone(),
                origin: origin.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        returned.push(started.elapsed());
        for channel in &channels {
            while !allowed(channel, &tenant, &origin).await {
                assert!(started.elapsed() < Duration::from_secs(10), "write {w} never in force");
            }
        }
        everywhere.push(started.elapsed());
    }
    returned.sort();
    everywhere.sort();
    println!("\n{} writes (AddEntry through replica 0):", args.writes);
    for (name, times) in [("call returned", &returned), ("in force on every replica", &everywhere)] {
        println!(
            "  {name:<26} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
            percentile(times, 0.5).as_secs_f64() * 1e3,
            percentile(times, 0.99).as_secs_f64() * 1e3,
            times.last().unwrap().as_secs_f64() * 1e3
        );
    }

    // Decisions on replica 1 with and without writes landing, A/B/B/A.
    let phase = Duration::from_secs_f64(args.phase_secs);
    // Per phase kind: calls, seconds, replica 1's CPU seconds.
    let mut rates = [(0u64, 0f64, 0f64), (0u64, 0f64, 0f64)];
    let measured = replicas.0[1].id();
    for writing in [false, true, true, false] {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = writing.then(|| {
            let (stop, channel, tenants) = (Arc::clone(&stop), channels[0].clone(), args.tenants);
            tokio::spawn(async move {
                let mut admin = PolicyAdminClient::new(channel);
                let mut w = 0;
                while !stop.load(Ordering::Relaxed) && w < 10_000 {
                    let _ = admin
                        .add_entry(AddEntryRequest {
                            tenant: format!("t{}", w % 100 % tenants),
                            origin: format!("https://load-{w}.example.org"),
                            ..Default::default()
                        })
                        .await;
                    w += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        });
        let calls = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let cpu_before = cpu(measured);
        let mut callers = Vec::new();
        for c in 0..32 {
            let (calls, channel) = (Arc::clone(&calls), channels[1].clone());
            // Tenants the writes leave alone (they edit the first 100).
            let t = (args.tenants / 2 + c) % args.tenants;
            callers.push(tokio::spawn(async move {
                let mut client = CorsPolicyClient::new(channel);
                let request = check(&format!("t{t}"), &format!("https://app-0.t{t}.example.com"));
                while started.elapsed() < phase {
                    client.check_origin(request.clone()).await.unwrap();
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for caller in callers {
            caller.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(writer) = writer {
            writer.await.unwrap();
        }
        let slot = &mut rates[usize::from(writing)];
        slot.0 += calls.load(Ordering::Relaxed);
        slot.1 += started.elapsed().as_secs_f64();
        slot.2 += (cpu(measured) - cpu_before).as_secs_f64();
    }
    let (quiet, busy) = (rates[0].0 as f64 / rates[0].1, rates[1].0 as f64 / rates[1].1);
    let per_call = |r: (u64, f64, f64)| r.2 / r.0 as f64 * 1e6;
    println!(
        "\ndecisions on replica 1 (32 callers): {quiet:.0} calls/s without writes, {busy:.0} with a write every 20 ms: {:.3}",
        busy / quiet
    );
    println!(
        "replica 1's CPU per call: {:.2} us without writes, {:.2} us with: {:.3}",
        per_call(rates[0]),
        per_call(rates[1]),
        per_call(rates[0]) / per_call(rates[1])
    );
}
