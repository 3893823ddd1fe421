//! Hot reload through real file operations in a temp directory, observed
//! through a real server's `ListEntries`, and the race of calls against
//! 200 rewrites.

use crate::common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::serve::{TestServer, info, wait_for};
use corsd::core::{Policy, Request, decide};
use corsd::grpc::pb::CheckOriginRequest;

const IN_FORCE_WITHIN: Duration = Duration::from_secs(1);

fn policy(origin: &str) -> String {
    format!("label = \"{origin}\"\n[[entries]]\norigin = \"{origin}\"\n")
}

fn version(text: &str) -> String {
    Policy::compile("v", text.as_bytes())
        .unwrap()
        .policy
        .version()
        .to_owned()
}

/// A server on `path` with its reloader running.
async fn serve(path: &Path) -> TestServer {
    let server = TestServer::start_with_file(path).await;
    corsd::reload::spawn(path.to_path_buf(), server.store.clone()).unwrap();
    // Let the watcher settle before the first change.
    tokio::time::sleep(Duration::from_millis(50)).await;
    server
}

async fn expect_version(server: &TestServer, text: &str, what: &str) {
    let mut client = server.client().await;
    let want = version(text);
    let took = wait_for(&mut client, IN_FORCE_WITHIN, what, |r| {
        r.policy.as_ref().unwrap().version == want
    })
    .await;
    println!("{what}: in force after {took:?}");
}

