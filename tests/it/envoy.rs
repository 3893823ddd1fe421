//! End to end through a real Envoy 1.40 running the shipped
//! `deploy/envoy/envoy.yaml`, with ext_authz to a real corsd and a real
//! upstream, all on loopback.

use std::time::{Duration, Instant};

use crate::common::envoy::{Envoy, HttpResponse, envoy_binary, start_upstream};
use crate::common::serve::TestServer;

const POLICY: &str = r#"
[cors]
allow_methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
allow_headers = ["authorization", "content-type", "x-requested-with"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = 600

[scope]
hosts = ["api.example.com"]
paths = ["/services/data"]

[[entries]]
origin = "https://app.example.org"

[[entries]]
origin = "https://*.partner.example.net"
"#;

/// A request head: method, path, host and extra header lines.
fn head(method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text
}

fn preflight(origin: &str, method: &str, headers: &str) -> String {
    head(
        "OPTIONS",
        "/services/data/v60.0/sobjects/Account",
        "api.example.com",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", headers),
        ],
    )
}

/// Forwarded, with the upstream's own CORS headers left as they were and
/// `Vary` as given.
fn assert_forwarded_untouched(r: &HttpResponse, vary: &[&str]) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.one("access-control-allow-origin"),
        Some("https://upstream-chose-this.example")
    );
    assert_eq!(r.vary(), vary);
}

