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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/client.py");
    let (addr, policy_arg, out_dir) = (server.addr.to_string(), policy.clone(), dir.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(addr)
            .arg(policy_arg)
            .arg(out_dir)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().count() >= 15, "{stdout}");
    server.stop().await;
}
