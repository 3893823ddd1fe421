//! The operators' kit in `deploy/`: the Prometheus alert rules pass their
//! promtool unit tests, every query of the Grafana dashboard compiles in
//! promtool, and every metric either of them reads is one corsd serves.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use corsd::grpc::Store;
use corsd::observe::metrics::Metrics;

use crate::common;

fn promtool() -> Option<PathBuf> {
    common::tool(
        "CORSD_PROMTOOL",
        "/usr/bin/promtool".into(),
        "apt-get install prometheus",
    )
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?}: {text}");
    text
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let checked = run(Command::new(&promtool).args(["check", "rules", "deploy/prometheus/alerts.yaml"]));
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tested = run(Command::new(&promtool).args(["test", "rules", "deploy/prometheus/alerts.test.yaml"]));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_query_of_the_dashboard_compiles() {
    let Some(promtool) = promtool() else { return };
    let out = run(Command::new("python3")
        .arg("scripts/check-dashboard")
        .arg("--promtool")
        .arg(promtool));
    assert!(out.contains("pass promtool check rules"), "{out}");
}

/// The names `text` reads: `corsd_*` and `process_*`, a histogram's
/// `_bucket`, `_sum` and `_count` series under the histogram's name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for start in ["corsd_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(start) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|n| n.ends_with("_seconds")))
                .unwrap_or(name);
            names.insert(name.to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_kit_reads_is_served() {
    // Served as corsd serves them with TLS on (the certificate gauge).
    let dir = tempfile::tempdir().unwrap();
    let ca = common::pki::Ca::new("kit-ca");
    let (cert, key) = ca.issue(&common::pki::Subject::server()).write(dir.path(), "server");
    let tls = corsd::tls::TlsConfig::load(corsd::tls::TlsFiles {
        cert,
        key,
        client_ca: None,
    })
    .unwrap();
    let store = Store::for_test("[[entries]]\norigin = \"https://a.example\"\n").unwrap();
    let metrics = Metrics::new(Arc::clone(&store), false)
        .unwrap()
        .with_tls(Arc::clone(&tls))
        .unwrap();
    let served = metric_names(&metrics.encode(true).unwrap());
    for file in ["deploy/prometheus/alerts.yaml", "deploy/grafana/corsd.json"] {
        let read = metric_names(&std::fs::read_to_string(file).unwrap());
        assert!(!read.is_empty(), "{file} reads no metric");
        let missing: Vec<_> = read.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "{file} reads metrics corsd does not serve: {missing:?}"
        );
    }
    // The certificate gauge says when the served certificate expires.
    let exposition = metrics.encode(true).unwrap();
    let not_after: f64 = exposition
        .lines()
        .find_map(|l| l.strip_prefix("corsd_tls_certificate_not_after_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(not_after as i64, tls.not_after_unix());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(not_after > now, "{not_after} is not in the future");
    assert!(exposition.contains("corsd_ready 1"), "{exposition}");
}
