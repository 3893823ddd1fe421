//! `corsd.v1.PolicyAdmin` over a policy directory (DESIGN.md section 17),
//! on a real `corsd serve`: create, read, edit, replace and delete tenants,
//! each write in force when it returns; errors and their details;
//! optimistic concurrency; per-tenant tokens; the audit log and metric.

use std::time::{Duration, Instant};

use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::grpc::pb::policy_admin_client::PolicyAdminClient;
use corsd::grpc::pb::{
    AddEntryRequest, DeletePolicyRequest, GetPolicyRequest, ListTenantsRequest, PutPolicyRequest, RemoveEntryRequest,
    Verdict,
};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::common::envoy::{free_port, request_at};
use crate::common::process::Corsd;
use crate::common::{check_get, version_of, write_file};

const ADMIN_TOKEN: &str = "platform-operators";
const ACME_TOKEN: &str = "acme-admin-pages";

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn allows(channel: &Channel, tenant: &str, origin: &str) -> bool {
    let answer = CorsPolicyClient::new(channel.clone())
        .check_origin(check_get(tenant, Some(origin)))
        .await
        .unwrap()
        .into_inner();
    answer.verdict() == Verdict::Allow
}

#[tokio::test]
async fn tenants_are_created_edited_and_deleted_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("policies");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&tokens).unwrap();
    write_file(
        &live,
        "beta.toml",
        "[[entries]]\norigin = \"https://beta.example.com\"\n",
    );
    let admin_token = write_file(dir.path(), "admin.token", ADMIN_TOKEN);
    write_file(&tokens, "acme.token", ACME_TOKEN);
    let metrics_port = free_port();
    let corsd = Corsd::start_dir(
        &live,
        &[
            "--admin-token-file",
            &admin_token,
            "--tenant-token-dir",
            tokens.to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        dir.path(),
    );
    let channel = corsd.channel().await;
    let mut api = PolicyAdminClient::new(channel.clone());

    // The platform creates acme; its token may not.
    let text = "# acme's allowlist\n[[entries]]\norigin = \"https://app.acme.example.com\"\n";
    let put = |token: &str, text: &str, expected: &str| {
        with_token(
            PutPolicyRequest {
                tenant: "acme".into(),
                text: text.into(),
                expected_version: expected.into(),
            },
            token,
        )
    };
    let refused = api.put_policy(put(ACME_TOKEN, text, "")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let created = api.put_policy(put(ADMIN_TOKEN, text, "")).await.unwrap().into_inner();
    assert_eq!(created.version, version_of(text));
    // In force when the call returns.
    assert!(allows(&channel, "acme", "https://app.acme.example.com").await);
    let again = api.put_policy(put(ADMIN_TOKEN, text, "")).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // acme's admin pages read and edit acme, and nothing else.
    let got = api
        .get_policy(with_token(GetPolicyRequest { tenant: "acme".into() }, ACME_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.text.as_str(), got.version.as_str()),
        (text, created.version.as_str())
    );
    let other = api
        .get_policy(with_token(GetPolicyRequest { tenant: "beta".into() }, ACME_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let add = |origin: &str, expected: &str| {
        with_token(
            AddEntryRequest {
                tenant: "acme".into(),
                origin: origin.into(),
                note: "partner".into(),
                expected_version: expected.into(),
            },
            ACME_TOKEN,
        )
    };
    let added = api
        .add_entry(add("https://Partner.Example.com", &created.version))
        .await
        .unwrap()
        .into_inner();
    assert!(allows(&channel, "acme", "https://partner.example.com").await);
    let file = std::fs::read_to_string(live.join("acme.toml")).unwrap();
    assert!(file.starts_with("# acme's allowlist\n"), "comments kept: {file}");
    assert!(
        file.contains("origin = \"https://partner.example.com\"\nnote = \"partner\""),
        "{file}"
    );
    assert_eq!(added.version, version_of(&file));

    // A stale version: ABORTED, nothing written.
    let stale = api
        .add_entry(add("https://late.example.com", &created.version))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert_eq!(std::fs::read_to_string(live.join("acme.toml")).unwrap(), file);
    // A duplicate after normalisation, an absent origin, a bad origin.
    let duplicate = api
        .add_entry(add("https://partner.example.com:443", ""))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    let bad = api.add_entry(add("https://*.com", "")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let violations = bad
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations;
    assert_eq!(violations[0].field, "origin");
    assert!(
        violations[0].description.contains("invalid origin `https://*.com`"),
        "{violations:?}"
    );
    let absent = api
        .remove_entry(with_token(
            RemoveEntryRequest {
                tenant: "acme".into(),
                origin: "https://nobody.example.com".into(),
                expected_version: String::new(),
            },
            ACME_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(absent.code(), Code::NotFound);
    let removed = api
        .remove_entry(with_token(
            RemoveEntryRequest {
                tenant: "acme".into(),
                origin: "https://partner.example.com".into(),
                expected_version: added.version.clone(),
            },
            ACME_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!allows(&channel, "acme", "https://partner.example.com").await);

    // An invalid replacement: every error as a field violation of `text`.
    let invalid = "[[entries]]\norigin = \"not a url\"\n[[entries]]\norigin = \"https://*\"\n";
    let refused = api
        .put_policy(put(ACME_TOKEN, invalid, &removed.version))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let violations = refused.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations.iter().all(|v| v.field == "text"));
    assert!(violations[0].description.starts_with("acme.toml:2:"), "{violations:?}");
    assert!(violations[1].description.starts_with("acme.toml:4:"), "{violations:?}");

    // ListTenants with acme's token lists acme alone.
    let listed = CorsPolicyClient::new(channel.clone())
        .list_tenants(with_token(ListTenantsRequest::default(), ACME_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(listed.iter().map(|t| t.tenant.as_str()).collect::<Vec<_>>(), ["acme"]);

    // Delete: the platform only; the tenant is gone when the call returns.
    let delete = |token: &str| {
        with_token(
            DeletePolicyRequest {
                tenant: "acme".into(),
                expected_version: removed.version.clone(),
            },
            token,
        )
    };
    assert_eq!(
        api.delete_policy(delete(ACME_TOKEN)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    api.delete_policy(delete(ADMIN_TOKEN)).await.unwrap();
    assert!(!live.join("acme.toml").exists());
    let gone = api
        .get_policy(with_token(GetPolicyRequest { tenant: "acme".into() }, ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let bad_name = api
        .get_policy(with_token(
            GetPolicyRequest {
                tenant: "Bad_Name".into(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), Code::InvalidArgument);

    // One audit line per write or refusal, and the metric.
    let deadline = Instant::now() + Duration::from_secs(5);
    let audit: Vec<serde_json::Value> = loop {
        let lines: Vec<serde_json::Value> = corsd
            .log()
            .lines()
            .filter(|l| l.contains("\"corsd::audit\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 13 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let calls: Vec<(String, String, String)> = audit
        .iter()
        .map(|l| {
            (
                l["call"].as_str().unwrap().to_owned(),
                l["caller"].as_str().unwrap().to_owned(),
                l["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |call: &str, caller: &str, result: &str| (call.to_owned(), caller.to_owned(), result.to_owned());
    assert_eq!(
        calls[0],
        expect("PutPolicy", "tenant-token:acme", "permission_denied"),
        "{calls:?}"
    );
    assert_eq!(calls[1], expect("PutPolicy", "admin-token", "ok"));
    assert_eq!(calls[2], expect("PutPolicy", "admin-token", "already_exists"));
    assert_eq!(calls[3], expect("GetPolicy", "none", "permission_denied"));
    assert_eq!(calls[4], expect("AddEntry", "tenant-token:acme", "ok"));
    assert_eq!(audit[4]["origin"], "https://Partner.Example.com");
    assert_eq!(audit[4]["old_version"], created.version.as_str());
    assert_eq!(audit[4]["new_version"], added.version.as_str());
    assert_eq!(audit[4]["tenant"], "acme");
    assert_eq!(calls[5], expect("AddEntry", "tenant-token:acme", "aborted"));
    let metrics = request_at(metrics_port, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("corsd_admin_writes_total{call=\"AddEntry\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("corsd_admin_writes_total{call=\"PutPolicy\",result=\"already_exists\"} 1"));

    // corsd entries add|remove --server: the same edits from a shell.
    let entries = |verb: &str, origin: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
            .args(["entries", verb, "--server", &format!("127.0.0.1:{}", corsd.port)])
            .args(["--tenant", "beta", "--token-file", &admin_token, origin])
            .output()
            .unwrap()
    };
    let added = entries("add", "https://shell.example.com");
    assert!(added.status.success(), "{added:?}");
    let version = String::from_utf8(added.stdout).unwrap();
    assert_eq!(
        version.trim(),
        version_of(&std::fs::read_to_string(live.join("beta.toml")).unwrap())
    );
    assert!(allows(&channel, "beta", "https://shell.example.com").await);
    let twice = entries("add", "https://shell.example.com");
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("already listed"),
        "{twice:?}"
    );
    let removed = entries("remove", "https://shell.example.com");
    assert!(removed.status.success(), "{removed:?}");
    assert!(!allows(&channel, "beta", "https://shell.example.com").await);
}

/// A read-only bind mount over a directory, undone when dropped.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &std::path::Path) -> Option<ReadOnly> {
        let run = |args: &[&str]| {
            std::process::Command::new("mount")
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let path = dir.to_str().unwrap();
        if !run(&["--bind", path, path]) {
            return None;
        }
        let mounted = ReadOnly(dir.to_path_buf());
        run(&["-o", "remount,ro,bind", path]).then_some(mounted)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A store mounted read-only (a ConfigMap): writes are FAILED_PRECONDITION,
/// reads still work.
#[tokio::test]
async fn a_read_only_store_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("policies");
    std::fs::create_dir_all(&live).unwrap();
    let text = "[[entries]]\norigin = \"https://a.example.com\"\n";
    write_file(&live, "acme.toml", text);
    let Some(_read_only) = ReadOnly::mount(&live) else {
        let why = "cannot make a read-only bind mount here (mount needs root)";
        assert!(std::env::var("CI").is_err(), "{why}");
        println!("skipped: {why}");
        return;
    };
    let corsd = Corsd::start_dir(&live, &[], dir.path());
    let mut api = PolicyAdminClient::new(corsd.channel().await);
    let refused = api
        .add_entry(AddEntryRequest {
            tenant: "acme".into(),
            origin: "https://b.example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("read-only"), "{refused:?}");
    let got = api
        .get_policy(GetPolicyRequest { tenant: "acme".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.text, text);
}

/// With no credential configured, writes are refused on an address other
/// machines can reach (and admitted on a local one).
#[tokio::test]
async fn without_a_credential_writes_need_a_local_address() {
    use corsd::grpc::admin::AdminGate;
    use corsd::grpc::policy_admin::{PolicyAdminService, PolicySource};
    use corsd::grpc::stubs::policy_admin_server::PolicyAdmin;

    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "policy.toml",
        "[[entries]]\norigin = \"https://a.example.com\"\n",
    );
    let store = corsd::grpc::Store::for_test("[[entries]]\norigin = \"https://a.example.com\"\n").unwrap();
    let service = |local: bool| {
        PolicyAdminService::new(
            store.clone(),
            PolicySource::File(file.clone().into()),
            AdminGate::open(),
            corsd::observe::audit::AuditLog::new(),
        )
        .listening_locally(local)
    };
    let add = || {
        tonic::Request::new(AddEntryRequest {
            origin: "https://b.example.com".into(),
            ..Default::default()
        })
    };
    let refused = service(false).add_entry(add()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("--admin-token-file"), "{refused:?}");
    // Reads stay open, as ListEntries does.
    service(false)
        .get_policy(tonic::Request::new(GetPolicyRequest::default()))
        .await
        .unwrap();
    // Locally the write goes through: the file is edited, and with no
    // reloader here it never comes into force, which the call says.
    let edited = service(true).add_entry(add()).await.unwrap_err();
    assert_eq!(edited.code(), Code::DeadlineExceeded, "{edited:?}");
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("https://b.example.com")
    );
}
