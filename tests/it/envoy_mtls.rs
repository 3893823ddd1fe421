//! A real Envoy asking a real `corsd serve` over mTLS, on the shipped
//! `deploy/envoy/envoy-mtls.yaml`, with certificates that the shipped
//! `scripts/make-test-ca` makes at test time: decisions flow; an Envoy that
//! expects another SAN of corsd, or presents no certificate, fails closed.

use std::path::Path;

use crate::common::envoy::{Envoy, envoy_binary, start_upstream};
use crate::common::process::Corsd;
use crate::common::{self, pki};

const POLICY: &str = "[[entries]]\norigin = \"https://app.example.org\"\n";

fn get(origin: &str) -> String {
    format!("GET /api HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\nOrigin: {origin}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_asks_corsd_over_mtls() {
    let Some(binary) = envoy_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(pki) = pki::from_script(dir.path()) else {
        return;
    };
    let policy = common::write_file(dir.path(), "p.toml", POLICY);
    let flags = pki::script_flags(&pki);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let corsd = Corsd::start(Path::new(&policy), &flags, dir.path());
    let upstream = start_upstream().await;
    let ports = [(50051, corsd.port), (9000, upstream.port())];
    let pki_dir = format!("{}/", pki.display());

    let envoy = Envoy::start_rewritten(&binary, "envoy-mtls.yaml", &ports, &[("pki/", &pki_dir)]).await;
    let allowed = envoy.send(&get("https://app.example.org")).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(
        allowed.one("access-control-allow-origin"),
        Some("https://app.example.org")
    );
    let denied = envoy.send(&get("https://evil.example")).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(denied.all("access-control-allow-origin").is_empty());
    let stats = crate::common::envoy::request_at(
        envoy.admin_port,
        "GET /stats?filter=cluster.corsd.ssl.handshake HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let handshakes: u64 = stats
        .body
        .lines()
        .find_map(|l| l.strip_prefix("cluster.corsd.ssl.handshake: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(handshakes >= 1, "no TLS handshake with corsd: {}", stats.body);
    drop(envoy);

    // Envoy expects corsd to be someone else: the handshake fails, closed.
    let wrong_san = Envoy::start_rewritten(
        &binary,
        "envoy-mtls.yaml",
        &ports,
        &[
            ("pki/", &pki_dir),
            (
                "matcher: { exact: corsd.internal }",
                "matcher: { exact: other.internal }",
            ),
        ],
    )
    .await;
    let r = wrong_san.send(&get("https://app.example.org")).await;
    assert_eq!(r.status, 503, "a corsd with another SAN was trusted: {r:?}");
    drop(wrong_san);

    // Envoy without its client certificate: corsd refuses it, closed.
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/envoy-mtls.yaml")).unwrap();
    let certificates = shipped
        .lines()
        .skip_while(|l| !l.contains("tls_certificates:"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(certificates.contains("private_key"), "{certificates}");
    let anonymous = Envoy::start_rewritten(
        &binary,
        "envoy-mtls.yaml",
        &ports,
        &[(&certificates, ""), ("pki/", &pki_dir)],
    )
    .await;
    let r = anonymous.send(&get("https://app.example.org")).await;
    assert_eq!(r.status, 503, "corsd answered an Envoy without a certificate: {r:?}");
}
