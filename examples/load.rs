//! corsd's load harness. Measures, in one run and interleaved A/B/B/A against
//! a 10k-entry policy on a real `corsd serve` process:
//!
//! - throughput of `CheckOrigin` and of ext_authz `Check` against
//!   `grpc.health.v1.Health/Check` on the same server (the floor of a gRPC call),
//! - the server's CPU time per call (from `/proc/PID/stat`),
//! - latency p50/p99 at a fixed moderate rate, and the handlers' own time,
//! - a 100k-entry policy compiled and swapped in while calls run (its compile
//!   time and the p99 around the swap), and resident memory at 10k, 100k, 1M.
//!
//! Every answer is checked (gRPC status and decision). The client shares the
//! machine with the server, so it keeps its own work small and alike for
//! every kind of call: each request is encoded once, and of each answer only
//! the checked field is read. Every loop is bounded in time and count, and
//! all traffic stays on 127.0.0.1.
//!
//!     cargo build --profile dist && cargo run --profile dist --example load
//!     cargo run --profile dist --example load -- --smoke          # a few seconds
//!     cargo run --profile dist --example load -- null-authz --listen 127.0.0.1:50052
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a harness fails loudly"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use corsd::grpc::pb::Verdict;
use corsd::grpc::wire::{AuthzCall, CheckOriginCall, Encoded};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use hdrhistogram::Histogram;
use prost::Message;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

#[path = "../benches/support/requests.rs"]
mod requests;
#[path = "../benches/support/synthetic.rs"]
mod synthetic;
use requests::{authz_request, check_origin_request};
use synthetic::policy_text;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The corsd binary to run.
    #[arg(long, default_value = "target/dist/corsd")]
    corsd: PathBuf,
    /// Entries in the policy under load.
    #[arg(long, default_value_t = 10_000)]
    entries: usize,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 2.5)]
    phase_secs: f64,
    /// A/B/B/A rounds per comparison.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Calls in flight in the throughput phases.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls per second in the latency phases.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Skip the 1M-entry memory reading (it takes a few seconds to compile).
    #[arg(long)]
    no_million: bool,
    /// A few seconds in all: to check the harness still works.
    #[arg(long)]
    smoke: bool,
    /// Only the metrics comparison: CheckOrigin on a server counting into
    /// Prometheus metrics against one that is not, A/B/B/A.
    #[arg(long)]
    metrics_only: bool,
    /// Only the TLS comparison: CheckOrigin on a server serving mTLS against
    /// one serving plaintext, A/B/B/A, handshakes excluded.
    #[arg(long)]
    tls_only: bool,
    /// Only the shadow and entry-usage comparisons: CheckOrigin with a
    /// candidate policy against without, and with usage counting against
    /// `--entry-usage off`, A/B/B/A.
    #[arg(long)]
    shadow_usage_only: bool,
}

#[derive(Subcommand)]
enum Sub {
    /// Serve an ext_authz that decides nothing (always OK, no headers): the
    /// floor an ext_authz server cannot go below, for the Envoy comparison.
    NullAuthz {
        #[arg(long, default_value = "127.0.0.1:50052")]
        listen: std::net::SocketAddr,
        /// Also answer with the headers of an allowed request for this origin,
        /// fixed: the floor with Envoy's response work included.
        #[arg(long)]
        static_headers: Option<String>,
    },
}

/// One origin the calls cycle through: its requests, encoded once, and the
/// verdict it must get.
struct Case {
    origin: String,
    verdict: Verdict,
    check_origin: Encoded,
    authz: Encoded,
    /// The same with the other headers Envoy passes on from a browser.
    authz_browser: Encoded,
}

/// Everything the calls send, encoded once.
struct Workload {
    health: Encoded,
    cases: Vec<Case>,
}

impl Workload {
    fn new(entries: usize) -> Self {
        Workload {
            health: encoded(&HealthCheckRequest {
                service: "corsd.v1.CorsPolicy".into(),
            }),
            cases: cases(entries),
        }
    }

    /// Call number `n` of `kind`, checked.
    async fn call(&self, kind: Kind, channel: &Channel, n: usize) -> Result<(), String> {
        call(kind, channel, &self.health, &self.cases[n % self.cases.len()]).await
    }
}

