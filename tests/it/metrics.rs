//! Metrics (DESIGN.md section 9) with real peers: a real Prometheus server
//! scrapes a real corsd that decided a known set of requests, and PromQL over
//! Prometheus' HTTP API returns exactly those counts; `promtool check
//! metrics` accepts the exposition; `/readyz` flips to 503 at SIGTERM.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corsd::grpc::Store;
use corsd::grpc::decision::DecisionPath;
use corsd::grpc::pb::CheckOriginRequest;
use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::observe::metrics::Metrics;
use tokio::net::TcpListener;

use crate::common;
use crate::common::envoy::request_at;

fn prometheus() -> Option<PathBuf> {
    common::tool(
        "CORSD_PROMETHEUS",
        "/usr/bin/prometheus".into(),
        "apt-get install prometheus",
    )
}

fn promtool() -> Option<PathBuf> {
    common::tool(
        "CORSD_PROMTOOL",
        "/usr/bin/promtool".into(),
        "apt-get install prometheus",
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A corsd (gRPC and metrics listeners) in this process, on `policy`.
struct Served {
    grpc: std::net::SocketAddr,
    metrics_port: u16,
}

async fn serve(policy: &str) -> Served {
    serve_store(Store::for_test(policy).unwrap(), false).await
}

async fn serve_store(store: Arc<Store>, per_tenant: bool) -> Served {
    let metrics = Arc::new(Metrics::new(Arc::clone(&store), per_tenant).unwrap());
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_port = http.local_addr().unwrap().port();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    tokio::spawn(corsd::observe::http::serve(http, Arc::clone(&metrics), ready));
    let path = DecisionPath::with_metrics(store, Some(metrics.decisions()));
    tokio::spawn(corsd::grpc::serve_counted(
        corsd::listen::Listener::Tcp(grpc),
        path,
        corsd::grpc::ServeOptions::default(),
        tonic_health::server::health_reporter(),
        std::future::pending(),
    ));
    Served {
        grpc: grpc_addr,
        metrics_port,
    }
}

async fn get(port: u16, path: &str) -> common::envoy::HttpResponse {
    // HTTP/1.0: a plain body, never chunked.
    request_at(port, &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
        .await
        .unwrap()
}

const POLICY: &str = "[[entries]]\norigin = \"https://app.example.com\"\n";

async fn decide_known_set(grpc: std::net::SocketAddr) -> [(&'static str, u64); 3] {
    let mut client = CorsPolicyClient::connect(format!("http://{grpc}")).await.unwrap();
    let call = |origin: Option<&str>| CheckOriginRequest {
        origin: origin.map(str::to_owned),
        method: "GET".into(),
        ..Default::default()
    };
    let known = [("allowed", 7), ("origin_not_allowed", 5), ("no_origin", 3)];
    for (reason, n) in known {
        let origin = match reason {
            "allowed" => Some("https://app.example.com"),
            "origin_not_allowed" => Some("https://evil.example"),
            _ => None,
        };
        for _ in 0..n {
            client.check_origin(call(origin)).await.unwrap();
        }
    }
    known
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_exactly_the_decisions_made() {
    let Some(prometheus) = prometheus() else { return };
    let served = serve(POLICY).await;
    let known = decide_known_set(served.grpc).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n\
             - job_name: corsd\n  static_configs: [{{ targets: ['127.0.0.1:{}'] }}]\n",
            served.metrics_port
        ),
    )
    .unwrap();
    let web = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let query = |q: &str| {
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("/api/v1/query?query={encoded}")
    };
    let started = Instant::now();
    let mut pending: Vec<(&str, u64)> = known.to_vec();
    while !pending.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Prometheus did not report {pending:?}: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut still = Vec::new();
        for (reason, want) in pending {
            let q = format!("sum(corsd_decisions_total{{api=\"corsd\",reason=\"{reason}\"}})");
            let got = match request_at(web, &format!("GET {} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", query(&q))).await {
                Ok(r) if r.status == 200 => serde_json::from_str::<serde_json::Value>(&r.body).ok(),
                _ => None,
            };
            let value = got
                .as_ref()
                .and_then(|v| v["data"]["result"][0]["value"][1].as_str())
                .and_then(|v| v.parse::<u64>().ok());
            match value {
                Some(v) if v == want => {}
                Some(v) => {
                    assert!(v < want, "{reason}: Prometheus says {v}, only {want} were decided");
                    still.push((reason, want));
                }
                None => still.push((reason, want)),
            }
        }
        pending = still;
    }
    // Every other reason was never decided.
    let q = "sum(corsd_decisions_total{api=\"corsd\",reason!~\"allowed|origin_not_allowed|no_origin\"}) + sum(corsd_decisions_total{api=\"ext_authz\"})";
    let r = get(web, &query(q)).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "0", "{}", r.body);
    let q = "corsd_decision_duration_seconds_count{api=\"corsd\"}";
    let r = get(web, &query(q)).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "15", "{}", r.body);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_exposition() {
    let Some(promtool) = promtool() else { return };
    let served = serve(POLICY).await;
    decide_known_set(served.grpc).await;
    let r = get(served.metrics_port, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.one("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4"))
    );
    for name in [
        "corsd_decisions_total{api=\"corsd\",reason=\"allowed\",verdict=\"allow\"} 7",
        "corsd_decision_duration_seconds_bucket",
        "corsd_policy_reloads_total{result=\"ok\"} 0",
        "corsd_tenants 1",
        "corsd_policy_entries 1",
        "corsd_tenants_stale 0",
        "corsd_policy_last_reload_timestamp_seconds",
        "corsd_build_info{version=\"",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(r.body.contains(name), "no {name} in:\n{}", r.body);
    }
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check.stdin.take().unwrap().write_all(r.body.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(served.metrics_port, "/healthz").await.status, 200);
    assert_eq!(get(served.metrics_port, "/readyz").await.status, 200);
    assert_eq!(get(served.metrics_port, "/nothing").await.status, 404);
}

