//! Shadow policies (DESIGN.md section 15) on a real `corsd serve`: each
//! tenant's candidate decides every request again, never enforced, and the
//! change shows in the answer, the metrics, the shadow log and ext_authz
//! metadata; an invalid candidate keeps the last good one.

use std::path::Path;
use std::time::{Duration, Instant};

use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::grpc::pb::{Change, CheckOriginResponse, ListTenantsRequest, Verdict};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use crate::common::envoy::{free_port, request_at};
use crate::common::process::Corsd;
use crate::common::{authz_get, check_get as call, write_file};

fn policy(origins: &[&str], extra: &str) -> String {
    let mut text = String::from(extra);
    for origin in origins {
        text.push_str(&format!("[[entries]]\norigin = \"{origin}\"\n"));
    }
    text
}

async fn metrics(port: u16) -> String {
    request_at(port, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap()
        .body
}

fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Tenant `acme` has a candidate that adds `https://new.example`, drops
/// `https://old.example` and exposes a header; `beta` has none.
fn platform(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (live, candidates) = (dir.join("live"), dir.join("candidates"));
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&candidates).unwrap();
    write_file(
        &live,
        "acme.toml",
        &policy(&["https://old.example", "https://kept.example"], ""),
    );
    write_file(&live, "beta.toml", &policy(&["https://beta.example"], ""));
    write_file(
        &candidates,
        "acme.toml",
        &policy(
            &["https://new.example", "https://kept.example"],
            "[cors]\nexpose_headers = [\"x-request-id\"]\n",
        ),
    );
    (live, candidates)
}

#[tokio::test]
async fn a_candidate_decides_every_request_again_and_is_never_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let (live, candidates) = platform(dir.path());
    let metrics_port = free_port();
    let corsd = Corsd::start_dir(
        &live,
        &[
            "--shadow-policy-dir",
            candidates.to_str().unwrap(),
            "--log-shadow",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        dir.path(),
    );
    let mut client = CorsPolicyClient::new(corsd.channel().await);
    let mut ask = async |tenant: &str, origin: Option<&str>| -> CheckOriginResponse {
        client.check_origin(call(tenant, origin)).await.unwrap().into_inner()
    };

    let cases = [
        ("https://new.example", Verdict::Deny, Change::NewlyAllowed),
        ("https://old.example", Verdict::Allow, Change::NewlyDenied),
        ("https://kept.example", Verdict::Allow, Change::Changed),
        ("https://nobody.example", Verdict::Deny, Change::Same),
    ];
    for (origin, live_verdict, change) in cases {
        let answer = ask("acme", Some(origin)).await;
        assert_eq!(answer.verdict(), live_verdict, "{origin}: the live policy is enforced");
        let shadow = answer.shadow.unwrap_or_else(|| panic!("{origin}: no shadow decision"));
        assert_eq!(shadow.change(), change, "{origin}: {shadow:?}");
        assert!(!shadow.policy_version.is_empty());
        assert_ne!(shadow.policy_version, answer.policy_version);
    }
    let kept = ask("acme", Some("https://new.example")).await.shadow.unwrap();
    assert_eq!(kept.matched_pattern, "https://new.example");
    assert_eq!(kept.verdict(), Verdict::Allow);
    // No Origin: not CORS for both, shadowed all the same.
    assert_eq!(ask("acme", None).await.shadow.unwrap().change(), Change::Same);
    // No candidate, or no live tenant: no shadow.
    assert!(ask("beta", Some("https://beta.example")).await.shadow.is_none());
    assert!(ask("nobody", Some("https://new.example")).await.shadow.is_none());

    // ext_authz: the change is in the metadata, even on an allowed answer.
    let mut authz = AuthorizationClient::new(corsd.channel().await);
    let check = |origin: &str| authz_get("acme", origin);
    let answer = authz.check(check("https://old.example")).await.unwrap().into_inner();
    assert_eq!(answer.status.unwrap().code, 0, "allowed live");
    let metadata = answer.dynamic_metadata.expect("metadata on a changed answer");
    let change = metadata.fields.get("corsd_shadow_change").and_then(|v| v.kind.clone());
    assert_eq!(
        change,
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            "newly_denied".into()
        ))
    );
    let same = authz.check(check("https://nobody.example")).await.unwrap().into_inner();
    let fields = same.dynamic_metadata.expect("a denial carries metadata").fields;
    assert!(!fields.contains_key("corsd_shadow_change"), "{fields:?}");

    // The metric counts every shadowed decision, `same` included.
    let text = metrics(metrics_port).await;
    let count = |api: &str, change: &str| {
        sample(
            &text,
            &format!("corsd_shadow_decisions_total{{api=\"{api}\",change=\"{change}\"}}"),
        )
    };
    assert_eq!(count("corsd", "newly_allowed"), 2, "{text}");
    assert_eq!(count("corsd", "newly_denied"), 1);
    assert_eq!(count("corsd", "changed"), 1);
    assert_eq!(count("corsd", "same"), 2);
    assert_eq!(count("ext_authz", "newly_denied"), 1);
    assert_eq!(count("ext_authz", "same"), 1);

    // One log line per change other than `same`.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<serde_json::Value> = corsd
            .log()
            .lines()
            .filter(|l| l.contains("\"corsd::shadow\"") && l.contains("\"change\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 5 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 5, "{}", corsd.log());
    let first = &lines[0];
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["origin"], "https://new.example");
    assert_eq!(first["change"], "newly_allowed");
    assert_eq!(first["live"]["verdict"], "deny");
    assert_eq!(first["candidate"]["verdict"], "allow");
    assert_eq!(first["candidate"]["matched"], "https://new.example");
}

