//! `corsd serve --policy-etcd` on a real etcd (DESIGN.md section 17):
//! start-up at one revision (an invalid key not served), every change in
//! force within a second, an invalid change keeping the last good policy, a
//! deleted key's tenant gone; etcd stopped and started under load: no
//! decision fails, `corsd_policy_source_up` is 0 meanwhile, writes are
//! UNAVAILABLE; etcd back: corsd follows again.

use std::time::{Duration, Instant};

use corsd::etcd::Etcd;
use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::grpc::pb::{ListTenantsRequest, Verdict};
use tonic::transport::Channel;

use crate::common::envoy::{free_port, request_at};
use crate::common::etcd::{cluster, etcd_binary};
use crate::common::{check_get, version_of};

fn policy(origin: &str) -> String {
    format!("[[entries]]\norigin = \"{origin}\"\n")
}

async fn verdict(channel: &Channel, tenant: &str, origin: &str) -> Verdict {
    CorsPolicyClient::new(channel.clone())
        .check_origin(check_get(tenant, Some(origin)))
        .await
        .unwrap()
        .into_inner()
        .verdict()
}

/// Waits up to `within` for `ok`.
async fn eventually(within: Duration, what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !ok().await {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn source_up(port: u16) -> bool {
    let metrics = request_at(port, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap()
        .body;
    metrics.lines().any(|l| l == "corsd_policy_source_up 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_follow_etcd_and_survive_its_outage() {
    let Some(binary) = etcd_binary() else { return };
    let mut members = cluster(&binary, 1).await;
    let url = members[0].client_url.clone();
    let etcd = Etcd::new(std::slice::from_ref(&url), "/corsd/tenants/").unwrap();
    etcd.put_if("acme", policy("https://a.example.com").as_bytes(), 0)
        .await
        .unwrap()
        .unwrap();
    etcd.put_if("beta", b"[[entries]]\norigin = \"not a url\"\n", 0)
        .await
        .unwrap()
        .unwrap();
    etcd.put_if("Not_A_Tenant", policy("https://x.example.com").as_bytes(), 0)
        .await
        .unwrap()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let corsd = crate::common::process::Corsd::start_etcd(
        &url,
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
        dir.path(),
    );
    let channel = corsd.channel().await;
    assert_eq!(verdict(&channel, "acme", "https://a.example.com").await, Verdict::Allow);
    // An invalid key at start-up: its tenant is not served.
    assert_eq!(verdict(&channel, "beta", "https://b.example.com").await, Verdict::Deny);
    assert!(corsd.log().contains("not a tenant name"), "{}", corsd.log());
    assert!(source_up(metrics_port).await);

    // A change through etcd is in force within a second.
    let current = etcd.get("acme").await.unwrap().unwrap().mod_revision;
    let written = Instant::now();
    etcd.put_if("acme", policy("https://a2.example.com").as_bytes(), current)
        .await
        .unwrap()
        .unwrap();
    eventually(Duration::from_secs(1), "the new version in force", async || {
        verdict(&channel, "acme", "https://a2.example.com").await == Verdict::Allow
    })
    .await;
    println!("in force {:?} after the write", written.elapsed());
    let beta = policy("https://b.example.com");
    etcd.put_if(
        "beta",
        beta.as_bytes(),
        etcd.get("beta").await.unwrap().unwrap().mod_revision,
    )
    .await
    .unwrap()
    .unwrap();
    eventually(Duration::from_secs(1), "beta served once valid", async || {
        verdict(&channel, "beta", "https://b.example.com").await == Verdict::Allow
    })
    .await;

    // An invalid change keeps the last good policy and says why.
    let current = etcd.get("acme").await.unwrap().unwrap().mod_revision;
    etcd.put_if("acme", b"[[entries]]\norigin = \"nope\"\n", current)
        .await
        .unwrap()
        .unwrap();
    eventually(Duration::from_secs(2), "the rejected version reported", async || {
        let tenants = CorsPolicyClient::new(channel.clone())
            .list_tenants(ListTenantsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tenants;
        tenants
            .iter()
            .any(|t| t.tenant == "acme" && t.last_reload_error.contains("acme.toml:2"))
    })
    .await;
    assert_eq!(
        verdict(&channel, "acme", "https://a2.example.com").await,
        Verdict::Allow
    );

    // A deleted key: its tenant is gone.
    let current = etcd.get("beta").await.unwrap().unwrap().mod_revision;
    etcd.delete_if("beta", current).await.unwrap().unwrap();
    eventually(Duration::from_secs(1), "beta gone", async || {
        verdict(&channel, "beta", "https://b.example.com").await == Verdict::Deny
    })
    .await;

    // etcd stops and starts again under load: no decision fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (channel, stop) = (channel.clone(), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut calls, mut failed) = (0u64, 0u64);
            // Bounded: the outage below lasts seconds, not minutes.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && calls < 1_000_000 {
                calls += 1;
                let answer = CorsPolicyClient::new(channel.clone())
                    .check_origin(check_get("acme", Some("https://a2.example.com")))
                    .await;
                if !answer.is_ok_and(|a| a.into_inner().verdict() == Verdict::Allow) {
                    failed += 1;
                }
            }
            (calls, failed)
        })
    };
    // etcd stops: decisions go on, health stays, the source is down.
    members[0].stop();
    eventually(Duration::from_secs(10), "the source reported down", async || {
        !source_up(metrics_port).await
    })
    .await;
    for _ in 0..50 {
        assert_eq!(
            verdict(&channel, "acme", "https://a2.example.com").await,
            Verdict::Allow
        );
    }
    let health = request_at(metrics_port, "GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(health.status, 200, "still ready without etcd");
    // Writes answer UNAVAILABLE within 5 s.
    let asked = Instant::now();
    let refused = corsd::grpc::pb::policy_admin_client::PolicyAdminClient::new(channel.clone())
        .add_entry(corsd::grpc::pb::AddEntryRequest {
            tenant: "acme".into(),
            origin: "https://down.example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(asked.elapsed() < Duration::from_secs(5), "{:?}", asked.elapsed());

    // etcd is back: corsd follows again.
    members[0].start();
    eventually(Duration::from_secs(10), "etcd answering", async || {
        etcd.get("acme").await.is_ok()
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failed) = load.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} of {calls} decisions failed while etcd stopped and started"
    );
    assert!(calls > 100, "only {calls} decisions");
    let current = etcd.get("acme").await.unwrap().unwrap().mod_revision;
    let text = policy("https://a3.example.com");
    etcd.put_if("acme", text.as_bytes(), current).await.unwrap().unwrap();
    eventually(
        Duration::from_secs(10),
        "the change after the outage in force",
        async || verdict(&channel, "acme", "https://a3.example.com").await == Verdict::Allow,
    )
    .await;
    assert!(source_up(metrics_port).await);
    let tenants = CorsPolicyClient::new(channel.clone())
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(tenants[0].version, version_of(&text));
}

/// Three replicas on one three-member etcd: a write through one is in force
/// on all within a second; two writes with one expected version: exactly
/// one wins; a member killed under load fails no decision and no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_etcd() {
    use corsd::grpc::pb::policy_admin_client::PolicyAdminClient;
    use corsd::grpc::pb::{AddEntryRequest, PutPolicyRequest};

    let Some(binary) = etcd_binary() else { return };
    let mut members = cluster(&binary, 3).await;
    let urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<_> = (0..3)
        .map(|_| crate::common::process::Corsd::start_etcd(&urls.join(","), &[], dir.path()))
        .collect();
    let mut channels = Vec::new();
    for replica in &replicas {
        channels.push(replica.channel().await);
    }

    // A tenant created through replica 0 is in force on every replica.
    let text = policy("https://a.example.com");
    let created = PolicyAdminClient::new(channels[0].clone())
        .put_policy(PutPolicyRequest {
            tenant: "acme".into(),
            text: text.clone(),
            expected_version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let written = Instant::now();
    for channel in &channels {
        eventually(Duration::from_secs(1), "in force on every replica", async || {
            verdict(channel, "acme", "https://a.example.com").await == Verdict::Allow
        })
        .await;
    }
    println!(
        "in force on 3 replicas {:?} after the write returned",
        written.elapsed()
    );

    // Two edits through two replicas, from the same version: one wins.
    let add = |origin: &str| AddEntryRequest {
        tenant: "acme".into(),
        origin: origin.into(),
        note: String::new(),
        expected_version: created.version.clone(),
    };
    let (mut first, mut second) = (
        PolicyAdminClient::new(channels[1].clone()),
        PolicyAdminClient::new(channels[2].clone()),
    );
    let (one, two) = tokio::join!(
        first.add_entry(add("https://b.example.com")),
        second.add_entry(add("https://c.example.com")),
    );
    let codes = [
        one.as_ref().map_or_else(|e| e.code(), |_| tonic::Code::Ok),
        two.as_ref().map_or_else(|e| e.code(), |_| tonic::Code::Ok),
    ];
    assert!(
        codes.contains(&tonic::Code::Ok) && codes.contains(&tonic::Code::Aborted),
        "{codes:?}"
    );

    // A member killed under load: no decision fails, writes go on.
    let load = {
        let channels = channels.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            let started = Instant::now();
            let mut calls = 0;
            while started.elapsed() < Duration::from_secs(3) {
                for channel in &channels {
                    calls += 1;
                    let answer = CorsPolicyClient::new(channel.clone())
                        .check_origin(check_get("acme", Some("https://a.example.com")))
                        .await;
                    if !answer.is_ok_and(|a| a.into_inner().verdict() == Verdict::Allow) {
                        failed += 1;
                    }
                }
            }
            (calls, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    members[0].stop();
    let added = PolicyAdminClient::new(channels[0].clone())
        .add_entry(AddEntryRequest {
            tenant: "acme".into(),
            origin: "https://d.example.com".into(),
            ..Default::default()
        })
        .await;
    assert!(added.is_ok(), "a write with one member down: {added:?}");
    let (calls, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "{failed} of {calls} decisions failed with a member down");
    for channel in &channels {
        eventually(
            Duration::from_secs(2),
            "the write with a member down in force",
            async || verdict(channel, "acme", "https://d.example.com").await == Verdict::Allow,
        )
        .await;
    }
}

/// etcd serving over TLS and asking for client certificates: corsd with
/// --etcd-ca, --etcd-cert and --etcd-key follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_follow_etcd_over_mutual_tls() {
    use crate::common::pki::{Ca, Subject};

    let Some(binary) = etcd_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("etcd-ca");
    let ca_file = ca.write(dir.path(), "ca");
    let (server_cert, server_key) = ca.issue(&Subject::server()).write(dir.path(), "etcd");
    let (client_cert, client_key) = ca.issue(&Subject::client(&["corsd"])).write(dir.path(), "corsd");
    let member = crate::common::etcd::tls_member(&binary, &ca_file, &server_cert, &server_key);
    let tls = corsd::etcd::EtcdTls {
        ca: Some(ca_file.clone()),
        identity: Some((client_cert.clone(), client_key.clone())),
    };
    let etcd = Etcd::with_tls(std::slice::from_ref(&member.client_url), "/corsd/tenants/", Some(&tls)).unwrap();
    let started = Instant::now();
    while etcd
        .put_if("acme", policy("https://a.example.com").as_bytes(), 0)
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "etcd over TLS did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let corsd = crate::common::process::Corsd::start_etcd(
        &member.client_url,
        &[
            "--etcd-ca",
            ca_file.to_str().unwrap(),
            "--etcd-cert",
            client_cert.to_str().unwrap(),
            "--etcd-key",
            client_key.to_str().unwrap(),
        ],
        dir.path(),
    );
    let channel = corsd.channel().await;
    assert_eq!(verdict(&channel, "acme", "https://a.example.com").await, Verdict::Allow);
    let current = etcd.get("acme").await.unwrap().unwrap().mod_revision;
    etcd.put_if("acme", policy("https://b.example.com").as_bytes(), current)
        .await
        .unwrap()
        .unwrap();
    eventually(Duration::from_secs(1), "the change over TLS in force", async || {
        verdict(&channel, "acme", "https://b.example.com").await == Verdict::Allow
    })
    .await;
}

/// corsd's member goes away while the others change tenants and compact
/// past what corsd has seen: back again, its watch is refused, and corsd
/// reads every tenant again and puts the differences in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compaction_reads_everything_again() {
    let Some(binary) = etcd_binary() else { return };
    let mut members = cluster(&binary, 3).await;
    let others: Vec<String> = members[1..].iter().map(|m| m.client_url.clone()).collect();
    let etcd = Etcd::new(&others, "/corsd/tenants/").unwrap();
    etcd.put_if("acme", policy("https://a.example.com").as_bytes(), 0)
        .await
        .unwrap()
        .unwrap();
    etcd.put_if("gone", policy("https://g.example.com").as_bytes(), 0)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // corsd knows member 0 alone.
    let corsd = crate::common::process::Corsd::start_etcd(&members[0].client_url, &[], dir.path());
    let channel = corsd.channel().await;
    assert_eq!(verdict(&channel, "acme", "https://a.example.com").await, Verdict::Allow);

    members[0].stop();
    // The others elect a leader among themselves first.
    eventually(Duration::from_secs(10), "a new leader", async || {
        etcd.get("acme").await.is_ok()
    })
    .await;
    let acme = etcd.get("acme").await.unwrap().unwrap().mod_revision;
    etcd.put_if("acme", policy("https://a2.example.com").as_bytes(), acme)
        .await
        .unwrap()
        .unwrap();
    etcd.put_if("beta", policy("https://b.example.com").as_bytes(), 0)
        .await
        .unwrap()
        .unwrap();
    let gone = etcd.get("gone").await.unwrap().unwrap().mod_revision;
    let last = etcd.delete_if("gone", gone).await.unwrap().unwrap();
    etcd.compact(last).await.unwrap();
    assert_eq!(
        verdict(&channel, "acme", "https://a.example.com").await,
        Verdict::Allow,
        "the last good policies stay"
    );

    members[0].start();
    eventually(
        Duration::from_secs(15),
        "every change in force after the resync",
        async || {
            verdict(&channel, "acme", "https://a2.example.com").await == Verdict::Allow
                && verdict(&channel, "beta", "https://b.example.com").await == Verdict::Allow
                && verdict(&channel, "gone", "https://g.example.com").await == Verdict::Deny
        },
    )
    .await;
    assert!(corsd.log().contains("compacted past the watch"), "{}", corsd.log());
}
