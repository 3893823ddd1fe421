//! The command line contract: `corsd validate` and `corsd check`, run as a
//! real process on real files.

use crate::common;

use std::path::Path;

use crate::common::write_file;
use std::process::{Command, Output};

fn corsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corsd")).args(args).output().unwrap()
}

#[test]
fn validate_reports_every_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "bad.toml",
        r#"label = "acme"
colour = "blue"

[cors]
allow_methods = ["GET", "TRACE"]
max_age = 86401
allow_header = ["x-custom"]

[[entries]]
origin = "https://example.com/"

[[entries]]
origin = "http://example.com"
note = "plain http"

[[entries]]
  origin = "https://*.co.uk"
"#,
    );
    let out = corsd(&["validate", &file]);
    assert_eq!(out.status.code(), Some(1));
    let want = format!(
        "{file}:2:1: unknown key `colour`: the file takes `label`, `cors`, `scope`, `entries`
{file}:5:25: `TRACE` can never be allowed: browsers forbid `TRACE` in requests
{file}:6:11: `max_age` must be a whole number of seconds from 0 to 86400, not `86401`
{file}:7:1: unknown key `allow_header`: did you mean `allow_headers`?
{file}:10:10: invalid origin `https://example.com/`: remove the trailing \"/\": an origin has no path
{file}:13:10: invalid origin `http://example.com`: `http` is allowed only for localhost and loopback addresses: write `https://example.com`
{file}:17:12: invalid origin `https://*.co.uk`: `*.co.uk` would cover the public suffix `co.uk`: put the wildcard in front of a registrable domain, as in `*.example.co.uk`
{file}: 7 errors: not a valid policy
"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), want);
    assert!(out.stdout.is_empty());
}

#[test]
fn validate_exit_codes_and_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(
        dir.path(),
        "good.toml",
        "[[entries]]\norigin = \"https://a.example\"\n\n[[entries]]\norigin = \"HTTPS://A.example:443\"\n",
    );
    let out = corsd(&["validate", &good]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{good}:5:10: warning: `https://a.example` repeats the entry on line 2 (`HTTPS://A.example:443` normalises to `https://a.example`)\n"
        )
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid policy"));

    let no_entries = write_file(dir.path(), "none.toml", "# nothing allowed yet\n");
    assert_eq!(corsd(&["validate", &no_entries]).status.code(), Some(0));

    let empty = write_file(dir.path(), "empty.toml", "");
    let out = corsd(&["validate", &empty]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with(&format!("{empty}:1:1: the file is empty")));

    let syntax = write_file(dir.path(), "syntax.toml", "[[entries]]\norigin = \"https://a.example\n");
    let out = corsd(&["validate", &syntax]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with(&format!("{syntax}:2:")));

    let missing = dir.path().join("missing.toml");
    assert_eq!(corsd(&["validate", missing.to_str().unwrap()]).status.code(), Some(2));
    assert_eq!(corsd(&["validate"]).status.code(), Some(2));
    assert_eq!(corsd(&["validate", &good, "--bogus"]).status.code(), Some(2));
    assert_eq!(corsd(&["validate", "--help"]).status.code(), Some(0));
}

#[test]
fn validate_accepts_the_example_policy() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.toml");
    let out = corsd(&["validate", example.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[derive(serde::Deserialize)]
struct JsonDecision {
    verdict: String,
    reason: String,
    preflight: bool,
    respond_status: u32,
    response_headers: Vec<JsonHeader>,
    matched_pattern: String,
    policy_version: String,
}

#[derive(serde::Deserialize)]
struct JsonHeader {
    name: String,
    value: String,
    append: bool,
}

#[test]
fn check_replays_the_decision_table() {
    let dir = tempfile::tempdir().unwrap();
    let files: std::collections::HashMap<String, String> = common::policies()
        .iter()
        .map(|(name, text)| (name.clone(), write_file(dir.path(), &format!("{name}.toml"), text)))
        .collect();
    common::replay(|_, r, _| {
        let mut args: Vec<String> = vec![
            "check".into(),
            "--json".into(),
            "--policy".into(),
            files[&r.policy].clone(),
        ];
        if let Some(origin) = &r.origin {
            args.extend(["--origin".into(), origin.clone()]);
        }
        args.extend(["--method".into(), r.method.clone()]);
        if let Some(m) = &r.request_method {
            args.extend(["--request-method".into(), m.clone()]);
        }
        for h in &r.request_headers {
            args.push(format!("--request-headers={h}"));
        }
        if r.private_network {
            args.push("--private-network".into());
        }
        args.extend([
            "--scheme".into(),
            r.scheme.clone(),
            "--authority".into(),
            r.authority.clone(),
        ]);
        args.push(format!("--path={}", r.path));
        if args.iter().any(|a| a.contains('\0')) {
            return None;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_corsd")).args(&args).output().unwrap();
        let d: JsonDecision = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        let want_code = if d.verdict == "deny" { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(want_code), "{args:?}");
        Some(common::Outcome {
            verdict: d.verdict,
            reason: d.reason,
            status: d.respond_status,
            preflight: d.preflight,
            matched: d.matched_pattern,
            headers: d
                .response_headers
                .into_iter()
                .map(|h| (h.name, h.value, h.append))
                .collect(),
            version: d.policy_version,
        })
    });
}

#[test]
fn check_defaults_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(
        dir.path(),
        "p.toml",
        "[[entries]]\norigin = \"https://app.example.org\"\n",
    );
    // --request-method alone makes an OPTIONS preflight.
    let out = corsd(&[
        "check",
        "--policy",
        &policy,
        "--origin",
        "https://app.example.org",
        "--request-method",
        "PUT",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let d: JsonDecision = serde_json::from_slice(&out.stdout).unwrap();
    assert!(d.preflight);
    assert_eq!(d.respond_status, 204);
    // No --origin: no Origin header.
    let out = corsd(&["check", "--policy", &policy, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let d: JsonDecision = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((d.verdict.as_str(), d.reason.as_str()), ("not_cors", "no_origin"));
    // Deny exits 1, also in text mode.
    let out = corsd(&["check", "--policy", &policy, "--origin", "https://evil.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("deny (origin_not_allowed)"));
    // An invalid policy or a missing file: the check could not be made.
    let bad = write_file(dir.path(), "bad.toml", "[[entries]]\norigin = \"http://example.com\"\n");
    let out = corsd(&["check", "--policy", &bad, "--origin", "https://app.example.org"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{bad}:2:10: invalid origin")));
    assert_eq!(
        corsd(&["check", "--policy", "/nonexistent/p.toml"]).status.code(),
        Some(2)
    );
    assert_eq!(corsd(&["check"]).status.code(), Some(2));
}
