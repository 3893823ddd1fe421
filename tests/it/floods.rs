//! Floods against a real `corsd serve` process (DESIGN.md section 10): an
//! HTTP/2 rapid-reset burst, thousands of idle connections and 1 MiB header
//! blocks each leave a concurrent CheckOrigin client answered without an
//! error, and the server's memory bounded. `--max-connections` closes the
//! connection past the limit and admits one again once a place is free.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corsd::grpc::pb::Reason;
use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::common::process::Corsd;
use crate::common::{self, serve::get_request};

fn start(dir: &Path, args: &[&str]) -> Corsd {
    let policy = common::write_file(dir, "p.toml", "[[entries]]\norigin = \"https://a.example\"\n");
    Corsd::start(Path::new(&policy), args, dir)
}

async fn channel(port: u16) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A client calling CheckOrigin without pause until stopped, on its own
/// connection opened before the flood; it returns its calls and failures.
struct Steady {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(u64, Vec<String>, Duration)>,
}

impl Steady {
    async fn start(port: u16) -> Steady {
        let mut client = CorsPolicyClient::new(channel(port).await.unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let (mut calls, mut failures, mut slowest) = (0, Vec::new(), Duration::ZERO);
            while !stopped.load(Ordering::Relaxed) {
                let started = Instant::now();
                match client.check_origin(get_request("https://a.example")).await {
                    Ok(answer) if answer.get_ref().reason == Reason::Allowed as i32 => {}
                    other => failures.push(format!("{other:?}")),
                }
                slowest = slowest.max(started.elapsed());
                calls += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (calls, failures, slowest)
        });
        Steady { stop, task }
    }

    async fn finish(self, flood: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (calls, failures, slowest) = self.task.await.unwrap();
        eprintln!("{flood}: {calls} CheckOrigin calls alongside, slowest {slowest:?}");
        assert!(
            failures.is_empty(),
            "{flood}: {} of {calls} calls failed: {:?}",
            failures.len(),
            failures.first()
        );
        assert!(calls >= 10, "{flood}: only {calls} calls were answered");
    }
}

/// A corsd under a flood, with a steady client beside it, alone on the machine.
struct Flooded {
    corsd: Corsd,
    steady: Steady,
    rss_before: u64,
    _dir: tempfile::TempDir,
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

impl Flooded {
    async fn start() -> Flooded {
        let alone = common::exclusive().await;
        let dir = tempfile::tempdir().unwrap();
        let corsd = start(dir.path(), &[]);
        let steady = Steady::start(corsd.port).await;
        let rss_before = corsd.rss_kib();
        Flooded {
            corsd,
            steady,
            rss_before,
            _dir: dir,
            _alone: alone,
        }
    }