/// The cases: exact hits, wildcard hits and misses.
fn cases(n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for k in 0..64 {
        let i = (k * 7919) % n.max(2);
        let (exact, wild) = (i & !1, i | 1);
        let mut origins = vec![(format!("https://app-{exact}.example.com"), Verdict::Allow)];
        if wild < n {
            origins.push((format!("https://x.t{wild}.example.net"), Verdict::Allow));
        }
        origins.push((format!("https://nobody-{k}.example.org"), Verdict::Deny));
        out.extend(origins.into_iter().map(|(origin, verdict)| Case {
            check_origin: encoded(&check_origin_request(&origin)),
            authz: encoded(&authz_request(&origin, false)),
            authz_browser: encoded(&authz_request(&origin, true)),
            origin,
            verdict,
        }));
    }
    out
}

fn encoded(message: &impl Message) -> Encoded {
    Bytes::from(message.encode_to_vec()).into()
}

/// What the client reads of each answer: the field it checks, nothing else
/// (prost skips the rest), so the client's share of the machine stays small
/// and alike for every kind of call.
mod answer {
    /// `grpc.health.v1.HealthCheckResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Health {
        #[prost(int32, tag = "1")]
        pub status: i32,
    }

    /// `corsd.v1.CheckOriginResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckOrigin {
        #[prost(int32, tag = "1")]
        pub verdict: i32,
    }

    /// `envoy.service.auth.v3.CheckResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Authz {
        #[prost(message, optional, tag = "1")]
        pub status: Option<RpcStatus>,
    }

    /// `google.rpc.Status`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RpcStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
    }
}

/// One unary call with a request encoded beforehand.
async fn unary<A: Message + Default + Send + 'static>(
    channel: &Channel,
    path: &'static str,
    request: &Encoded,
) -> Result<A, String> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| e.to_string())?;
    let codec = tonic_prost::ProstCodec::<Encoded, A>::default();
    grpc.unary(
        tonic::Request::new(request.clone()),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
    .map_err(|e| e.to_string())
}

/// A running `corsd serve`.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(binary: &Path, policy: &Path) -> Server {
        Server::start_with(binary, policy, &[])
    }

    fn start_with(binary: &Path, policy: &Path, flags: &[&str]) -> Server {
        let mut child = Command::new(binary)
            .args(["serve", "--policy", policy.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(flags)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (cargo build --profile dist first)",
                    binary.display()
                )
            });
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let started = Instant::now();
        let addr = loop {
            let found = log.lock().unwrap().iter().find_map(|l| {
                let at = l.find("addr=")? + 5;
                Some(l[at..].split_whitespace().next()?.to_owned())
            });
            if let Some(addr) = found {
                break addr;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "corsd did not start: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        Server { child, addr, log }
    }

    /// User + system CPU time of the server process so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    /// Resident memory of the server process, in MiB.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024.0
    }
    /// Waits for the log line of the swap to `version`; returns its
    /// `compile_ms` and `took_ms` (read, compile and swap).
    fn wait_swap(&self, version: &str, limit: Duration) -> (f64, f64) {
        let field = |line: &str, name: &str| -> Option<f64> {
            line.split(&format!("{name}="))
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        let started = Instant::now();
        loop {
            let took = self.log.lock().unwrap().iter().find_map(|l| {
                (l.contains("policy swapped in") && l.contains(version))
                    .then(|| Some((field(l, "compile_ms")?, field(l, "took_ms")?)))
                    .flatten()
            });
            if let Some(took) = took {
                return took;
            }
            assert!(
                started.elapsed() < limit,
                "no swap to {version}: {:?}",
                self.log.lock().unwrap().last()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Health,
    CheckOrigin,
    ExtAuthz,
    ExtAuthzBrowser,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Health => "Health/Check",
            Kind::CheckOrigin => "CheckOrigin",
            Kind::ExtAuthz => "ext_authz Check",
            Kind::ExtAuthzBrowser => "ext_authz, 9 hdr",
        }
    }
}

/// One call of `kind`, checked: `Err` says what was wrong with the answer.
async fn call(kind: Kind, channel: &Channel, health: &Encoded, case: &Case) -> Result<(), String> {
    match kind {
        Kind::Health => {
            let a: answer::Health = unary(channel, "/grpc.health.v1.Health/Check", health).await?;
            (a.status == ServingStatus::Serving as i32)
                .then_some(())
                .ok_or_else(|| format!("health {a:?}"))
        }
        Kind::CheckOrigin => {
            let a: answer::CheckOrigin = unary(channel, "/corsd.v1.CorsPolicy/CheckOrigin", &case.check_origin).await?;
            (a.verdict == case.verdict as i32)
                .then_some(())
                .ok_or_else(|| format!("{}: {a:?}", case.origin))
        }
        Kind::ExtAuthz | Kind::ExtAuthzBrowser => {
            let request = if kind == Kind::ExtAuthz {
                &case.authz
            } else {
                &case.authz_browser
            };
            let a: answer::Authz = unary(channel, "/envoy.service.auth.v3.Authorization/Check", request).await?;
            let code = a.status.map_or(-1, |s| s.code);
            let want = if case.verdict == Verdict::Allow {
                Code::Ok
            } else {
                Code::PermissionDenied
            };
            (code == want as i32)
                .then_some(())
                .ok_or_else(|| format!("{}: status {code}", case.origin))
        }
    }
}

struct Phase {
    calls: u64,
    secs: f64,
    cpu: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }
}

