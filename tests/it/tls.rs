//! TLS and mTLS on a real `corsd serve` process, with certificates made at
//! test time (DESIGN.md section 10): tonic clients decide over mTLS, clients
//! without a good certificate are refused, admin calls need an admin SAN or
//! the token, and a rotated certificate is served to new handshakes while
//! calls go on without a failure.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::grpc::pb::{ListEntriesRequest, ListTenantsRequest, Reason};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::common::pki::{Ca, Leaf, Subject};
use crate::common::process::Corsd;
use crate::common::{self, serve::get_request};

const POLICY: &str = "[[entries]]\norigin = \"https://a.example\"\n";

/// A tonic channel over TLS to `port`, trusting `ca`, presenting `identity`.
async fn connect(port: u16, ca: &str, identity: Option<&Leaf>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("corsd.test");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls)?
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// The reason of a CheckOrigin for `origin`, or why the call failed.
async fn decide(port: u16, ca: &str, identity: Option<&Leaf>, origin: &str) -> Result<i32, String> {
    let channel = connect(port, ca, identity)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    CorsPolicyClient::new(channel)
        .check_origin(get_request(origin))
        .await
        .map(|answer| answer.into_inner().reason)
        .map_err(|status| format!("{status:?}"))
}

/// The certificate a new TLS handshake with corsd is shown.
async fn served_certificate(port: u16, ca: &str, client: &Leaf) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("corsd.test").unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "corsd offers ALPN h2");
    session.peer_certificates().unwrap()[0].to_vec()
}

fn start_mtls(dir: &Path, ca: &Ca, extra: &[&str]) -> Corsd {
    let policy = common::write_file(dir, "p.toml", POLICY);
    let (cert, key) = ca.issue(&Subject::server()).write(dir, "server");
    let ca_file = ca.write(dir, "clients-ca");
    let mut args = vec![
        "--tls-cert".to_owned(),
        cert.display().to_string(),
        "--tls-key".to_owned(),
        key.display().to_string(),
        "--tls-client-ca".to_owned(),
        ca_file.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Corsd::start(Path::new(&policy), &args, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_the_ca_s_clients_and_refuses_every_other() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("corsd test CA");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "tok-1\n").unwrap();
    let corsd = start_mtls(
        dir.path(),
        &ca,
        &[
            "--admin-san",
            "admin.corsd.test",
            "--admin-san",
            "spiffe://corsd.test/ops",
            "--admin-token-file",
            &token.display().to_string(),
        ],
    );
    let port = corsd.port;
    let gateway = ca.issue(&Subject::client(&["gateway.corsd.test"]));

    // The CA's client is answered, allow and deny alike.
    assert_eq!(
        decide(port, &ca.pem, Some(&gateway), "https://a.example").await,
        Ok(Reason::Allowed as i32)
    );
    assert_eq!(
        decide(port, &ca.pem, Some(&gateway), "https://b.example").await,
        Ok(Reason::OriginNotAllowed as i32)
    );
    // Health stays open over the transport.
    let channel = connect(port, &ca.pem, Some(&gateway)).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Refused: no certificate, another CA's, an expired one, plaintext.
    let stranger = Ca::new("another CA").issue(&Subject::client(&["gateway.corsd.test"]));
    let expired = ca.issue(&Subject {
        expired: true,
        ..Subject::client(&["gateway.corsd.test"])
    });
    for (who, identity) in [
        ("no certificate", None),
        ("another CA", Some(&stranger)),
        ("expired", Some(&expired)),
    ] {
        let got = decide(port, &ca.pem, identity, "https://a.example").await;
        assert!(got.is_err(), "{who}: answered {got:?}");
    }
    let plaintext = async {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        CorsPolicyClient::new(channel)
            .check_origin(get_request("https://a.example"))
            .await
            .map_err(|e| e.to_string())
    };
    assert!(plaintext.await.is_err(), "a plaintext client was answered");

    // Admin calls: a DNS or URI SAN from --admin-san, or the token.
    let admin_dns = ca.issue(&Subject::client(&["admin.corsd.test"]));
    let admin_uri = ca.issue(&Subject {
        uris: &["spiffe://corsd.test/ops"],
        ..Subject::client(&[])
    });
    let cn_only = ca.issue(&Subject {
        common_name: "admin.corsd.test",
        ..Subject::client(&["gateway.corsd.test"])
    });
    let list = |identity: Leaf, token: Option<&'static str>| {
        let ca = ca.pem.clone();
        async move {
            let channel = connect(port, &ca, Some(&identity)).await.unwrap();
            let mut client = CorsPolicyClient::new(channel);
            let mut entries = tonic::Request::new(ListEntriesRequest::default());
            let mut tenants = tonic::Request::new(ListTenantsRequest::default());
            if let Some(token) = token {
                let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
                entries.metadata_mut().insert("authorization", value.clone());
                tenants.metadata_mut().insert("authorization", value);
            }
            let entries = client.list_entries(entries).await.map(|_| ()).map_err(|s| s.code());
            let tenants = client.list_tenants(tenants).await.map(|_| ()).map_err(|s| s.code());
            (entries, tenants)
        }
    };
    assert_eq!(list(admin_dns, None).await, (Ok(()), Ok(())), "DNS SAN");
    assert_eq!(list(admin_uri, None).await, (Ok(()), Ok(())), "URI SAN");
    let denied = (Err(Code::PermissionDenied), Err(Code::PermissionDenied));
    assert_eq!(list(cn_only, None).await, denied, "a CN is not a SAN");
    let gateway_again = || ca.issue(&Subject::client(&["gateway.corsd.test"]));
    assert_eq!(list(gateway_again(), None).await, denied, "no admin SAN");
    assert_eq!(list(gateway_again(), Some("tok-2")).await, denied, "wrong token");
    assert_eq!(list(gateway_again(), Some("tok-1")).await, (Ok(()), Ok(())), "token");
}