fn assert_no_cors_headers(r: &HttpResponse) {
    for name in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
    ] {
        assert!(r.all(name).is_empty(), "{name} on a denial: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delegates_cors_to_corsd() {
    let Some(binary) = envoy_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, POLICY).unwrap();
    let corsd = TestServer::start_with_file(&policy_path).await;
    corsd::reload::spawn(policy_path.clone(), corsd.store.clone()).unwrap();
    let upstream = start_upstream().await;
    let envoy = Envoy::start(&binary, corsd.addr, upstream).await;

    // Preflight allowed: answered at once by corsd's 204.
    let r = envoy
        .send(&preflight(
            "https://app.example.org",
            "PUT",
            "content-type, x-requested-with",
        ))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.one("access-control-allow-origin"), Some("https://app.example.org"));
    assert_eq!(
        r.one("access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE")
    );
    assert_eq!(
        r.one("access-control-allow-headers"),
        Some("authorization, content-type, x-requested-with")
    );
    assert_eq!(r.one("access-control-max-age"), Some("600"));
    assert_eq!(r.one("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.vary(),
        [
            "Origin",
            "Access-Control-Request-Method",
            "Access-Control-Request-Headers"
        ]
    );

    // Preflight denied for the origin, and for the method.
    let r = envoy
        .send(&preflight("https://evil.example", "PUT", "content-type"))
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_no_cors_headers(&r);
    assert!(r.body.contains("origin_not_allowed"), "{r:?}");
    let r = envoy
        .send(&preflight("https://a.partner.example.net", "PROPFIND", ""))
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_no_cors_headers(&r);
    assert!(r.body.contains("method_not_allowed"), "{r:?}");

    // Actual request allowed: the upstream's ACAO replaced, its Vary kept.
    let get = |origin: &str, path: &str| {
        head(
            "GET",
            path,
            "api.example.com",
            &[("Origin", origin), ("Cookie", "sid=1")],
        )
    };
    let r = envoy
        .send(&get("https://app.example.org", "/services/data/v60.0/query?q=1"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.one("access-control-allow-origin"), Some("https://app.example.org"));
    assert_eq!(r.one("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.one("access-control-expose-headers"), Some("x-request-id"));
    assert_eq!(r.vary(), ["Accept-Encoding", "Origin"]);
    assert_eq!(r.body, "{\"ok\":true}");

    // A resource the upstream does not have: its 404, with CORS headers.
    let r = envoy
        .send(&get("https://deep.a.partner.example.net", "/services/data/missing"))
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(
        r.one("access-control-allow-origin"),
        Some("https://deep.a.partner.example.net")
    );

    // Actual request denied: 403 from corsd; the upstream never answers.
    let r = envoy
        .send(&get("https://evil.example", "/services/data/v60.0/query"))
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_no_cors_headers(&r);
    assert_eq!(r.vary(), ["Origin"]);

    // null: denied.
    let r = envoy.send(&get("null", "/services/data/v60.0/query")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("origin_null"), "{r:?}");

    // No Origin: forwarded untouched but for Vary.
    let r = envoy
        .send(&head("GET", "/services/data/v60.0/query", "api.example.com", &[]))
        .await;
    assert_forwarded_untouched(&r, &["Accept-Encoding", "Origin"]);

    // Same origin (the listener is plain http): forwarded, Vary added.
    let r = envoy
        .send(&get("http://api.example.com", "/services/data/v60.0/query"))
        .await;
    assert_forwarded_untouched(&r, &["Accept-Encoding", "Origin"]);

    // Out of scope: another host, or another path; untouched.
    for (host, path) in [
        ("static.example.com", "/services/data/v1"),
        ("api.example.com", "/services/database"),
    ] {
        let r = envoy
            .send(&head("GET", path, host, &[("Origin", "https://evil.example")]))
            .await;
        assert_forwarded_untouched(&r, &["Accept-Encoding"]);
    }

    // A policy edit is seen through Envoy within a second.
    let newcomer = preflight("https://new.example.org", "PUT", "content-type");
    assert_eq!(envoy.send(&newcomer).await.status, 403);
    let edited = format!("{POLICY}\n[[entries]]\norigin = \"https://new.example.org\"\n");
    std::fs::write(&policy_path, edited).unwrap();
    let written = Instant::now();
    loop {
        let r = envoy.send(&newcomer).await;
        if r.status == 204 {
            println!("policy edit seen through Envoy after {:?}", written.elapsed());
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "edit not in force within 1 s: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(envoy);
    corsd.stop().await;
}

/// What Envoy must show for one case of the decision table: the status, the
/// CORS headers corsd set (replacing the upstream's), the Vary it kept or
/// appended, and for a denial the reason in the body.
fn check_through_envoy(
    case: &crate::common::Case,
    r: &crate::common::Resolved,
    got: &HttpResponse,
) -> Result<(), String> {
    let e = &case.expect;
    let mut wrong = Vec::new();
    let forwarded = e.status == 0;
    let want_status = if forwarded {
        200
    } else {
        u16::try_from(e.status).unwrap()
    };
    if got.status != want_status {
        wrong.push(format!("status {} (want {want_status})", got.status));
    }
    if !forwarded && !got.body.contains(&e.reason) && e.status == 403 {
        wrong.push(format!("body {:?} does not name {}", got.body, e.reason));
    }
    let acao = got.all("access-control-allow-origin");
    let want_acao: Vec<&str> = match e.verdict.as_str() {
        "allow" => vec![r.origin.as_deref().unwrap()],
        "deny" => vec![],
        _ => vec!["https://upstream-chose-this.example"],
    };
    if acao != want_acao {
        wrong.push(format!("access-control-allow-origin {acao:?} (want {want_acao:?})"));
    }
    if let Some(headers) = &e.headers {
        let mut want_vary: Vec<String> = if forwarded {
            vec!["Accept-Encoding".into()]
        } else {
            vec![]
        };
        for (name, value, _) in headers {
            if name == "vary" {
                want_vary.extend(value.split(',').map(|v| v.trim().to_owned()));
            } else if got.all(name) != [value.as_str()] {
                wrong.push(format!("{name} {:?} (want {value:?})", got.all(name)));
            }
        }
        if got.vary() != want_vary {
            wrong.push(format!("vary {:?} (want {want_vary:?})", got.vary()));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("case {:?}: {}", case.name, wrong.join("; ")))
    }
}

/// The request of a case as HTTP/1.1 in absolute form, so Envoy reports the
/// case's scheme; `None` when HTTP cannot carry it (a control character, or
/// whitespace Envoy trims from a header value).
fn case_request(r: &crate::common::Resolved) -> Option<String> {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(origin) = &r.origin {
        headers.push(("Origin", origin));
    }
    if let Some(m) = &r.request_method {
        headers.push(("Access-Control-Request-Method", m));
    }
    for line in &r.request_headers {
        headers.push(("Access-Control-Request-Headers", line));
    }
    if r.private_network {
        headers.push(("Access-Control-Request-Private-Network", "true"));
    }
    let unfit = |v: &str| v.trim() != v || v.bytes().any(|b| b.is_ascii_control());
    if headers.iter().any(|(_, v)| unfit(v)) {
        return None;
    }
    let target = format!("{}://{}{}", r.scheme, r.authority, r.path);
    Some(head(&r.method, &target, &r.authority, &headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_replays_the_decision_table() {
    let Some(binary) = envoy_binary() else { return };
    let policies = crate::common::policies();
    let corsd = TestServer::start(corsd::grpc::Store::for_test(&policies["main"]).unwrap()).await;
    let upstream = start_upstream().await;
    let envoy = Envoy::start(&binary, corsd.addr, upstream).await;
    let mut failures = Vec::new();
    let mut carried = 0;
    let mut cannot_carry = Vec::new();
    for (name, text) in &policies {
        corsd
            .store
            .swap(corsd::core::Policy::compile("case", text.as_bytes()).unwrap().policy);
        for (case, r) in crate::common::decision_cases()
            .iter()
            .filter(|(_, r)| &r.policy == name)
        {
            let Some(request) = case_request(r) else {
                cannot_carry.push(case.name.clone());
                continue;
            };
            carried += 1;
            let got = envoy.send(&request).await;
            if let Err(e) = check_through_envoy(case, r, &got) {
                failures.push(e);
            }
        }
    }
    println!("{carried} cases through Envoy; HTTP cannot carry {cannot_carry:?}");
    assert!(carried >= 100, "only {carried} cases carried");
    assert!(
        failures.is_empty(),
        "{} cases failed through Envoy:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(envoy);
    corsd.stop().await;
}

/// The sidecar case: corsd on `--listen unix:PATH`, Envoy's ext_authz
/// cluster on a `pipe` address (Envoy's gRPC client sends the cluster name
/// as `:authority`, which corsd takes). An allowed preflight is answered
/// with 204 and corsd's headers, an unlisted origin with 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reaches_corsd_over_a_unix_socket() {
    let Some(binary) = envoy_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let policy = crate::common::write_file(dir.path(), "p.toml", POLICY);
    let socket = dir.path().join("corsd.sock");
    let mut corsd = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["serve", "--policy", &policy, "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "corsd made no socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let upstream = start_upstream().await;
    let pipe = format!("pipe: {{ path: \"{}\" }}", socket.display());
    let envoy = Envoy::start_rewritten(
        &binary,
        "envoy.yaml",
        &[(9000, upstream.port())],
        &[("socket_address: { address: 127.0.0.1, port_value: 50051 }", &pipe)],
    )
    .await;
    let allowed = envoy
        .send(&preflight("https://app.example.org", "PUT", "content-type"))
        .await;
    assert_eq!(allowed.status, 204, "{allowed:?}");
    assert_eq!(
        allowed.all("access-control-allow-origin"),
        ["https://app.example.org"],
        "{allowed:?}"
    );
    let denied = envoy
        .send(&preflight("https://evil.example", "PUT", "content-type"))
        .await;
    assert_eq!(denied.status, 403, "{denied:?}");
    drop(envoy);
    let _ = corsd.kill();
    let _ = corsd.wait();
}
