//! The table of invalid policies (`tests/cases/invalid_policies.toml`)
//! through every layer that reports on a policy file: the core's compile,
//! `corsd validate` as a real process, and a real server's
//! `PolicyInfo.last_reload_error` after a real file is rewritten.

use std::process::Command;
use std::time::Duration;

use crate::common;
use common::serve::{TestServer, wait_for};

#[derive(serde::Deserialize)]
struct Table {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    text: String,
    errors: Vec<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(common::cases_dir().join("invalid_policies.toml")).unwrap();
    let table: Table = toml::from_str(&text).unwrap();
    assert!(table.case.len() >= 10, "the table lost its cases");
    for case in &table.case {
        assert!(!case.errors.is_empty(), "{}: a case lists what is wrong", case.name);
    }
    table.case
}

#[test]
fn through_compile() {
    for case in cases() {
        let error = corsd::core::Policy::compile("policy.toml", case.text.as_bytes())
            .map(|_| ())
            .expect_err(&case.name);
        let got = error.display("policy.toml").to_string();
        assert_eq!(got.lines().collect::<Vec<_>>(), case.errors, "{}", case.name);
        assert_eq!(error.error_count(), case.errors.len(), "{}", case.name);
    }
}

#[test]
fn through_validate() {
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        common::write_file(dir.path(), "policy.toml", &case.text);
        let out = Command::new(env!("CARGO_BIN_EXE_corsd"))
            .args(["validate", "policy.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", case.name);
        let n = case.errors.len();
        let mut want = case.errors.join("\n");
        want.push_str(&format!(
            "\npolicy.toml: {n} error{}: not a valid policy\n",
            if n == 1 { "" } else { "s" }
        ));
        assert_eq!(String::from_utf8_lossy(&out.stderr), want, "{}", case.name);
        assert!(out.stdout.is_empty(), "{}", case.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_last_reload_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = "[[entries]]\norigin = \"https://a.example\"\n";
    let path = common::write_file(dir.path(), "policy.toml", good);
    let server = TestServer::start_with_file(path.as_ref()).await;
    corsd::reload::spawn(path.clone().into(), server.store.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut client = server.client().await;
    for case in cases() {
        std::fs::write(&path, &case.text).unwrap();
        let want: Vec<String> = case
            .errors
            .iter()
            .map(|e| e.replacen("policy.toml", &path, 1))
            .collect();
        let want = want.join("\n");
        wait_for(&mut client, Duration::from_secs(2), &case.name, |r| {
            r.policy.as_ref().unwrap().last_reload_error == want
        })
        .await;
        // The last good policy stays in force all along.
        let info = common::serve::info(&mut client).await.policy.unwrap();
        assert_eq!(info.version, common::version_of(good), "{}", case.name);
    }
    server.stop().await;
}
