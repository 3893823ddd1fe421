//! Reload at platform scale (DESIGN.md section 14), measured on a real
//! `corsd serve --policy-dir` process through its gRPC API:
//!
//! - start-up: the time from exec to gRPC health SERVING, and the resident
//!   memory then;
//! - one update of the directory as a platform makes it (a Kubernetes
//!   ConfigMap `..data` swap, or git-sync's renamed `current` link) that
//!   changes `--changed` tenants, removes 5 and adds 5, made while clients
//!   keep calling: the time from the rename until every change is answered
//!   (each changed, removed and added tenant is asked over and over; the
//!   last one to answer new says when), whether an old answer ever came
//!   after a new one (a mix of revisions), and the calls that failed or
//!   waited (took over 100 ms) meanwhile;
//! - one tenant's file rewritten alone: the time until it is answered.
//!
//! Every loop is bounded in time, and all traffic stays on 127.0.0.1.
//!
//!     cargo build --profile dist --bin corsd --example reload_scale
//!     target/dist/examples/reload_scale --layout configmap --tenants 10000
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a harness fails loudly"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::grpc::pb::{CheckOriginRequest, Reason};
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Parser, Clone)]
struct Args {
    /// The corsd binary to run.
    #[arg(long, default_value = "target/dist/corsd")]
    corsd: PathBuf,
    /// How the directory is laid out and updated.
    #[arg(long, value_enum, default_value_t = Layout::Configmap)]
    layout: Layout,
    /// Tenants in the directory.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// Entries per tenant.
    #[arg(long, default_value_t = 20)]
    entries: usize,
    /// Tenants the update changes (besides 5 removed and 5 added).
    #[arg(long, default_value_t = 1_000)]
    changed: usize,
    /// Clients calling CheckOrigin on unchanged tenants during the update.
    #[arg(long, default_value_t = 4)]
    load_clients: usize,
    /// Clients asking about the changed tenants.
    #[arg(long, default_value_t = 8)]
    probe_clients: usize,
    /// Only build the directory and measure start-up.
    #[arg(long)]
    startup_only: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// `DIR/NAME.toml -> ..data/NAME.toml`, `..data -> ..TIMESTAMP`.
    Configmap,
    /// corsd follows `ROOT/current -> worktree`.
    GitSync,
}

const REMOVED: usize = 5;
const ADDED: usize = 5;
const LIMIT: Duration = Duration::from_secs(30);

fn policy(tenant: usize, revision: u32, entries: usize) -> String {
    let mut text = format!("label = \"t{tenant} r{revision}\"\n");
    for e in 0..entries {
        text.push_str(&format!(
            "[[entries]]\norigin = \"https://app-{e}.t{tenant}-r{revision}.example\"\n"
        ));
    }
    text
}

fn revision(args: &Args, second: bool) -> BTreeMap<String, String> {
    let mut files: BTreeMap<String, String> = (0..args.tenants)
        .map(|i| (format!("t{i}"), policy(i, 1, args.entries)))
        .collect();
    if second {
        for i in 0..args.changed {
            files.insert(format!("t{i}"), policy(i, 2, args.entries));
        }
        for i in args.tenants - REMOVED..args.tenants {
            files.remove(&format!("t{i}"));
        }
        for i in args.tenants..args.tenants + ADDED {
            files.insert(format!("t{i}"), policy(i, 2, args.entries));
        }
    }
    files
}

fn write_tree(dir: &Path, files: &BTreeMap<String, String>) {
    std::fs::create_dir(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }
}

/// Lays out the first revision; returns the path corsd is given.
fn lay_out(args: &Args, root: &Path) -> PathBuf {
    let first = revision(args, false);
    match args.layout {
        Layout::Configmap => {
            write_tree(&root.join("..rev-1"), &first);
            std::os::unix::fs::symlink("..rev-1", root.join("..data")).unwrap();
            for name in first.keys() {
                std::os::unix::fs::symlink(format!("..data/{name}.toml"), root.join(format!("{name}.toml"))).unwrap();
            }
            root.to_path_buf()
        }
        Layout::GitSync => {
            write_tree(&root.join("wt-1"), &first);
            std::os::unix::fs::symlink("wt-1", root.join("current")).unwrap();
            root.join("current")
        }
    }
}