/// Closed loop: `concurrency` callers for `secs` (and at most 50M calls).
async fn throughput(
    server: &Server,
    channels: &[Channel],
    kind: Kind,
    secs: f64,
    concurrency: usize,
    work: &Arc<Workload>,
) -> Phase {
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = server.cpu();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let channel = channels[i % channels.len()].clone();
        let (calls, stop, work) = (calls.clone(), stop.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = i;
            while !stop.load(Ordering::Relaxed) && calls.load(Ordering::Relaxed) < 50_000_000 {
                if let Err(e) = work.call(kind, &channel, k).await {
                    panic!("{}: wrong answer: {e}", kind.name());
                }
                calls.fetch_add(1, Ordering::Relaxed);
                k += concurrency;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    Phase {
        calls: calls.load(Ordering::Relaxed),
        secs,
        cpu: server.cpu() - cpu_before,
    }
}

/// A/B/B/A rounds of call kind `a` against `b` on one server; returns (a
/// phases, b phases).
async fn interleaved(
    server: &Server,
    channels: &[Channel],
    a: Kind,
    b: Kind,
    args: &Args,
    work: &Arc<Workload>,
) -> (Vec<Phase>, Vec<Phase>) {
    let side = |kind: Kind| Side {
        name: kind.name(),
        server,
        channels,
        kind,
    };
    compare(args, work, &side(a), &side(b)).await
}

fn cpu_per_call(p: &Phase) -> f64 {
    p.cpu.as_secs_f64() * 1e6 / p.calls.max(1) as f64
}

fn total_rate(phases: &[Phase]) -> f64 {
    phases.iter().map(|p| p.calls as f64).sum::<f64>() / phases.iter().map(|p| p.secs).sum::<f64>()
}

fn total_cpu(phases: &[Phase]) -> f64 {
    phases.iter().map(|p| p.cpu.as_secs_f64()).sum::<f64>() * 1e6
        / phases.iter().map(|p| p.calls).sum::<u64>().max(1) as f64
}

/// One side of a comparison: a server, the channels to it, and the calls made.
struct Side<'a> {
    name: &'a str,
    server: &'a Server,
    channels: &'a [Channel],
    kind: Kind,
}

/// Throughput of `a` against `b`, A/B/B/A; returns (a, b) phases.
async fn compare(args: &Args, work: &Arc<Workload>, a: &Side<'_>, b: &Side<'_>) -> (Vec<Phase>, Vec<Phase>) {
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        for side in [a, b, b, a] {
            let phase = throughput(
                side.server,
                side.channels,
                side.kind,
                args.phase_secs,
                args.concurrency,
                work,
            )
            .await;
            println!(
                "  {:<16} {:>9.0} calls/s  {:>6.2} us CPU/call",
                side.name,
                phase.rate(),
                cpu_per_call(&phase)
            );
            if std::ptr::eq(side, a) {
                pa.push(phase)
            } else {
                pb.push(phase)
            }
        }
    }
    (pa, pb)
}

