//! A policy directory updated as platforms update one (DESIGN.md section
//! 14), against a real `corsd serve` process: a Kubernetes ConfigMap's
//! `..data` swap, git-sync's renamed `current` link, and many files
//! rewritten one by one. An update is seen entirely or not at all: a client
//! that keeps asking about the changed tenants never gets an old answer
//! after a new one. Lock files read nothing; an overflowing event queue is
//! followed by a rescan; a killed reloader comes back.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::grpc::pb::{CheckOriginRequest, PolicyInfo, Reason};
use tonic::transport::Channel;

use crate::common::process::Corsd;

/// Tenants in each layout's directory, and how many one update touches.
const TENANTS: usize = 2_000;
const CHANGED: usize = 200;
const REMOVED: usize = 5;
const ADDED: usize = 5;
/// How long an update may take to be in force here (a debug build, on a
/// shared machine; the release figure is a benchmark's).
const IN_FORCE_WITHIN: Duration = Duration::from_secs(5);

fn policy(tenant: usize, revision: u32) -> String {
    format!("label = \"t{tenant} r{revision}\"\n[[entries]]\norigin = \"https://t{tenant}-r{revision}.example\"\n")
}

/// The first revision: every tenant allows its r1 origin.
fn first_revision() -> BTreeMap<String, String> {
    (0..TENANTS).map(|i| (format!("t{i}"), policy(i, 1))).collect()
}

/// The second: the first CHANGED tenants allow r2 instead, the last REMOVED
/// are gone, ADDED new ones allow r2.
fn second_revision() -> BTreeMap<String, String> {
    let mut files = first_revision();
    for i in 0..CHANGED {
        files.insert(format!("t{i}"), policy(i, 2));
    }
    for i in TENANTS - REMOVED..TENANTS {
        files.remove(&format!("t{i}"));
    }
    for i in TENANTS..TENANTS + ADDED {
        files.insert(format!("t{i}"), policy(i, 2));
    }
    files
}

/// A question whose answer tells the two revisions apart.
struct Probe {
    tenant: String,
    origin: String,
    old: Reason,
    new: Reason,
}

fn probes() -> Vec<Probe> {
    let changed = (0..CHANGED).map(|i| Probe {
        tenant: format!("t{i}"),
        origin: format!("https://t{i}-r2.example"),
        old: Reason::OriginNotAllowed,
        new: Reason::Allowed,
    });
    let removed = (TENANTS - REMOVED..TENANTS).map(|i| Probe {
        tenant: format!("t{i}"),
        origin: format!("https://t{i}-r1.example"),
        old: Reason::Allowed,
        new: Reason::TenantUnknown,
    });
    let added = (TENANTS..TENANTS + ADDED).map(|i| Probe {
        tenant: format!("t{i}"),
        origin: format!("https://t{i}-r2.example"),
        old: Reason::TenantUnknown,
        new: Reason::Allowed,
    });
    changed.chain(removed).chain(added).collect()
}

