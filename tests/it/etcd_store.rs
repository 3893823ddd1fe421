//! `corsd serve --policy-etcd` on a real etcd (DESIGN.md section 17):
//! start-up at one revision (an invalid key not served), every change in
//! force within a second, an invalid change keeping the last good policy, a
//! deleted key's tenant gone; etcd stopped: decisions go on,
//! `corsd_policy_source_up` is 0; etcd back: corsd follows again.

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

    // etcd is back: corsd follows again.
    members[0].start();
    eventually(Duration::from_secs(10), "etcd answering", async || {
        etcd.get("acme").await.is_ok()
    })
    .await;
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