/// The server certificate is rotated while clients call without pause, on
/// one long-lived connection and on a new connection per call: no call
/// fails, a certificate renamed in before its key is not used until the key
/// follows, the new pair reaches new handshakes within a second, and a file
/// that is not a certificate keeps the one in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_handshakes_and_no_call_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("corsd test CA");
    let corsd = start_mtls(dir.path(), &ca, &[]);
    let port = corsd.port;
    let client = Arc::new(ca.issue(&Subject::client(&["gateway.corsd.test"])));
    let first = served_certificate(port, &ca.pem, &client).await;

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut callers = Vec::new();
    for fresh_connection in [false, true] {
        let (stop, calls, failures, client, ca) = (
            Arc::clone(&stop),
            Arc::clone(&calls),
            Arc::clone(&failures),
            Arc::clone(&client),
            ca.pem.clone(),
        );
        callers.push(tokio::spawn(async move {
            let mut long_lived = CorsPolicyClient::new(connect(port, &ca, Some(&client)).await.unwrap());
            while !stop.load(Ordering::Relaxed) {
                let got = if fresh_connection {
                    decide(port, &ca, Some(&client), "https://a.example").await
                } else {
                    long_lived
                        .check_origin(get_request("https://a.example"))
                        .await
                        .map(|a| a.into_inner().reason)
                        .map_err(|s| format!("{s:?}"))
                };
                calls.fetch_add(1, Ordering::Relaxed);
                if got != Ok(Reason::Allowed as i32) {
                    failures.lock().unwrap().push(format!("{got:?}"));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new pair, renamed in one file after the other.
    let next = ca.issue(&Subject::server());
    let staged = dir.path().join("staged");
    std::fs::create_dir(&staged).unwrap();
    let (new_cert, new_key) = next.write(&staged, "server");
    std::fs::rename(&new_cert, dir.path().join("server.crt")).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        served_certificate(port, &ca.pem, &client).await,
        first,
        "a certificate without its key was used"
    );
    std::fs::rename(&new_key, dir.path().join("server.key")).unwrap();
    let landed = Instant::now();
    while served_certificate(port, &ca.pem, &client).await != next.der {
        assert!(
            landed.elapsed() < Duration::from_secs(1),
            "the new certificate is not served a second after it landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("new certificate served {:?} after its key landed", landed.elapsed());

    // A file that is not a certificate: the pair in force stays.
    std::fs::write(dir.path().join("server.crt"), "not a certificate\n").unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(served_certificate(port, &ca.pem, &client).await, next.der);
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    let calls = calls.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(calls > 50, "only {calls} calls were made");
    let log = corsd.log();
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    assert!(log.contains("keeping the ones in force"), "{log}");
}

/// Bad TLS files stop start-up with exit code 2 and the reason; an admin
/// SAN without a client CA is refused by the command line.
#[test]
fn bad_tls_files_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.toml", POLICY);
    let ca = Ca::new("corsd test CA");
    let (cert, _) = ca.issue(&Subject::server()).write(dir.path(), "server");
    let (_, other_key) = ca.issue(&Subject::server()).write(dir.path(), "other");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
            .args(["serve", "--policy", &policy, "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap()
    };
    let cert = cert.display().to_string();
    let other_key = other_key.display().to_string();
    let mismatched = run(&["--tls-cert", &cert, "--tls-key", &other_key]);
    assert_eq!(mismatched.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&mismatched.stderr);
    assert!(stderr.contains("do not make a certificate and its key"), "{stderr}");
    let missing = run(&["--tls-cert", &cert, "--tls-key", "/nonexistent/key.pem"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/key.pem"));
    let san_alone = run(&["--admin-san", "admin.corsd.test"]);
    assert_eq!(san_alone.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&san_alone.stderr).contains("--tls-client-ca"));
}