#[tokio::test]
async fn an_invalid_candidate_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let live = write_file(dir.path(), "policy.toml", &policy(&["https://a.example"], ""));
    let candidate = write_file(dir.path(), "candidate.toml", &policy(&["https://b.example"], ""));
    let corsd = Corsd::start(Path::new(&live), &["--shadow-policy", &candidate], dir.path());
    let mut client = CorsPolicyClient::new(corsd.channel().await);
    let first = client
        .check_origin(call("", Some("https://b.example")))
        .await
        .unwrap()
        .into_inner();
    let good_version = first.shadow.unwrap().policy_version;

    std::fs::write(&candidate, "[[entries]]\norigin = \"not a url\"\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let tenants = client
            .list_tenants(ListTenantsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tenants;
        let info = tenants.into_iter().next().unwrap();
        if !info.shadow_last_reload_error.is_empty() || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(info.shadow_last_reload_error.contains("candidate.toml:2"), "{info:?}");
    assert_eq!(info.shadow_version, good_version, "the last good candidate stays");
    assert!(
        info.last_reload_error.is_empty(),
        "the live policy is untouched: {info:?}"
    );
    let answer = client
        .check_origin(call("", Some("https://b.example")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.verdict(), Verdict::Deny);
    assert_eq!(answer.shadow.unwrap().change(), Change::NewlyAllowed);

    // A valid candidate again: in force, its error gone.
    std::fs::write(&candidate, policy(&["https://c.example"], "")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client
            .check_origin(call("", Some("https://c.example")))
            .await
            .unwrap()
            .into_inner();
        if answer.shadow.unwrap().change() == Change::NewlyAllowed {
            break;
        }
        assert!(Instant::now() < deadline, "the new candidate never came into force");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_candidate_that_does_not_load_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let live = write_file(dir.path(), "policy.toml", &policy(&["https://a.example"], ""));
    let candidate = write_file(dir.path(), "candidate.toml", "[[entries]]\norigin = \"not a url\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args([
            "serve",
            "--policy",
            &live,
            "--shadow-policy",
            &candidate,
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("candidate.toml:2:"), "{stderr}");
    assert!(stderr.contains("not a valid policy"), "{stderr}");
}

/// A candidate whose tenant has no live policy is ignored, with one warning;
/// under `--metrics-per-tenant` the shadow metric carries the tenant.
#[tokio::test]
async fn orphan_candidates_are_warned_of_and_tenants_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let (live, candidates) = platform(dir.path());
    write_file(&candidates, "ghost.toml", &policy(&["https://ghost.example"], ""));
    let metrics_port = free_port();
    let corsd = Corsd::start_dir(
        &live,
        &[
            "--shadow-policy-dir",
            candidates.to_str().unwrap(),
            "--metrics-per-tenant",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        dir.path(),
    );
    let mut client = CorsPolicyClient::new(corsd.channel().await);
    client
        .check_origin(call("acme", Some("https://new.example")))
        .await
        .unwrap();
    assert!(
        client
            .check_origin(call("ghost", Some("https://ghost.example")))
            .await
            .unwrap()
            .into_inner()
            .shadow
            .is_none()
    );
    let text = metrics(metrics_port).await;
    let series = "corsd_shadow_decisions_total{api=\"corsd\",change=\"newly_allowed\",tenant=\"acme\"}";
    assert_eq!(sample(&text, series), 1, "{text}");
    // The candidate is edited: still no live tenant, still one warning.
    write_file(&candidates, "ghost.toml", &policy(&["https://ghost2.example"], ""));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warnings = corsd
        .log()
        .matches("candidate policy for a tenant with no live policy")
        .count();
    assert_eq!(warnings, 1, "{}", corsd.log());
    assert!(corsd.log().contains("ghost"), "{}", corsd.log());
}

#[test]
fn check_shadow_prints_both_decisions_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let live = write_file(dir.path(), "policy.toml", &policy(&["https://a.example"], ""));
    let candidate = write_file(dir.path(), "candidate.toml", &policy(&["https://b.example"], ""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args([
            "check",
            "--policy",
            &live,
            "--shadow",
            &candidate,
            "--origin",
            "https://b.example",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the live verdict sets the exit code");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["verdict"], "deny");
    assert_eq!(printed["shadow"]["verdict"], "allow");
    assert_eq!(printed["shadow"]["reason"], "allowed");
    assert_eq!(printed["shadow"]["matched_pattern"], "https://b.example");
    assert_eq!(printed["shadow"]["change"], "newly_allowed");
    assert_eq!(
        printed["shadow"]["policy_version"],
        crate::common::version_of(&policy(&["https://b.example"], ""))
    );
}