async fn expect_error(server: &TestServer, fragment: &str, what: &str) -> String {
    let mut client = server.client().await;
    wait_for(&mut client, IN_FORCE_WITHIN, what, |r| {
        r.policy.as_ref().unwrap().last_reload_error.contains(fragment)
    })
    .await;
    info(&mut client).await.policy.unwrap().last_reload_error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_writes_and_rename_over_saves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let (a, b, c) = (
        policy("https://a.example"),
        policy("https://b.example"),
        policy("https://c.example"),
    );
    std::fs::write(&path, &a).unwrap();
    let server = serve(&path).await;

    std::fs::write(&path, &b).unwrap();
    expect_version(&server, &b, "in-place write").await;

    let tmp = dir.path().join(".policy.toml.swp");
    std::fs::write(&tmp, &c).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    expect_version(&server, &c, "rename over").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_keep_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let good = policy("https://a.example");
    std::fs::write(&path, &good).unwrap();
    let server = serve(&path).await;
    let mut client = server.client().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let good_version = version(&good);

    // Invalid: error with FILE:LINE:COL, old policy in force, still SERVING.
    std::fs::write(&path, "[[entries]]\norigin = \"https://a.example/\"\n").unwrap();
    let error = expect_error(&server, "an origin has no path", "invalid file").await;
    assert_eq!(
        error,
        format!(
            "{}:2:10: invalid origin `https://a.example/`: remove the trailing \"/\": an origin has no path",
            path.display()
        )
    );
    assert_eq!(info(&mut client).await.policy.unwrap().version, good_version);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap();
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Half-written: zero bytes.
    std::fs::write(&path, "").unwrap();
    expect_error(&server, "the file is empty", "zero-byte file").await;
    assert_eq!(info(&mut client).await.policy.unwrap().version, good_version);

    // Deleted, then created again.
    std::fs::remove_file(&path).unwrap();
    expect_error(&server, "cannot read the policy file", "deleted file").await;
    assert_eq!(info(&mut client).await.policy.unwrap().version, good_version);
    let next = policy("https://next.example");
    std::fs::write(&path, &next).unwrap();
    expect_version(&server, &next, "re-created file").await;
    assert_eq!(info(&mut client).await.policy.unwrap().last_reload_error, "");

    // Unreadable: a directory where the file was.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    expect_error(&server, "cannot read the policy file", "unreadable path").await;
    assert_eq!(info(&mut client).await.policy.unwrap().version, version(&next));
    std::fs::remove_dir(&path).unwrap();

    // The same good file again clears the error without a swap.
    std::fs::write(&path, &next).unwrap();
    let mut c = server.client().await;
    wait_for(&mut c, IN_FORCE_WITHIN, "error cleared", |r| {
        r.policy.as_ref().unwrap().last_reload_error.is_empty()
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swaps() {
    // The kubelet's layout: policy.toml -> ..data/policy.toml, ..data -> ..TIMESTAMP/
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write_version = |name: &str, text: &str| {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("policy.toml"), text).unwrap();
    };
    let (a, b) = (policy("https://a.example"), policy("https://b.example"));
    write_version("..2026_11_28_10_00_00.000000001", &a);
    symlink("..2026_11_28_10_00_00.000000001", root.join("..data")).unwrap();
    symlink("..data/policy.toml", root.join("policy.toml")).unwrap();
    let path = root.join("policy.toml");
    let server = serve(&path).await;

    write_version("..2026_11_28_10_05_00.000000002", &b);
    symlink("..2026_11_28_10_05_00.000000002", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_11_28_10_00_00.000000001")).unwrap();
    expect_version(&server, &b, "ConfigMap swap").await;
    server.stop().await;
}

/// Several clients call CheckOrigin without pause while the file is
/// rewritten 200 times: two valid versions alternate, with invalid and
/// half-written files between them. No call fails, and every answer is what
/// one of the two versions decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_never_fail_or_mix_policies_while_the_file_churns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let v1 = "[cors]\nmax_age = 100\nallow_methods = [\"PUT\"]\n[[entries]]\norigin = \"https://a.example\"\n[[entries]]\norigin = \"https://*.shared.example\"\n";
    let v2 = "[cors]\nmax_age = 200\nallow_methods = [\"DELETE\"]\nallow_credentials = false\n[[entries]]\norigin = \"https://b.example\"\n[[entries]]\norigin = \"https://*.shared.example\"\n";
    std::fs::write(&path, v1).unwrap();
    let server = serve(&path).await;

    let requests: Vec<CheckOriginRequest> = ["https://a.example", "https://b.example", "https://x.shared.example"]
        .iter()
        .flat_map(|o| {
            [
                crate::common::serve::get_request(*o),
                CheckOriginRequest {
                    origin: Some((*o).into()),
                    method: "OPTIONS".into(),
                    access_control_request_method: Some("PUT".into()),
                    ..Default::default()
                },
            ]
        })
        .collect();
    let expected = |text: &str| -> Vec<corsd::grpc::pb::CheckOriginResponse> {
        let p = Policy::compile("x", text.as_bytes()).unwrap().policy;
        requests
            .iter()
            .map(|r| {
                let d = decide(
                    &p,
                    &Request {
                        origin: r.origin.as_deref(),
                        several_origins: false,
                        method: &r.method,
                        request_method: r.access_control_request_method.as_deref(),
                        request_headers: &r.access_control_request_headers,
                        request_private_network: false,
                        scheme: "",
                        authority: "",
                        path: "",
                    },
                );
                corsd::grpc::cors_policy::to_proto("", &d)
            })
            .collect()
    };
    let (want1, want2) = (Arc::new(expected(v1)), Arc::new(expected(v2)));
    let requests = Arc::new(requests);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let seen_v2 = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for worker in 0..4 {
        let mut client = server.client().await;
        let (stop, calls, seen_v2) = (stop.clone(), calls.clone(), seen_v2.clone());
        let (requests, want1, want2) = (requests.clone(), want1.clone(), want2.clone());
        clients.push(tokio::spawn(async move {
            let mut i = worker;
            // Bounded: stops when the writer is done, or after 200k calls.
            while !stop.load(Ordering::Relaxed) && i < 200_000 {
                let k = i % requests.len();
                let got = client
                    .check_origin(requests[k].clone())
                    .await
                    .expect("no call may fail")
                    .into_inner();
                if got == want2[k] {
                    seen_v2.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert_eq!(got, want1[k], "an answer from neither version");
                }
                calls.fetch_add(1, Ordering::Relaxed);
                i += 4;
            }
        }));
    }

    for round in 0..200 {
        let text = match round % 4 {
            0 => v2,
            1 => "[[entries]]\norigin = \"http://invalid.example\"\n",
            2 => v1,
            _ => &v2[..v2.len() / 2],
        };
        if round % 8 == 3 {
            let tmp = dir.path().join("policy.toml.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        } else {
            std::fs::write(&path, text).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(if round % 10 == 0 { 150 } else { 5 })).await;
    }
    std::fs::write(&path, v2).unwrap();
    expect_version(&server, v2, "final version").await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (calls, seen_v2) = (calls.load(Ordering::Relaxed), seen_v2.load(Ordering::Relaxed));
    println!("{calls} calls, {seen_v2} answered by the second version");
    assert!(calls > 1000, "too few calls to mean anything: {calls}");
    assert!(seen_v2 > 0 && seen_v2 < calls, "both versions must have answered");
    server.stop().await;
}
