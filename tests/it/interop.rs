//! The gRPC API from another language: a Python client whose stubs the stock
//! `protoc` (from grpcio-tools) generates from `proto/corsd/v1/corsd.proto`,
//! against a real server that watches a real policy file.

use std::path::Path;
use std::process::Command;

use crate::common::serve::TestServer;

const POLICY: &str = r#"label = "interop"
[scope]
hosts = ["api.example.com"]
paths = ["/services/data"]
[[entries]]
origin = "https://app.example.org"
[[entries]]
origin = "https://*.partner.example.net"
[[entries]]
origin = "http://localhost:3000"
"#;

/// Whether Python has grpcio-tools; in CI its absence fails the test.
fn python_with_grpc_tools() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import grpc_tools.protoc, grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let why = "no Python grpcio-tools: pip install grpcio-tools";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        println!("skipped: {why}");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_built_with_stock_protoc() {
    if !python_with_grpc_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let server = TestServer::start_with_file(&policy).await;
    corsd::reload::spawn(policy.clone(), server.store.clone()).unwrap();
    let args = [
        server.addr.to_string(),
        policy.display().to_string(),
        dir.path().display().to_string(),
    ];
    let stdout = tokio::task::spawn_blocking(move || run_client("client.py", &args))
        .await
        .unwrap();
    assert!(stdout.lines().count() >= 15, "{stdout}");
    server.stop().await;
}

/// The same client library over mTLS: Python's grpcio (BoringSSL, so ALPN
/// `h2` is required of corsd) with the certificates `scripts/make-test-ca`
/// makes, against a `corsd serve` process with an admin SAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_over_mtls() {
    if !python_with_grpc_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(pki) = crate::common::pki::from_script(dir.path()) else {
        return;
    };
    let policy = crate::common::write_file(
        dir.path(),
        "p.toml",
        "[[entries]]\norigin = \"https://app.example.org\"\n",
    );
    let mut flags = crate::common::pki::script_flags(&pki);
    flags.extend(["--admin-san".to_owned(), "admin.corsd.internal".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let corsd = crate::common::process::Corsd::start(Path::new(&policy), &flags, dir.path());
    let args = [
        format!("127.0.0.1:{}", corsd.port),
        pki.display().to_string(),
        dir.path().display().to_string(),
    ];
    let stdout = tokio::task::spawn_blocking(move || run_client("mtls_client.py", &args))
        .await
        .unwrap();
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 5, "{stdout}");
}

/// A sidecar's client over `--listen unix:PATH`: grpcio with the channel
/// option `grpc.default_authority` set to `localhost` (the one setting
/// docs/envoy.md gives for C-core clients) is answered; without it, C-core's
/// percent-encoded socket path as `:authority` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_over_a_unix_socket() {
    if !python_with_grpc_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = crate::common::write_file(
        dir.path(),
        "p.toml",
        "[[entries]]\norigin = \"https://app.example.org\"\n",
    );
    let socket = dir.path().join("corsd.sock");
    let log = dir.path().join("corsd.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["serve", "--policy", &policy, "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no socket: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let args = [socket.display().to_string(), dir.path().display().to_string()];
    let stdout = tokio::task::spawn_blocking(move || run_client("unix_client.py", &args))
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{stdout}");
}

/// Runs `tests/interop/SCRIPT ARGS`, checks it succeeded and returns its output.
fn run_client(script: &str, args: &[String]) -> String {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop").join(script))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