/// One server's side of a comparison of two configurations.
struct Config<'a> {
    name: &'a str,
    /// The server and its channels; `None`: start one with `flags`.
    running: Option<(&'a Server, &'a [Channel])>,
    flags: &'a [&'a str],
}

/// The side of `config`, on its running server or the one `started` for it.
fn side<'a>(config: &Config<'a>, started: &'a Option<(Server, Vec<Channel>)>) -> Side<'a> {
    let (server, channels) = config
        .running
        .or_else(|| started.as_ref().map(|(s, c)| (s, c.as_slice())))
        .unwrap();
    Side {
        name: config.name,
        server,
        channels,
        kind: Kind::CheckOrigin,
    }
}

/// CheckOrigin throughput of `on` against `off` (two servers on the same
/// policy), A/B/B/A; prints and returns on / off.
async fn config_cost(
    args: &Args,
    policy: &Path,
    work: &Arc<Workload>,
    off: Config<'_>,
    on: Config<'_>,
    goal: f64,
) -> f64 {
    let start = async |config: &Config<'_>| match config.running {
        Some(_) => None,
        None => {
            let server = Server::start_with(&args.corsd, policy, config.flags);
            let channels = connect(&server.addr, args.connections).await;
            Some((server, channels))
        }
    };
    let (off_started, on_started) = (start(&off).await, start(&on).await);
    println!(
        "\nthroughput, CheckOrigin {} against {}, two servers (A/B/B/A):",
        on.name, off.name
    );
    let (off_phases, on_phases) = compare(args, work, &side(&off, &off_started), &side(&on, &on_started)).await;
    let ratio = total_rate(&on_phases) / total_rate(&off_phases);
    println!(
        "  {} / {}: throughput {ratio:.3} (goal >= {goal}), server CPU per call {:.3}",
        on.name,
        off.name,
        total_cpu(&off_phases) / total_cpu(&on_phases)
    );
    ratio
}

/// CheckOrigin throughput on `server` (no metrics) against a second server
/// on the same policy counting into Prometheus metrics (`--metrics-listen`),
/// A/B/B/A; returns metrics-on / metrics-off.
async fn metrics_cost(args: &Args, policy: &Path, server: &Server, channels: &[Channel], work: &Arc<Workload>) -> f64 {
    let off = Config {
        name: "metrics off",
        running: Some((server, channels)),
        flags: &[],
    };
    let on = Config {
        name: "metrics on",
        running: None,
        flags: &["--metrics-listen", "127.0.0.1:0"],
    };
    config_cost(args, policy, work, off, on, 0.97).await
}

/// CheckOrigin with a candidate policy (the same entries and one more, so
/// nearly every change is `same`) against without; and with entry usage
/// counted against `--entry-usage off`. Returns (shadow, usage) ratios.
async fn shadow_and_usage_cost(
    args: &Args,
    policy: &Path,
    server: &Server,
    channels: &[Channel],
    work: &Arc<Workload>,
) -> (f64, f64) {
    let candidate = policy.with_file_name("candidate.toml");
    std::fs::write(&candidate, policy_text(args.entries + 1)).unwrap();
    let candidate = candidate.to_str().unwrap();
    let live = || Config {
        name: "without a candidate",
        running: Some((server, channels)),
        flags: &[],
    };
    let shadowed = Config {
        name: "with a candidate",
        running: None,
        flags: &["--shadow-policy", candidate],
    };
    let shadow = config_cost(args, policy, work, live(), shadowed, 0.95).await;
    let uncounted = Config {
        name: "usage off",
        running: None,
        flags: &["--entry-usage", "off"],
    };
    let counted = Config {
        name: "usage on",
        ..live()
    };
    let usage = config_cost(args, policy, work, uncounted, counted, 0.98).await;
    (shadow, usage)
}

