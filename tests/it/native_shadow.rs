//! A candidate policy in native mode (DESIGN.md section 15) through a real
//! Envoy: `corsd envoy-config --shadow-policy` puts it into the RBAC
//! filter's `shadow_matcher`, Envoy enforces the live policy alone, counts
//! `shadow_allowed` and `shadow_denied` as the candidate decides, and its
//! access log prints the candidate's result.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::envoy::{Envoy, envoy_binary, request_at, start_upstream};
use crate::common::write_file;
use crate::native::static_bootstrap;

/// The access-log line the README shows: the candidate's result beside the
/// status and the origin.
const ACCESS_LOG: &str =
    "%RESPONSE_CODE% %REQ(ORIGIN)% shadow=%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_engine_result)%\n";

fn policy(origins: &[&str]) -> String {
    origins
        .iter()
        .map(|o| format!("[[entries]]\norigin = \"{o}\"\n"))
        .collect()
}

/// Envoy's `shadow_allowed` and `shadow_denied` counters of the listener's RBAC filter.
async fn shadow_stats(admin_port: u16) -> (u64, u64) {
    let head = "GET /stats?filter=rbac HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let stats = request_at(admin_port, head).await.unwrap().body;
    let read = |name: &str| {
        stats
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(": ")?;
                key.ends_with(name).then(|| value.trim().parse::<u64>().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    (read("rbac.shadow_allowed"), read("rbac.shadow_denied"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_counts_what_the_candidate_decides_and_enforces_the_live_policy() {
    let Some(binary) = envoy_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let live = write_file(
        dir.path(),
        "live.toml",
        &policy(&["https://a.example.com", "https://old.example.com"]),
    );
    let candidate = write_file(
        dir.path(),
        "candidate.toml",
        &policy(&["https://a.example.com", "https://new.example.com"]),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["envoy-config", "--policy", &live, "--shadow-policy", &candidate])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fragment: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rbac = &fragment["http_filters"][0]["typed_config"];
    assert!(rbac.get("shadow_matcher").is_some(), "{rbac}");

    // The operator's bootstrap, with the access log the README shows.
    let mut config: Value = serde_yaml_ng::from_str(&static_bootstrap(&fragment, &[])).unwrap();
    let manager = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    manager["access_log"] = json!([{"name": "envoy.access_loggers.stdout", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "log_format": {"text_format_source": {"inline_string": ACCESS_LOG}}}}]);
    let upstream = start_upstream().await;
    let envoy = Envoy::start_text(
        &binary,
        &serde_yaml_ng::to_string(&config).unwrap(),
        &[(9000, upstream.port())],
        &[],
    )
    .await;

    let get = |origin: &str| {
        format!("GET /x HTTP/1.1\r\nHost: api.example.com\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n")
    };
    // (origin, live status, the candidate allows)
    let cases = [
        ("https://a.example.com", 200, true),
        ("https://old.example.com", 200, false),
        ("https://new.example.com", 403, true),
        ("https://evil.example.com", 403, false),
        ("https://new.example.com", 403, true),
    ];
    let (mut allowed, mut denied) = (0, 0);
    for (origin, status, candidate_allows) in cases {
        let response = request_at(envoy.port, &get(origin)).await.unwrap();
        assert_eq!(
            response.status, status,
            "{origin}: the live policy decides: {response:?}"
        );
        if candidate_allows {
            allowed += 1;
        } else {
            denied += 1;
        }
    }
    assert_eq!(shadow_stats(envoy.admin_port).await, (allowed, denied));

    // Envoy writes its access log out every 10 s at most.
    let deadline = Instant::now() + Duration::from_secs(15);
    let log = loop {
        let log = envoy.access_log();
        if log.lines().count() >= cases.len() || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), cases.len(), "{log}");
    assert_eq!(lines[1], "200 https://old.example.com shadow=denied", "{log}");
    assert_eq!(lines[2], "403 https://new.example.com shadow=allowed", "{log}");
}

/// Over ECDS (`serve --xds --shadow-policy`): each edit of the candidate is
/// pushed as a new version of the filter, and Envoy counts by the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecds_follows_every_edit_of_the_candidate() {
    let Some(binary) = envoy_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let live = write_file(dir.path(), "live.toml", &policy(&["https://a.example.com"]));
    let candidate = write_file(dir.path(), "candidate.toml", &policy(&["https://b.example.com"]));
    let corsd = crate::common::process::Corsd::start(
        std::path::Path::new(&live),
        &["--xds", "--shadow-policy", &candidate],
        dir.path(),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["envoy-config", "--policy", &live])
        .output()
        .unwrap();
    let fragment: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cors = &fragment["typed_per_filter_config"]["envoy.filters.http.cors"];
    let config = crate::native::xds_bootstrap(&[], cors, &fragment["local_reply_config"]);
    let upstream = start_upstream().await;
    let envoy = Envoy::start_text(&binary, &config, &[(9000, upstream.port()), (50051, corsd.port)], &[]).await;
    let get = |origin: &str| {
        format!("GET /x HTTP/1.1\r\nHost: api.example.com\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n")
    };
    // The filter arrives over ECDS; until then Envoy answers 500.
    let deadline = Instant::now() + Duration::from_secs(10);
    while request_at(envoy.port, &get("https://a.example.com"))
        .await
        .unwrap()
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "no filter from corsd: {}", corsd.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What one denied request from `origin` moves: (shadow_allowed, shadow_denied).
    let denied_moves = async |origin: &str| {
        let before = shadow_stats(envoy.admin_port).await;
        assert_eq!(request_at(envoy.port, &get(origin)).await.unwrap().status, 403);
        let after = shadow_stats(envoy.admin_port).await;
        (after.0 - before.0, after.1 - before.1)
    };
    assert_eq!(
        denied_moves("https://b.example.com").await,
        (1, 0),
        "b is the candidate's"
    );

    // The candidate drops b: Envoy's shadow now denies it.
    std::fs::write(&candidate, policy(&["https://c.example.com"])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if denied_moves("https://b.example.com").await == (0, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edited candidate never reached Envoy: {}",
            corsd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