/// Asks every probe in turn, over and over, from `since` until a whole
/// round answers new. Panics on an old answer after a new one (a mix of the
/// two revisions) or on any other answer. Returns when the update was
/// wholly in force, and the calls made.
async fn watch_the_update(channel: Channel, since: Instant) -> (Duration, usize) {
    let mut client = CorsPolicyClient::new(channel);
    let probes = probes();
    let (mut seen_new, mut calls) = (false, 0);
    loop {
        let mut all_new = true;
        for probe in &probes {
            let answer = client
                .check_origin(CheckOriginRequest {
                    origin: Some(probe.origin.clone()),
                    method: "GET".into(),
                    scheme: "https".into(),
                    authority: "api.example.com".into(),
                    tenant: probe.tenant.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            calls += 1;
            let reason = Reason::try_from(answer.reason).unwrap();
            if reason == probe.new {
                seen_new = true;
            } else if reason == probe.old {
                assert!(
                    !seen_new,
                    "{}: an answer of the old revision after one of the new: the two were mixed",
                    probe.tenant
                );
                all_new = false;
            } else {
                panic!("{}: unexpected answer {reason:?}", probe.tenant);
            }
        }
        if all_new {
            return (since.elapsed(), calls);
        }
        assert!(since.elapsed() < IN_FORCE_WITHIN, "the update is not in force");
    }
}

/// Every tenant's info.
async fn tenants(channel: Channel) -> Vec<PolicyInfo> {
    crate::common::serve::all_tenants(&mut CorsPolicyClient::new(channel), 1000).await
}

/// Checks the second revision is in force, all of it, with no error.
async fn expect_second_revision(channel: Channel) {
    let want = second_revision();
    let got = tenants(channel).await;
    assert_eq!(got.len(), want.len(), "tenant count");
    for info in got {
        let text = want
            .get(&info.tenant)
            .unwrap_or_else(|| panic!("{} should be gone", info.tenant));
        assert_eq!(info.version, crate::common::version_of(text), "{}", info.tenant);
        assert!(
            info.last_reload_error.is_empty(),
            "{}: {}",
            info.tenant,
            info.last_reload_error
        );
    }
}

/// Kubernetes' atomic writer: a new `..TIMESTAMP` directory, `..data`
/// renamed over to it, then (after `link_lag`: the writer checks every key,
/// which takes a while for many) links of new keys added and of removed
/// keys removed, then the old directory deleted.
fn configmap_update(dir: &Path, stamp: &str, files: &BTreeMap<String, String>, link_lag: Duration) {
    let versioned = dir.join(stamp);
    std::fs::create_dir(&versioned).unwrap();
    for (name, text) in files {
        std::fs::write(versioned.join(format!("{name}.toml")), text).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(stamp, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::thread::sleep(link_lag);
    for name in files.keys() {
        let link = dir.join(format!("{name}.toml"));
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}.toml"), link).unwrap();
        }
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".toml")
            && !name.starts_with('.')
            && !files.contains_key(stem)
        {
            std::fs::remove_file(dir.join(&name)).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// git-sync: a new worktree, then `current` renamed over to point at it.
fn gitsync_update(root: &Path, worktree: &str, files: &BTreeMap<String, String>) {
    let tree = root.join(worktree);
    std::fs::create_dir(&tree).unwrap();
    for (name, text) in files {
        std::fs::write(tree.join(format!("{name}.toml")), text).unwrap();
    }
    std::os::unix::fs::symlink(worktree, root.join("current.tmp")).unwrap();
    std::fs::rename(root.join("current.tmp"), root.join("current")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_is_in_force_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    configmap_update(dir.path(), "..2026_12_02_1", &first_revision(), Duration::ZERO);
    let logs = tempfile::tempdir().unwrap();
    let corsd = Corsd::start_dir(dir.path(), &[], logs.path());
    let channel = corsd.channel().await;
    let watcher = tokio::spawn(watch_the_update(channel.clone(), Instant::now()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let renamed = Instant::now();
    let dir_path = dir.path().to_path_buf();
    // The links follow 300 ms after the swap: the update is in force, all
    // of it, before they do.
    tokio::task::spawn_blocking(move || {
        configmap_update(
            &dir_path,
            "..2026_12_02_2",
            &second_revision(),
            Duration::from_millis(300),
        )
    })
    .await
    .unwrap();
    let (_, calls) = watcher.await.unwrap();
    println!(
        "ConfigMap update of {CHANGED} of {TENANTS} tenants in force after {:?} ({calls} calls)",
        renamed.elapsed()
    );
    expect_second_revision(channel).await;
    assert!(
        corsd.log().contains("policy directory batch swapped in"),
        "{}",
        corsd.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_sync_update_is_in_force_all_at_once() {
    let root = tempfile::tempdir().unwrap();
    gitsync_update(root.path(), "wt-1", &first_revision());
    let logs = tempfile::tempdir().unwrap();
    let corsd = Corsd::start_dir(&root.path().join("current"), &[], logs.path());
    let channel = corsd.channel().await;
    let watcher = tokio::spawn(watch_the_update(channel.clone(), Instant::now()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let renamed = Instant::now();
    let root_path = root.path().to_path_buf();
    tokio::task::spawn_blocking(move || gitsync_update(&root_path, "wt-2", &second_revision()))
        .await
        .unwrap();
    let (_, calls) = watcher.await.unwrap();
    println!(
        "git-sync update of {CHANGED} of {TENANTS} tenants in force after {:?} ({calls} calls)",
        renamed.elapsed()
    );
    // git-sync removes the old worktree later: nothing changes.
    std::fs::remove_dir_all(root.path().join("wt-1")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    expect_second_revision(channel.clone()).await;

    // The next update follows the new worktree.
    let mut third = second_revision();
    third.insert("t1".into(), policy(1, 3));
    gitsync_update(root.path(), "wt-3", &third);
    let started = Instant::now();
    loop {
        let now = tenants(channel.clone()).await;
        if now
            .iter()
            .any(|t| t.tenant == "t1" && t.version == crate::common::version_of(&policy(1, 3)))
        {
            break;
        }
        assert!(
            started.elapsed() < IN_FORCE_WITHIN,
            "the third worktree is not followed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// rsync and editors: many files renamed in one by one, moments apart. The
/// batches follow; every file ends in force, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_rewritten_one_by_one_all_land() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in first_revision() {
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    }
    let logs = tempfile::tempdir().unwrap();
    let corsd = Corsd::start_dir(dir.path(), &[], logs.path());
    let channel = corsd.channel().await;
    let since = Instant::now();
    let dir_path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        for (name, text) in second_revision() {
            let path = dir_path.join(format!("{name}.toml"));
            if std::fs::read_to_string(&path).is_ok_and(|now| now == text) {
                continue;
            }
            let temp = dir_path.join(format!(".{name}.toml.tmp"));
            std::fs::write(&temp, &text).unwrap();
            std::fs::rename(&temp, &path).unwrap();
        }
        for i in TENANTS - REMOVED..TENANTS {
            std::fs::remove_file(dir_path.join(format!("t{i}.toml"))).unwrap();
        }
    })
    .await
    .unwrap();
    let (took, _) = watch_the_update_loosely(channel.clone(), since).await;
    println!(
        "{} files rewritten one by one: in force after {took:?}",
        CHANGED + ADDED + REMOVED
    );
    expect_second_revision(channel).await;
    let batches = corsd.log().matches("policy directory batch swapped in").count();
    assert!(
        (1..CHANGED).contains(&batches),
        "{batches} batches for {CHANGED} files: not batched"
    );
}

/// File by file nothing is atomic: only the end state is checked.
async fn watch_the_update_loosely(channel: Channel, since: Instant) -> (Duration, ()) {
    let want = second_revision();
    loop {
        let now = tenants(channel.clone()).await;
        let done = now.len() == want.len()
            && now.iter().all(|t| {
                want.get(&t.tenant)
                    .is_some_and(|text| crate::common::version_of(text) == t.version)
            });
        if done {
            return (since.elapsed(), ());
        }
        assert!(since.elapsed() < IN_FORCE_WITHIN, "the rewrite is not in force");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `corsd entries add` on a tenant's file reads that file alone; its lock
/// file, and any other name that cannot be a tenant file, reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_files_read_no_tenant_file() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..50 {
        std::fs::write(dir.path().join(format!("t{i}.toml")), policy(i, 1)).unwrap();
    }
    let logs = tempfile::tempdir().unwrap();
    let corsd = Corsd::start_dir_logging(
        dir.path(),
        &["--log-format", "json"],
        logs.path(),
        "info,corsd::reload=debug",
    );
    let surveyed = || {
        corsd
            .log()
            .lines()
            .filter(|l| l.contains("policy directory batch surveyed"))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["fields"].clone())
            .collect::<Vec<_>>()
    };
    // Start-up read every file once, and the reloader's first rescan
    // (which reads none of them again) may come late on a loaded machine:
    // wait for it.
    let started = Instant::now();
    while surveyed().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no first rescan: {}",
            corsd.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = surveyed().len();
    for _ in 0..20 {
        let lock = dir.path().join("t3.toml.lock");
        std::fs::write(&lock, "").unwrap();
        std::fs::remove_file(&lock).unwrap();
        std::fs::write(dir.path().join(".t3.toml.swp"), "x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        surveyed().len(),
        before,
        "lock and temp files led to a batch: {:?}",
        surveyed()
    );

    let status = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["entries", "add"])
        .arg(dir.path().join("t3.toml"))
        .arg("https://added.example")
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    while surveyed().len() == before {
        assert!(started.elapsed() < Duration::from_secs(2), "the edit was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let batches = surveyed();
    let after = &batches[before..];
    let read: u64 = after.iter().map(|b| b["read"].as_u64().unwrap()).sum();
    assert_eq!(read, 1, "an edit of one file read {read}: {after:?}");
    assert!(after.iter().all(|b| b["rescan"] == false), "{after:?}");
}

/// The kernel's event queue overflows (it is made tiny here, as root):
/// the watcher rescans, and every change is in force all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_event_queue_leads_to_a_rescan() {
    const LIMIT: &str = "/proc/sys/fs/inotify/max_queued_events";
    let Ok(saved) = std::fs::read_to_string(LIMIT) else {
        println!("skipped: {LIMIT} cannot be read");
        return;
    };
    if std::fs::write(LIMIT, "8").is_err() {
        let why = format!("{LIMIT} cannot be written (not root)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t0.toml"), policy(0, 1)).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let metrics_port = crate::common::envoy::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    // inotify takes the limit when corsd makes its watch; put it back at once.
    let corsd = Corsd::start_dir(dir.path(), &["--metrics-listen", &metrics], logs.path());
    std::fs::write(LIMIT, saved.trim()).unwrap();
    let channel = corsd.channel().await;
    let dir_path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        for i in 1..400 {
            std::fs::write(dir_path.join(format!("t{i}.toml")), policy(i, 1)).unwrap();
        }
    })
    .await
    .unwrap();
    let started = Instant::now();
    while tenants(channel.clone()).await.len() < 400 {
        assert!(
            started.elapsed() < IN_FORCE_WITHIN,
            "not every file is in force after an overflow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = reqwest_metrics(&metrics).await;
    let rescans: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("corsd_policy_watch_rescans_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rescans >= 1.0, "no rescan after an overflow:\n{text}");
}

/// `GET /metrics` over a plain TCP stream.
async fn reqwest_metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: corsd\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

/// A reloader that dies is started again, and changes are in force after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_reloader_comes_back() {
    use corsd::core::Policy;
    use corsd::grpc::Store;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t0.toml");
    std::fs::write(&path, policy(0, 1)).unwrap();
    let store = Store::with_tenants([(
        "t0".to_owned(),
        Policy::compile("t", policy(0, 1).as_bytes()).unwrap().policy,
    )]);
    let (handle, _) = corsd::reload::spawn_dir(
        dir.path().to_path_buf(),
        vec![("t0".into(), path.clone())],
        store.clone(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.kill_reloader();
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(&path, policy(0, 2)).unwrap();
    let started = Instant::now();
    while store.tenant("t0").unwrap().policy.version() != crate::common::version_of(&policy(0, 2)) {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the killed reloader did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.reload_stats().restarts(), 1);
}

/// A tenant file that is not a regular file (DESIGN.md section 14): at
/// start-up and in `validate` an error naming it; later, its tenant keeps
/// its policy and says why, and is not removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_are_not_files_are_unreadable_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), policy(0, 1)).unwrap();
    std::os::unix::fs::symlink("nowhere.toml", dir.path().join("dangling.toml")).unwrap();
    std::fs::create_dir(dir.path().join("folder.toml")).unwrap();
    let fifo = dir.path().join("pipe.toml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let validate = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&validate.stderr);
    assert_eq!(validate.status.code(), Some(2), "{stderr}");
    let d = dir.path().display();
    for (name, what) in [
        ("dangling", "a dangling symlink"),
        ("folder", "a directory"),
        ("pipe", "a FIFO"),
    ] {
        assert!(
            stderr.contains(&format!("{d}/{name}.toml: ")) && stderr.contains(what),
            "{name}: {stderr}"
        );
    }
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--policy-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("a FIFO"));

    // Later: the file of a tenant in force becomes a dangling link.
    for name in ["dangling.toml", "folder.toml", "pipe.toml"] {
        let path = dir.path().join(name);
        if path.is_dir() {
            std::fs::remove_dir(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }
    let logs = tempfile::tempdir().unwrap();
    let corsd = Corsd::start_dir(dir.path(), &[], logs.path());
    let channel = corsd.channel().await;
    std::fs::remove_file(dir.path().join("a.toml")).unwrap();
    std::os::unix::fs::symlink("gone.toml", dir.path().join("a.toml")).unwrap();
    let started = Instant::now();
    loop {
        let now = tenants(channel.clone()).await;
        let a = now
            .iter()
            .find(|t| t.tenant == "a")
            .expect("a dangling link removed its tenant");
        if !a.last_reload_error.is_empty() {
            assert!(
                a.last_reload_error.contains("a dangling symlink"),
                "{}",
                a.last_reload_error
            );
            assert_eq!(a.version, crate::common::version_of(&policy(0, 1)));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no reload error for a dangling link"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