/// CheckOrigin throughput on `server` (plaintext) against a second server on
/// the same policy serving mTLS (`--tls-cert`, `--tls-key`,
/// `--tls-client-ca`, certificates made here), A/B/B/A, over connections
/// opened before the phases (handshakes excluded); returns TLS / plaintext.
async fn tls_cost(args: &Args, policy: &Path, server: &Server, channels: &[Channel], work: &Arc<Workload>) -> f64 {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (server_cert, server_key) = leaf("corsd.internal");
    let (client_cert, client_key) = leaf("envoy.internal");
    let flags = [
        "--tls-cert".to_owned(),
        write("corsd.crt", &server_cert),
        "--tls-key".to_owned(),
        write("corsd.key", &server_key),
        "--tls-client-ca".to_owned(),
        write("ca.crt", &ca_pem),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tls_server = Server::start_with(&args.corsd, policy, &flags);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
        .identity(tonic::transport::Identity::from_pem(&client_cert, &client_key))
        .domain_name("corsd.internal");
    let mut tls_channels = Vec::new();
    for _ in 0..args.connections {
        tls_channels.push(
            Endpoint::from_shared(format!("https://{}", tls_server.addr))
                .unwrap()
                .tls_config(tls.clone())
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap(),
        );
    }
    println!("\nthroughput, CheckOrigin over mTLS against plaintext, two servers (A/B/B/A, handshakes excluded):");
    let (plain, over_tls) = compare(
        args,
        work,
        &Side {
            name: "plaintext",
            server,
            channels,
            kind: Kind::CheckOrigin,
        },
        &Side {
            name: "mTLS",
            server: &tls_server,
            channels: &tls_channels,
            kind: Kind::CheckOrigin,
        },
    )
    .await;
    let ratio = total_rate(&over_tls) / total_rate(&plain);
    println!(
        "  mTLS / plaintext: throughput {ratio:.3}, server CPU per call {:.3} (plaintext / mTLS)",
        total_cpu(&plain) / total_cpu(&over_tls)
    );
    ratio
}

/// Open loop at `rate` calls/s for `secs`: calls start on schedule whether or
/// not earlier ones have returned. Latency is from each call's start to its
/// answer (tokio's timer wakes to the millisecond, too coarse to measure from).
async fn fixed_rate(channels: &[Channel], kind: Kind, rate: u64, secs: f64, work: &Arc<Workload>) -> Histogram<u64> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
    let total = (rate as f64 * secs) as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = start + Duration::from_nanos(n * 1_000_000_000 / rate);
        tokio::time::sleep_until(due).await;
        let channel = channels[n as usize % channels.len()].clone();
        let (hist, work) = (hist.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            if let Err(e) = work.call(kind, &channel, n as usize).await {
                panic!("{}: wrong answer: {e}", kind.name());
            }
            let micros = sent.elapsed().as_micros() as u64;
            hist.lock().unwrap().record(micros.max(1)).unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(hist).unwrap().into_inner().unwrap()
}

/// The handlers' own time: from a request's bytes to its answer's bytes, in
/// this process, without transport, one call at a time.
fn handler_times(policy: &str, work: &Workload, calls: usize) -> (Histogram<u64>, Histogram<u64>) {
    let store = corsd::grpc::Store::for_test(policy).unwrap();
    let cors = corsd::grpc::cors_policy::CorsPolicyService::new(store.clone());
    let authz = corsd::grpc::ext_authz::AuthorizationService::new(store);
    let mut h_cors = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let mut h_authz = h_cors.clone();
    for n in 0..calls {
        let case = &work.cases[n % work.cases.len()];
        let started = Instant::now();
        let answer = CheckOriginCall::decode(case.check_origin.as_bytes()).map(|call| cors.answer(&call));
        h_cors.record(started.elapsed().as_nanos() as u64).unwrap();
        let answer = answer.unwrap().unwrap();
        let verdict = answer::CheckOrigin::decode(answer.as_bytes()).unwrap().verdict;
        assert_eq!(verdict, case.verdict as i32, "{}", case.origin);
        let started = Instant::now();
        let answer = AuthzCall::decode(case.authz_browser.as_bytes()).map(|call| authz.answer(&call));
        h_authz.record(started.elapsed().as_nanos() as u64).unwrap();
        assert!(
            answer::Authz::decode(answer.unwrap().unwrap().as_bytes())
                .unwrap()
                .status
                .is_some()
        );
    }
    (h_cors, h_authz)
}

async fn connect(addr: &str, n: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..n {
        channels.push(
            Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap(),
        );
    }
    channels
}

async fn null_authz(listen: std::net::SocketAddr, static_headers: Option<String>) {
    use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, HeaderAppendAction};
    use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
    /// Always OK; with `Some(origin)`, the headers and dynamic_metadata corsd
    /// adds to an allowed actual request, fixed, so Envoy does the same work.
    struct Null(Option<String>);
    #[tonic::async_trait]
    impl Authorization for Null {
        async fn check(
            &self,
            _: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            let mut response = CheckResponse::new();
            response.set_status(tonic::Status::ok(""));
            if let Some(origin) = &self.0 {
                let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
                let mut ok = OkHttpResponseBuilder::new();
                ok.add_response_header("access-control-allow-origin", origin.as_str(), overwrite, false)
                    .add_response_header("access-control-allow-credentials", "true", overwrite, false)
                    .add_response_header("access-control-expose-headers", "x-request-id", overwrite, false)
                    .add_response_header("vary", "Origin", Some(HeaderAppendAction::AppendIfExistsOrAdd), false);
                response.set_http_response(ok);
                // And the dynamic_metadata corsd sends, for Envoy to store.
                let string = |s: &str| envoy_types::pb::google::protobuf::Value {
                    kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                        s.to_owned(),
                    )),
                };
                response.dynamic_metadata = Some(envoy_types::pb::google::protobuf::Struct {
                    fields: [
                        ("corsd_matched", origin.as_str()),
                        ("corsd_policy_version", "0123456789abcdef"),
                        ("corsd_reason", "allowed"),
                        ("corsd_tenant", ""),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), string(v)))
                    .collect(),
                });
            }
            Ok(tonic::Response::new(response))
        }
    }
    // Served the way corsd serves: the same accepted-connection options and
    // HTTP/2 keepalive, so the comparison is of the decision alone.
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    println!("null ext_authz listening on {listen}");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(AuthorizationServer::new(Null(static_headers)))
        .serve_with_incoming(corsd::listen::accept(
            corsd::listen::Listener::Tcp(listener),
            None,
            usize::MAX,
        ))
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if let Some(Sub::NullAuthz { listen, static_headers }) = args.command {
        return null_authz(listen, static_headers).await;
    }
    if args.smoke {
        (args.phase_secs, args.rounds, args.rate, args.no_million) = (0.3, 1, 500, true);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let text = policy_text(args.entries);
    std::fs::write(&path, &text).unwrap();
    let server = Server::start(&args.corsd, &path);
    let channels = connect(&server.addr, args.connections).await;
    let work = Arc::new(Workload::new(args.entries));
    println!(
        "corsd {} at {}, {} entries, {} callers over {} connections, {} s phases",
        args.corsd.display(),
        server.addr,
        args.entries,
        args.concurrency,
        args.connections,
        args.phase_secs
    );

    if args.tls_only {
        tls_cost(&args, &path, &server, &channels, &work).await;
        return;
    }
    if args.shadow_usage_only {
        shadow_and_usage_cost(&args, &path, &server, &channels, &work).await;
        return;
    }
    let metrics_ratio = metrics_cost(&args, &path, &server, &channels, &work).await;
    if args.metrics_only {
        return;
    }

    println!("\nthroughput, CheckOrigin against Health/Check (A/B/B/A):");
    let (health, cors) = interleaved(&server, &channels, Kind::Health, Kind::CheckOrigin, &args, &work).await;
    println!("\nthroughput, ext_authz Check against Health/Check (A/B/B/A):");
    let (health2, authz) = interleaved(&server, &channels, Kind::Health, Kind::ExtAuthz, &args, &work).await;
    println!("\nthroughput, ext_authz Check with a browser's 9 headers against Health/Check (A/B/B/A):");
    let (health3, authz_browser) =
        interleaved(&server, &channels, Kind::Health, Kind::ExtAuthzBrowser, &args, &work).await;

    println!(
        "\nlatency at {} calls/s (open loop; client + transport + handler):",
        args.rate
    );
    let latency_secs = (args.phase_secs * 1.0).max(0.5);
    let mut latency = Vec::new();
    for kind in [Kind::Health, Kind::CheckOrigin, Kind::ExtAuthz] {
        let h = fixed_rate(&channels, kind, args.rate, latency_secs, &work).await;
        println!(
            "  {:<16} p50 {:>5} us  p99 {:>5} us  max {:>6} us",
            kind.name(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
        latency.push((kind, h));
    }

    let handler_calls = if args.smoke { 2_000 } else { 200_000 };
    let (h_cors, h_authz) = handler_times(&text, &work, handler_calls);
    println!("\nhandler time, in process, {handler_calls} calls each (ext_authz with a browser's 9 headers):");
    for (name, h) in [("CheckOrigin", &h_cors), ("ext_authz Check", &h_authz)] {
        println!(
            "  {name:<16} p50 {:>6.2} us  p99 {:>6.2} us",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3
        );
    }

    println!(
        "\nreload under load: a 100k-entry policy swapped in while CheckOrigin runs at {} calls/s:",
        args.rate
    );
    let rss_10k = server.rss_mib();
    let before = fixed_rate(&channels, Kind::CheckOrigin, args.rate, latency_secs, &work).await;
    let big_entries = if args.smoke { args.entries * 10 } else { 100_000 };
    let big = policy_text(big_entries);
    let big_version = corsd::core::Policy::compile("v", big.as_bytes())
        .unwrap()
        .policy
        .version()
        .to_owned();
    let writer = {
        let (path, big) = (path.clone(), big.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::fs::write(&path, big).unwrap();
        })
    };
    let during = fixed_rate(&channels, Kind::CheckOrigin, args.rate, latency_secs.max(1.5), &work).await;
    writer.await.unwrap();
    let (compile_ms, took_ms) = server.wait_swap(&big_version, Duration::from_secs(30));
    let after = fixed_rate(&channels, Kind::CheckOrigin, args.rate, latency_secs, &work).await;
    println!(
        "  {big_entries} entries: compiled in {compile_ms:.1} ms; read + compile + swap {took_ms:.1} ms (server log)"
    );
    for (name, h) in [("before", &before), ("during", &during), ("after", &after)] {
        println!(
            "  p99 {name:<6} {:>5} us  (p50 {:>4} us, max {:>6} us)",
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.5),
            h.max()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_100k = server.rss_mib();
    let rss_1m = if args.no_million {
        None
    } else {
        let million = policy_text(1_000_000);
        let version = corsd::core::Policy::compile("v", million.as_bytes())
            .unwrap()
            .policy
            .version()
            .to_owned();
        std::fs::write(&path, million).unwrap();
        let (compile_ms, took_ms) = server.wait_swap(&version, Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("  1M entries: compiled in {compile_ms:.0} ms; read + compile + swap {took_ms:.0} ms");
        Some(server.rss_mib())
    };
    println!(
        "\nresident memory of corsd: {rss_10k:.1} MiB at {} entries, {rss_100k:.1} MiB at {big_entries}{}",
        args.entries,
        rss_1m.map(|m| format!(", {m:.1} MiB at 1M")).unwrap_or_default()
    );

    println!("\nsummary:");
    println!("  CheckOrigin with metrics / without  {metrics_ratio:.3}  (goal >= 0.97)");
    println!(
        "  CheckOrigin / Health throughput      {:.3}  (goal >= 0.95)",
        total_rate(&cors) / total_rate(&health)
    );
    println!(
        "  ext_authz / Health throughput        {:.3}  (goal >= 0.95)",
        total_rate(&authz) / total_rate(&health2)
    );
    println!(
        "  ext_authz, 9 headers / Health        {:.3}  (a browser's request as Envoy passes it on)",
        total_rate(&authz_browser) / total_rate(&health3)
    );
    println!(
        "  server CPU per call: Health {:.2} us, CheckOrigin {:.2} us, ext_authz {:.2} us ({:.2} us with 9 headers)",
        total_cpu(&health),
        total_cpu(&cors),
        total_cpu(&authz),
        total_cpu(&authz_browser)
    );
    // What the throughput ratios would be on a server with the machine to
    // itself: the client's share of the two shared cores left out.
    println!(
        "  server CPU ratio (Health / call): CheckOrigin {:.3}, ext_authz {:.3}",
        total_cpu(&health) / total_cpu(&cors),
        total_cpu(&health2) / total_cpu(&authz)
    );
    println!(
        "  handler p99: CheckOrigin {:.2} us, ext_authz {:.2} us  (goal <= 20 us)",
        h_cors.value_at_quantile(0.99) as f64 / 1e3,
        h_authz.value_at_quantile(0.99) as f64 / 1e3
    );
    println!("  RSS at {big_entries} entries {rss_100k:.1} MiB  (goal at 100k: <= 64 MB)");
    let _ = latency;
}
