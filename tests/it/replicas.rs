//! Three `corsd serve` replicas on one shared policy file behind a real
//! Envoy on the shipped `deploy/envoy/replicas.yaml`, with allowed
//! cross-origin requests sent continuously (DESIGN.md section 11): a rolling
//! restart and a SIGKILL lose no request, and an edit of the policy is in
//! force on all three within 1 s. Loopback only; every loop is bounded.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;

use crate::common::envoy::{Envoy, envoy_binary, free_port, request_at, start_upstream};

const BIN: &str = env!("CARGO_BIN_EXE_corsd");
const ORIGIN: &str = "https://app.example.com";

fn start(policy: &Path, port: u16) -> Child {
    Command::new(BIN)
        .args(["serve", "--policy", policy.to_str().unwrap()])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--drain-delay",
            "1500ms",
            "--workers",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn client(port: u16) -> CorsPolicyClient<tonic::transport::Channel> {
    CorsPolicyClient::new(crate::common::channel_when_up(format!("127.0.0.1:{port}")).await)
}

async fn allows(port: u16, origin: &str) -> bool {
    let answer = client(port)
        .await
        .check_origin(crate::common::serve::get_request(origin))
        .await
        .unwrap()
        .into_inner();
    answer.reason == corsd::grpc::pb::Reason::Allowed as i32
}

fn signal(child: &Child, name: &str) {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
}

/// Waits until Envoy's health checks see `n` healthy corsd hosts.
async fn healthy_hosts(envoy: &Envoy, n: usize) {
    let started = Instant::now();
    loop {
        let r = request_at(
            envoy.admin_port,
            "GET /clusters HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let healthy = r
            .body
            .lines()
            .filter(|l| l.starts_with("corsd::") && l.contains("::health_flags::healthy"))
            .count();
        if healthy >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{healthy} of {n} corsd hosts healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_lose_no_request_through_restarts_and_a_crash() {
    let Some(binary) = envoy_binary() else { return };
    let _alone = crate::common::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, format!("[[entries]]\norigin = \"{ORIGIN}\"\n")).unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut replicas: Vec<Child> = ports.iter().map(|&p| start(&policy, p)).collect();
    for &port in &ports {
        client(port).await;
    }
    let upstream = start_upstream().await;
    let envoy = Arc::new(
        Envoy::start_ports(
            &binary,
            "replicas.yaml",
            &[
                (50051, ports[0]),
                (50052, ports[1]),
                (50053, ports[2]),
                (9000, upstream.port()),
            ],
        )
        .await,
    );
    healthy_hosts(&envoy, 3).await;

    // Load: allowed cross-origin GETs, continuously, bounded in count.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (envoy, stop, sent, failed) = (envoy.clone(), stop.clone(), sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let head =
                format!("GET /data HTTP/1.1\r\nHost: api.example.com\r\nOrigin: {ORIGIN}\r\nConnection: close\r\n\r\n");
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 200_000 {
                let r = envoy.send(&head).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 || r.one("access-control-allow-origin") != Some(ORIGIN) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if failures.len() < 5 {
                        failures.push(format!("{} {:?}", r.status, r.body));
                    }
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // (a) A rolling restart: SIGTERM each replica in turn, start it again.
    for i in 0..3 {
        signal(&replicas[i], "TERM");
        let status = tokio::task::block_in_place(|| replicas[i].wait()).unwrap();
        assert!(status.success(), "replica {i}: {status}");
        replicas[i] = start(&policy, ports[i]);
        client(ports[i]).await;
        healthy_hosts(&envoy, 3).await;
    }
    let after_rolling = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));

    // (b) SIGKILL of one replica, then it comes back.
    signal(&replicas[1], "KILL");
    let _ = tokio::task::block_in_place(|| replicas[1].wait());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    replicas[1] = start(&policy, ports[1]);
    client(ports[1]).await;
    healthy_hosts(&envoy, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let mut examples = Vec::new();
    for task in load {
        examples.extend(task.await.unwrap());
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "{sent} requests through Envoy ({} during the rolling restart), {failed} failed",
        after_rolling.0
    );
    assert!(sent > 100, "only {sent} requests sent");
    assert_eq!(after_rolling.1, 0, "failed during the rolling restart: {examples:?}");
    assert_eq!(failed, 0, "failed after a SIGKILL: {examples:?}");

    // (c) An edit of the shared policy is in force on all three within 1 s.
    let added = "https://new.example.com";
    let tmp = dir.path().join(".policy.toml.tmp");
    std::fs::write(
        &tmp,
        format!("[[entries]]\norigin = \"{ORIGIN}\"\n\n[[entries]]\norigin = \"{added}\"\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    let edited = Instant::now();
    for &port in &ports {
        while !allows(port, added).await {
            assert!(
                edited.elapsed() < Duration::from_secs(1),
                "replica {port} not on the new policy within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("edit in force on all three after {:?}", edited.elapsed());

    for replica in &mut replicas {
        let _ = replica.kill();
        let _ = replica.wait();
    }
}
