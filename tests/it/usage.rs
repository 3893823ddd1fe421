//! Entry usage (DESIGN.md section 16) on a real `corsd serve`: every allowed
//! decision counts for its entry, whichever API asked; counts survive a
//! reload for entries still present; `ListEntries` and `corsd entries list
//! --server` report them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::grpc::pb::{CheckOriginRequest, Entry, ListEntriesRequest, Verdict};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use crate::common::process::Corsd;
use crate::common::{authz_get, write_file};

fn policy(origins: &[&str]) -> String {
    origins
        .iter()
        .map(|o| format!("[[entries]]\norigin = \"{o}\"\nnote = \"{o}\"\n"))
        .collect()
}

fn call(tenant: &str, origin: &str, preflight: bool) -> CheckOriginRequest {
    CheckOriginRequest {
        origin: Some(origin.to_owned()),
        method: if preflight { "OPTIONS" } else { "GET" }.into(),
        access_control_request_method: preflight.then(|| "GET".to_owned()),
        scheme: "https".into(),
        authority: "api.example.com".into(),
        path: "/".into(),
        tenant: tenant.into(),
        ..Default::default()
    }
}

async fn entries(channel: &Channel, tenant: &str, unused_only: bool) -> Vec<Entry> {
    CorsPolicyClient::new(channel.clone())
        .list_entries(ListEntriesRequest {
            tenant: tenant.into(),
            unused_only,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
}

fn hits(entries: &[Entry], pattern: &str) -> u64 {
    entries
        .iter()
        .find(|e| e.pattern == pattern)
        .unwrap_or_else(|| panic!("no entry {pattern} in {entries:?}"))
        .hits
}

#[tokio::test]
async fn every_allowed_decision_counts_for_its_entry_across_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let acme = write_file(
        &live,
        "acme.toml",
        &policy(&[
            "https://a.example.com",
            "https://*.b.example.com",
            "https://c.example.com",
        ]),
    );
    write_file(&live, "beta.toml", &policy(&["https://a.example.com"]));
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let corsd = Corsd::start_dir(&live, &[], dir.path());
    let channel = corsd.channel().await;
    let mut client = CorsPolicyClient::new(channel.clone());
    let mut authorization = AuthorizationClient::new(channel.clone());

    // 5 actual requests and 2 preflights from a; 3 from below b's wildcard;
    // 4 ext_authz checks from a; denials and other tenants count nothing.
    for _ in 0..5 {
        let answer = client
            .check_origin(call("acme", "https://a.example.com", false))
            .await
            .unwrap();
        assert_eq!(answer.into_inner().verdict(), Verdict::Allow);
    }
    for _ in 0..2 {
        client
            .check_origin(call("acme", "https://a.example.com", true))
            .await
            .unwrap();
    }
    for host in ["x", "y", "z"] {
        let origin = format!("https://{host}.b.example.com");
        client.check_origin(call("acme", &origin, false)).await.unwrap();
    }
    for _ in 0..4 {
        let answer = authorization
            .check(authz_get("acme", "https://a.example.com"))
            .await
            .unwrap();
        assert_eq!(answer.into_inner().status.unwrap().code, 0);
    }
    for _ in 0..3 {
        let denied = client
            .check_origin(call("acme", "https://evil.example.com", false))
            .await
            .unwrap();
        assert_eq!(denied.into_inner().verdict(), Verdict::Deny);
    }
    client
        .check_origin(call("beta", "https://a.example.com", false))
        .await
        .unwrap();

    let listed = entries(&channel, "acme", false).await;
    assert_eq!(hits(&listed, "https://a.example.com"), 11, "{listed:?}");
    assert_eq!(hits(&listed, "https://*.b.example.com"), 3);
    assert_eq!(hits(&listed, "https://c.example.com"), 0);
    let a = listed.iter().find(|e| e.pattern == "https://a.example.com").unwrap();
    assert!(a.last_hit_unix_ms >= before, "{a:?}");
    assert_eq!(listed.iter().find(|e| e.hits == 0).unwrap().last_hit_unix_ms, 0);
    assert_eq!(
        hits(&entries(&channel, "beta", false).await, "https://a.example.com"),
        1
    );
    let unused: Vec<String> = entries(&channel, "acme", true)
        .await
        .into_iter()
        .map(|e| e.pattern)
        .collect();
    assert_eq!(unused, ["https://c.example.com"]);

    // The CLI, as an operator runs it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["entries", "list", "--server", &format!("127.0.0.1:{}", corsd.port)])
        .args(["--tenant", "acme", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed[0]["origin"], "https://a.example.com");
    assert_eq!(printed[0]["note"], "https://a.example.com");
    assert_eq!(printed[0]["line"], 2);
    assert_eq!(printed[0]["hits"], 11);
    assert_eq!(printed[2]["hits"], 0);
    assert_eq!(printed[2]["last_hit_unix_ms"], 0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["entries", "list", "--server", &format!("127.0.0.1:{}", corsd.port)])
        .args(["--tenant", "acme", "--unused"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("https://c.example.com"), "{text}");

    // Behind a token, --token-file sends it.
    let token = write_file(dir.path(), "admin.token", "s3cret\n");
    let guarded = Corsd::start_dir(&live, &["--admin-token-file", &token], dir.path());
    let list = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
            .args([
                "entries",
                "list",
                "--server",
                &format!("127.0.0.1:{}", guarded.port),
                "--tenant",
                "beta",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = list(&[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied"),
        "{refused:?}"
    );
    let admitted = list(&["--token-file", &token]);
    assert!(admitted.status.success(), "{admitted:?}");
    assert!(String::from_utf8_lossy(&admitted.stdout).contains("https://a.example.com"));

    // A new version: a moves and keeps its count, b's wildcard goes, d comes.
    std::fs::write(
        &acme,
        policy(&[
            "https://d.example.com",
            "https://c.example.com",
            "https://a.example.com",
        ]),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = entries(&channel, "acme", false).await;
        if listed.iter().any(|e| e.pattern == "https://d.example.com") {
            break listed;
        }
        assert!(Instant::now() < deadline, "the new version never came into force");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(hits(&listed, "https://a.example.com"), 11, "{listed:?}");
    assert_eq!(hits(&listed, "https://d.example.com"), 0);
    assert!(!listed.iter().any(|e| e.pattern == "https://*.b.example.com"));
    client
        .check_origin(call("acme", "https://a.example.com", false))
        .await
        .unwrap();
    client
        .check_origin(call("acme", "https://d.example.com", false))
        .await
        .unwrap();
    let listed = entries(&channel, "acme", false).await;
    assert_eq!(hits(&listed, "https://a.example.com"), 12);
    assert_eq!(hits(&listed, "https://d.example.com"), 1);
}