/// Writes the second revision and renames it in; returns the moment of the
/// rename. Then finishes as the platform does (links of new and removed
/// keys, the old revision deleted).
fn update(args: &Args, root: &Path) -> Instant {
    let second = revision(args, true);
    match args.layout {
        Layout::Configmap => {
            write_tree(&root.join("..rev-2"), &second);
            std::os::unix::fs::symlink("..rev-2", root.join("..data_tmp")).unwrap();
            std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
            let renamed = Instant::now();
            for name in second.keys() {
                let link = root.join(format!("{name}.toml"));
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(format!("..data/{name}.toml"), link).unwrap();
                }
            }
            for i in args.tenants - REMOVED..args.tenants {
                std::fs::remove_file(root.join(format!("t{i}.toml"))).unwrap();
            }
            std::fs::remove_dir_all(root.join("..rev-1")).unwrap();
            renamed
        }
        Layout::GitSync => {
            write_tree(&root.join("wt-2"), &second);
            std::os::unix::fs::symlink("wt-2", root.join("current.tmp")).unwrap();
            std::fs::rename(root.join("current.tmp"), root.join("current")).unwrap();
            Instant::now()
        }
    }
}

struct Corsd(Child);

impl Drop for Corsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

async fn serving(channel: Channel) {
    let mut health = HealthClient::new(channel);
    let started = Instant::now();
    loop {
        let status = health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .map(|r| r.into_inner().status);
        if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
            return;
        }
        assert!(started.elapsed() < LIMIT * 4, "corsd is not SERVING");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn request(tenant: &str, origin: String) -> CheckOriginRequest {
    CheckOriginRequest {
        origin: Some(origin),
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.example.com".into(),
        path: "/".into(),
        tenant: tenant.into(),
        ..Default::default()
    }
}

/// One changed, removed or added tenant, and its answers before and after.
#[derive(Clone)]
struct Probe {
    tenant: String,
    origin: String,
    old: Reason,
    new: Reason,
}

fn probes(args: &Args) -> Vec<Probe> {
    let changed = (0..args.changed).map(|i| Probe {
        tenant: format!("t{i}"),
        origin: format!("https://app-0.t{i}-r2.example"),
        old: Reason::OriginNotAllowed,
        new: Reason::Allowed,
    });
    let removed = (args.tenants - REMOVED..args.tenants).map(|i| Probe {
        tenant: format!("t{i}"),
        origin: format!("https://app-0.t{i}-r1.example"),
        old: Reason::Allowed,
        new: Reason::TenantUnknown,
    });
    let added = (args.tenants..args.tenants + ADDED).map(|i| Probe {
        tenant: format!("t{i}"),
        origin: format!("https://app-0.t{i}-r2.example"),
        old: Reason::TenantUnknown,
        new: Reason::Allowed,
    });
    changed.chain(removed).chain(added).collect()
}

/// What the clients saw during the update.
#[derive(Default)]
struct Seen {
    calls: AtomicU64,
    failed: AtomicU64,
    waited: AtomicU64,
    mixed: AtomicU64,
}

/// Asks its probes over and over until each has answered new; returns when
/// the last one first did (as nanoseconds since `base`).
async fn probe(channel: Channel, probes: Vec<Probe>, base: Instant, seen: Arc<Seen>) -> u64 {
    let mut client = CorsPolicyClient::new(channel);
    let mut first_new: Vec<Option<u64>> = vec![None; probes.len()];
    while first_new.iter().any(Option::is_none) {
        assert!(base.elapsed() < LIMIT * 2, "the update is not in force after {LIMIT:?}");
        for (i, p) in probes.iter().enumerate() {
            let asked = Instant::now();
            let answer = client.check_origin(request(&p.tenant, p.origin.clone())).await;
            seen.calls.fetch_add(1, Ordering::Relaxed);
            if asked.elapsed() > Duration::from_millis(100) {
                seen.waited.fetch_add(1, Ordering::Relaxed);
            }
            let Ok(answer) = answer else {
                seen.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let reason = Reason::try_from(answer.into_inner().reason).unwrap_or(Reason::Unspecified);
            if reason == p.new {
                first_new[i].get_or_insert(u64::try_from(base.elapsed().as_nanos()).unwrap());
            } else if reason == p.old {
                if first_new.iter().any(Option::is_some) {
                    seen.mixed.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                panic!("{}: unexpected answer {reason:?}", p.tenant);
            }
        }
    }
    first_new.into_iter().flatten().max().unwrap_or(0)
}

/// Calls CheckOrigin on unchanged tenants until `stop`.
async fn load(channel: Channel, args_tenants: usize, changed: usize, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut client = CorsPolicyClient::new(channel);
    let mut i = changed;
    while !stop.load(Ordering::Relaxed) {
        let tenant = format!("t{i}");
        let asked = Instant::now();
        let answer = client
            .check_origin(request(&tenant, format!("https://app-1.t{i}-r1.example")))
            .await;
        seen.calls.fetch_add(1, Ordering::Relaxed);
        if asked.elapsed() > Duration::from_millis(100) {
            seen.waited.fetch_add(1, Ordering::Relaxed);
        }
        match answer {
            Ok(a) if a.get_ref().reason == Reason::Allowed as i32 => {}
            _ => {
                seen.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        i += 1;
        if i >= args_tenants - REMOVED {
            i = changed;
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(
        args.changed + REMOVED < args.tenants,
        "--changed leaves no tenant unchanged"
    );
    let work = tempfile::tempdir().unwrap();
    let built = Instant::now();
    let given = lay_out(&args, work.path());
    let name = match args.layout {
        Layout::Configmap => "ConfigMap",
        Layout::GitSync => "git-sync",
    };
    println!(
        "{name} layout: {} tenants of {} entries, written in {:.1} s",
        args.tenants,
        args.entries,
        built.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(work.path().join("corsd.log")).unwrap();
    let exec = Instant::now();
    let child = Command::new(&args.corsd)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--policy-dir"])
        .arg(&given)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (cargo build --profile dist first)",
                args.corsd.display()
            )
        });
    let corsd = Corsd(child);
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let channel = loop {
        if let Ok(channel) = endpoint.connect().await {
            break channel;
        }
        assert!(exec.elapsed() < LIMIT * 4, "corsd does not listen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    serving(channel.clone()).await;
    let start_up = exec.elapsed();
    println!(
        "start-up: SERVING after {:.2} s, {:.0} MiB resident",
        start_up.as_secs_f64(),
        rss_mib(corsd.0.id())
    );
    if args.startup_only {
        return;
    }
    // Let the process settle before the update.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..args.load_clients)
        .map(|_| {
            tokio::spawn(load(
                channel.clone(),
                args.tenants,
                args.changed,
                Arc::clone(&stop),
                Arc::clone(&seen),
            ))
        })
        .collect();
    let all = probes(&args);
    let base = Instant::now();
    let per = all.len().div_ceil(args.probe_clients.max(1));
    let probers: Vec<_> = all
        .chunks(per)
        .map(|part| tokio::spawn(probe(channel.clone(), part.to_vec(), base, Arc::clone(&seen))))
        .collect();
    let root = work.path().to_path_buf();
    let renamed = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || update(&args, &root)).await.unwrap()
    };
    let renamed_at = u64::try_from(renamed.duration_since(base).as_nanos()).unwrap();
    let mut last = 0;
    for p in probers {
        last = last.max(p.await.unwrap());
    }
    let in_force = Duration::from_nanos(last.saturating_sub(renamed_at));
    // Keep the load on a little longer: the platform's clean-up lands too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.await.unwrap();
    }
    println!(
        "update of {} changed, {REMOVED} removed, {ADDED} added: every change answered {:.0} ms after the rename",
        args.changed,
        in_force.as_secs_f64() * 1000.0
    );
    println!(
        "  during it: {} calls, {} failed, {} waited over 100 ms, {} old answers after a new one",
        seen.calls.load(Ordering::Relaxed),
        seen.failed.load(Ordering::Relaxed),
        seen.waited.load(Ordering::Relaxed),
        seen.mixed.load(Ordering::Relaxed)
    );

    // One tenant's file alone: renamed over its link (ConfigMap), or
    // rewritten in place in the worktree (git-sync).
    let tenant = args.changed + 1;
    let text = policy(tenant, 3, args.entries);
    let mut client = CorsPolicyClient::new(channel.clone());
    let written = Instant::now();
    match args.layout {
        Layout::Configmap => {
            let temp = work.path().join(format!(".t{tenant}.toml.tmp"));
            std::fs::write(&temp, text).unwrap();
            std::fs::rename(temp, work.path().join(format!("t{tenant}.toml"))).unwrap();
        }
        Layout::GitSync => std::fs::write(work.path().join("wt-2").join(format!("t{tenant}.toml")), text).unwrap(),
    }
    loop {
        let answer = client
            .check_origin(request(
                &format!("t{tenant}"),
                format!("https://app-0.t{tenant}-r3.example"),
            ))
            .await
            .unwrap()
            .into_inner();
        if answer.reason == Reason::Allowed as i32 {
            break;
        }
        assert!(written.elapsed() < LIMIT, "a single file's change is not in force");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "one tenant's file rewritten: answered {:.0} ms after the write",
        written.elapsed().as_secs_f64() * 1000.0
    );
    println!("resident memory after the update: {:.0} MiB", rss_mib(corsd.0.id()));
    let log = std::fs::read_to_string(work.path().join("corsd.log")).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("batch") || l.contains("WARN") || l.contains("revision"))
    {
        println!("  corsd: {line}");
    }
}