/// `corsd serve --metrics-listen`: `/readyz` answers 200 while serving and
/// 503 from the moment SIGTERM arrives (during the drain), `/healthz` 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.toml", POLICY);
    let (port, grpc) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["serve", "--policy", &policy, "--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Ok(r) = request_at(port, "GET /readyz HTTP/1.0\r\n\r\n").await
            && r.status == 200
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Keep a health watch open, so shutdown waits on a call in flight and
    // the metrics listener is still there to ask.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let mut saw_503 = false;
    while started.elapsed() < Duration::from_secs(5) {
        match request_at(port, "GET /readyz HTTP/1.0\r\n\r\n").await {
            Ok(r) if r.status == 503 => {
                saw_503 = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => break,
        }
    }
    assert!(saw_503, "/readyz never said 503 after SIGTERM");
    assert_eq!(
        request_at(port, "GET /healthz HTTP/1.0\r\n\r\n").await.unwrap().status,
        200
    );
    drop(watch);
    drop(health);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A flood of denials with hostile Origins through `corsd serve
/// --log-denials`: at most the rate of lines in any second, each valid JSON
/// that parses back to the Origin sent (a 50,000-byte one to its first
/// `MAX_ORIGIN` bytes and `...`), and logged plus dropped equals the
/// denials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_denial_log_is_bounded_and_unforgeable() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.toml", POLICY);
    let grpc = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["serve", "--policy", &policy, "--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--log-denials", "--log-denials-rate", "20", "--log-format", "text"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let channel = crate::common::channel_when_up(format!("127.0.0.1:{grpc}")).await;
    let mut client = CorsPolicyClient::new(channel);
    let long = format!("https://{}.example", "a".repeat(50_000));
    let long_logged = format!("{}...", &long[..corsd::observe::denials::MAX_ORIGIN]);
    let hostile = [
        long.as_str(),
        "https://evil.example\n{\"target\":\"corsd::denial\",\"reason\":\"allowed\"}",
        "https://\"quoted\".example",
        "https://evil.example\\",
        "https://\u{202e}evil.example",
        "https://evil.example\r\nX-Injected: 1",
        "null",
    ];
    let denials = 600;
    for n in 0..denials {
        let origin = hostile[n % hostile.len()];
        let answer = client
            .check_origin(crate::common::serve::get_request(origin))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.verdict, corsd::grpc::pb::Verdict::Deny as i32);
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let lines = reader.join().unwrap();
    let (mut logged, mut dropped) = (0u64, 0u64);
    let mut per_second: std::collections::HashMap<String, u64> = Default::default();
    for line in lines.iter().filter(|l| l.contains("corsd::denial")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert_eq!(v["target"], "corsd::denial");
        if let Some(n) = v["dropped"].as_u64() {
            dropped += n;
            continue;
        }
        logged += 1;
        let origin = v["origin"].as_str().unwrap();
        assert!(
            hostile.contains(&origin) && origin != long || origin == long_logged,
            "the Origin parses back to itself, capped: {}",
            &origin[..origin.len().min(400)]
        );
        assert!(
            matches!(v["reason"].as_str(), Some("origin_malformed" | "origin_null")),
            "{line}"
        );
        let second = v["time"].as_str().unwrap()[..19].to_owned();
        *per_second.entry(second).or_default() += 1;
    }
    assert_eq!(logged + dropped, denials as u64, "logged {logged} + dropped {dropped}");
    assert!(logged >= 20, "logged {logged}");
    // The limiter's second starts with corsd, not on the clock's: a clock
    // second may hold the end of one window and the start of the next.
    assert!(per_second.values().all(|&n| n <= 40), "{per_second:?}");
}

/// The shipped Envoy config prints corsd's `dynamic_metadata` in its access
/// log. With `--ext-authz-metadata denials` (the default) a denied request's
/// line names the reason and policy version and an allowed one's names
/// nothing; with `all` both do, the allowed one its matched entry too; with
/// `off` neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_access_log_carries_corsd_reason() {
    use crate::common::envoy::{Envoy, envoy_binary, start_upstream};
    use corsd::grpc::ext_authz::ExtAuthzMetadata;
    let Some(binary) = envoy_binary() else { return };
    for mode in [ExtAuthzMetadata::Denials, ExtAuthzMetadata::All, ExtAuthzMetadata::Off] {
        let store = Store::for_test(POLICY).unwrap();
        let version = store.load_full().unwrap().policy.version().to_owned();
        let options = corsd::grpc::ServeOptions {
            ext_authz_metadata: mode,
            ..Default::default()
        };
        let corsd = common::serve::serve_with_options(store, options).await;
        let upstream = start_upstream().await;
        let envoy = Envoy::start(&binary, corsd, upstream).await;
        let get = |origin: &str| {
            format!("GET /x HTTP/1.1\r\nHost: api.example.com\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n")
        };
        assert_eq!(envoy.send(&get("https://app.example.com")).await.status, 200);
        assert_eq!(envoy.send(&get("https://evil.example")).await.status, 403);
        let started = Instant::now();
        let log = loop {
            let log = envoy.access_log();
            if log.lines().count() >= 2 {
                break log;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "access log: {log:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let lines: Vec<&str> = log.lines().collect();
        let (allowed, denied) = (lines[0], lines[1]);
        assert!(allowed.contains(" 200 ") && denied.contains(" 403 "), "{mode:?}: {log}");
        let allowed_carries = mode == ExtAuthzMetadata::All;
        let denied_carries = mode != ExtAuthzMetadata::Off;
        assert_eq!(
            allowed.contains("corsd_reason=allowed"),
            allowed_carries,
            "{mode:?}: {allowed}"
        );
        assert_eq!(
            allowed.contains("corsd_matched=\"https://app.example.com\""),
            allowed_carries,
            "{mode:?}: {allowed}"
        );
        assert_eq!(
            denied.contains("corsd_reason=origin_not_allowed"),
            denied_carries,
            "{mode:?}: {denied}"
        );
        assert_eq!(
            denied.contains(&format!("corsd_policy_version={version}")),
            denied_carries,
            "{mode:?}: {denied}"
        );
        if !denied_carries {
            assert!(denied.contains("corsd_reason=-"), "{mode:?}: {denied}");
        }
        drop(envoy);
    }
}

/// `--metrics-per-tenant`: decisions carry the deciding tenant (`""` when no
/// tenant's policy decided), and a tenant's count survives its policy's swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_metrics_label_the_deciding_tenant() {
    let policy = |origin: &str| {
        corsd::core::Policy::compile(
            "t",
            format!("[scope]\nhosts = [\"api.example.com\"]\n[[entries]]\norigin = \"{origin}\"\n").as_bytes(),
        )
        .unwrap()
        .policy
    };
    let store = Store::with_tenants([
        ("acme".to_owned(), policy("https://acme.example")),
        ("globex".to_owned(), policy("https://globex.example")),
    ]);
    let served = serve_store(Arc::clone(&store), true).await;
    let mut client = CorsPolicyClient::connect(format!("http://{}", served.grpc))
        .await
        .unwrap();
    let call = |tenant: &str, origin: &str| CheckOriginRequest {
        origin: Some(origin.to_owned()),
        method: "GET".into(),
        authority: "api.example.com".into(),
        tenant: tenant.to_owned(),
        ..Default::default()
    };
    for _ in 0..3 {
        client.check_origin(call("acme", "https://acme.example")).await.unwrap();
    }
    store.swap_tenant("acme", Some(policy("https://acme.example")));
    client.check_origin(call("acme", "https://acme.example")).await.unwrap();
    client
        .check_origin(call("globex", "https://acme.example"))
        .await
        .unwrap();
    client.check_origin(call("", "https://acme.example")).await.unwrap();
    let body = get(served.metrics_port, "/metrics").await.body;
    for line in [
        "corsd_decisions_total{api=\"corsd\",reason=\"allowed\",tenant=\"acme\",verdict=\"allow\"} 4",
        "corsd_decisions_total{api=\"corsd\",reason=\"origin_not_allowed\",tenant=\"globex\",verdict=\"deny\"} 1",
        "corsd_decisions_total{api=\"corsd\",reason=\"tenant_ambiguous\",tenant=\"\",verdict=\"deny\"} 1",
    ] {
        assert!(body.contains(line), "no {line} in:\n{body}");
    }
    assert!(body.contains("corsd_tenants 2"), "{body}");

    // A removed tenant's series go with it; added again, it counts on.
    let globex =
        "corsd_decisions_total{api=\"corsd\",reason=\"origin_not_allowed\",tenant=\"globex\",verdict=\"deny\"}";
    store.swap_tenant("globex", None);
    let body = get(served.metrics_port, "/metrics").await.body;
    assert!(!body.contains("tenant=\"globex\""), "{body}");
    assert!(body.contains("corsd_tenants 1"), "{body}");
    assert!(body.contains("tenant=\"acme\""), "{body}");
    store.swap_tenant("globex", Some(policy("https://globex.example")));
    client
        .check_origin(call("globex", "https://acme.example"))
        .await
        .unwrap();
    let body = get(served.metrics_port, "/metrics").await.body;
    assert!(body.contains(&format!("{globex} 2")), "{body}");
}

/// 1,500 clients that open the metrics port and never finish a request
/// header: at most 64 are kept, the rest closed at once, those kept closed
/// once the header timeout passes; decisions on the gRPC port flow all the
/// while, and a scrape works after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_on_the_metrics_port_are_bounded_and_timed_out() {
    rlimit::increase_nofile_limit(8192).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.toml", "[[entries]]\norigin = \"https://a.example\"\n");
    let metrics_port = free_port();
    let corsd = common::process::Corsd::start(
        std::path::Path::new(&policy),
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
        dir.path(),
    );
    let started = std::time::Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1500 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
                .await
                .unwrap(),
        );
    }
    // Decisions flow while the metrics port is flooded.
    let mut client = CorsPolicyClient::new(corsd.channel().await);
    for _ in 0..200 {
        let answer = client
            .check_origin(common::serve::get_request("https://a.example"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.reason, corsd::grpc::pb::Reason::Allowed as i32);
    }
    // The ones over the bound are closed at once...
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = |idle: &[tokio::net::TcpStream]| {
        idle.iter()
            .filter(|s| {
                let mut byte = [0u8; 1];
                !matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    };
    let early = closed(&idle);
    assert!(
        early < 1500,
        "the kept connections were closed before the header timeout"
    );
    assert!(
        early >= 1500 - corsd::observe::http::MAX_CONNECTIONS,
        "only {early} of 1,500 idle connections were closed at once"
    );
    // ...the others once the header timeout has passed.
    let limit = corsd::observe::http::HEADER_TIMEOUT + Duration::from_secs(3);
    while closed(&idle) < 1500 {
        assert!(
            started.elapsed() < limit,
            "idle metrics connections still open after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);
    let scraped = get(metrics_port, "/metrics").await;
    assert_eq!(scraped.status, 200);
}