    /// Checks the steady client was answered throughout, corsd still runs,
    /// and its memory grew by less than `bound_kib`.
    async fn finish(mut self, flood: &str, bound_kib: u64) {
        let after = self.corsd.rss_kib();
        let before = self.rss_before;
        eprintln!("{flood}: RSS {before} -> {after} KiB");
        assert!(self.corsd.running(), "{flood}: corsd exited");
        self.steady.finish(flood).await;
        assert!(
            after < before + bound_kib,
            "{flood}: RSS grew from {before} to {after} KiB"
        );
    }
}

/// Tens of thousands of streams opened and reset at once on HTTP/2
/// connections (CVE-2023-44487); a connection the server closes is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_burst_leaves_decisions_flowing() {
    let flooded = Flooded::start().await;
    let port = flooded.corsd.port;
    const STREAMS: u32 = 30_000;
    let (mut sent, mut connections) = (0, 0);
    'flood: while sent < STREAMS {
        let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        let Ok((client, connection)) = h2::client::handshake(tcp).await else {
            continue;
        };
        connections += 1;
        tokio::spawn(connection);
        let mut client = client;
        while sent < STREAMS {
            let Ok(ready) = client.clone().ready().await else {
                continue 'flood;
            };
            client = ready;
            let request = http::Request::post(format!("http://127.0.0.1:{port}/corsd.v1.CorsPolicy/CheckOrigin"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let Ok((_, mut stream)) = client.send_request(request, false) else {
                continue 'flood;
            };
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    eprintln!("rapid reset: {sent} streams reset on {connections} connections");
    flooded.finish("rapid reset", 64 * 1024).await;
}

/// 5,000 idle connections, some never sending a byte, some stopping after
/// the HTTP/2 preface: decisions go on, a new client still connects, and
/// memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_leave_decisions_flowing() {
    let flooded = Flooded::start().await;
    let port = flooded.corsd.port;
    let mut idle = Vec::with_capacity(5_000);
    for i in 0..5_000 {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if i % 2 == 0 {
            tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await
                .unwrap();
        }
        idle.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut late = CorsPolicyClient::new(channel(port).await.unwrap());
    let answer = late.check_origin(get_request("https://a.example")).await.unwrap();
    assert_eq!(answer.get_ref().reason, Reason::Allowed as i32);
    flooded.finish("5,000 idle connections", 256 * 1024).await;
    drop(idle);
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541, 5.1), its first
/// byte's other bits zero.
fn hpack_integer(prefix: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// One frame: length, type, flags, stream, payload (RFC 9113, 4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A request whose header block is 1 MiB: HEADERS and CONTINUATION frames
/// of literal fields (the CONTINUATION flood), then what the server sends
/// back until it closes or a second passes.
async fn send_huge_header_block(port: u16) -> usize {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/corsd.v1.CorsPolicy/CheckOrigin"),
        (":authority", "corsd"),
        ("content-type", "application/grpc"),
    ] {
        block.push(0);
        hpack_integer(7, name.len(), &mut block);
        block.extend(name.as_bytes());
        hpack_integer(7, value.len(), &mut block);
        block.extend(value.as_bytes());
    }
    let pad = "p".repeat(4_000);
    while block.len() < 1 << 20 {
        block.push(0);
        hpack_integer(7, 5, &mut block);
        block.extend(b"x-pad");
        hpack_integer(7, pad.len(), &mut block);
        block.extend(pad.as_bytes());
    }
    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(frame(4, 0, 0, &[]));
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let end_headers = if i + 1 == chunks.len() { 4 } else { 0 };
        let (kind, flags) = if i == 0 { (1, end_headers) } else { (9, end_headers) };
        wire.extend(frame(kind, flags, 1, chunk));
    }
    // The server may close before taking it all; that is its right.
    let _ = tcp.write_all(&wire).await;
    let mut back = vec![0; 64 * 1024];
    let mut got = 0;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut back)).await {
        if n == 0 {
            break;
        }
        got += n;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_header_blocks_leave_decisions_flowing() {
    let flooded = Flooded::start().await;
    let port = flooded.corsd.port;
    // Rounds of 16 blocks at once, for a second at least.
    let (started, mut blocks) = (Instant::now(), 0);
    while started.elapsed() < Duration::from_secs(1) {
        let floods: Vec<_> = (0..16).map(|_| tokio::spawn(send_huge_header_block(port))).collect();
        for flood in floods {
            flood.await.unwrap();
        }
        blocks += 16;
    }
    flooded
        .finish(&format!("{blocks} header blocks of 1 MiB"), 64 * 1024)
        .await;
}

/// `--max-connections 3`: a fourth connection is closed at once, and a new
/// one is admitted when one of the three has gone, or when silent ones have
/// been closed for sending nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let corsd = start(dir.path(), &["--max-connections", "3"]);
    let port = corsd.port;
    // The start-up probe's connection is gone once its place is free again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let channel = channel(port).await.unwrap();
        assert_eq!(call(channel.clone()).await.unwrap(), Reason::Allowed as i32);
        open.push(channel);
    }
    let fourth = match channel(port).await {
        Ok(channel) => call(channel).await.map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(fourth.is_err(), "a fourth connection was answered: {fourth:?}");
    drop(open.pop());
    admitted_within(port, Duration::from_secs(5)).await;
    assert!(corsd.log().contains("--max-connections"), "{}", corsd.log());

    // Silent connections (not a byte sent) take the places left, but only
    // for the handshake time: then they are closed and a client gets in.
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shut_out = match channel(port).await {
        Ok(channel) => call(channel).await.map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(shut_out.is_err(), "three silent connections left a place: {shut_out:?}");
    let took = admitted_within(port, corsd::tls::HANDSHAKE_TIMEOUT + Duration::from_secs(3)).await;
    eprintln!("silent connections closed after {took:?}");
    drop(silent);
}

/// CheckOrigin on a new connection to `port`.
async fn call(channel: Channel) -> Result<i32, tonic::Status> {
    CorsPolicyClient::new(channel)
        .check_origin(get_request("https://a.example"))
        .await
        .map(|a| a.into_inner().reason)
}

/// Waits until a new connection is admitted and answered; how long it took.
async fn admitted_within(port: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let answered = match channel(port).await {
            Ok(channel) => call(channel).await.ok(),
            Err(_) => None,
        };
        if answered == Some(Reason::Allowed as i32) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no place came free within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
