//! `corsd serve` as a real process: start-up refusals, signals, health
//! transitions, environment configuration and JSON logs.

use std::io::{BufRead, BufReader};

use crate::common::write_file;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corsd::grpc::pb::ListEntriesRequest;
use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_corsd");

struct Corsd {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: String,
}

impl Corsd {
    fn spawn(command: &mut Command) -> Corsd {
        let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let started = Instant::now();
        let addr = loop {
            let found = log.lock().unwrap().iter().find_map(|l| {
                let at = l.find("127.0.0.1:")?;
                let rest = &l[at..];
                Some(
                    rest[..rest
                        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                        .unwrap_or(rest.len())]
                        .to_owned(),
                )
            });
            if let Some(addr) = found {
                break addr;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no listen address: {:?}",
                log.lock().unwrap()
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "corsd exited: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        Corsd { child, log, addr }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                started.elapsed() < limit,
                "corsd did not exit: {:?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logged(&self, fragment: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(fragment))
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for Corsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn start_up_refuses_a_missing_or_invalid_policy_like_validate() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(
        dir.path(),
        "bad.toml",
        "[cors]\nmax_age = -1\n[[entries]]\norigin = \"https://*.com\"\n",
    );
    let serve = Command::new(BIN)
        .args(["serve", "--policy", &bad, "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let validate = Command::new(BIN).args(["validate", &bad]).output().unwrap();
    assert_eq!(serve.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&serve.stderr),
        String::from_utf8_lossy(&validate.stderr)
    );
    assert!(String::from_utf8_lossy(&serve.stderr).contains(":2:11: `max_age`"));

    let missing = dir.path().join("missing.toml");
    let serve = Command::new(BIN)
        .args(["serve", "--policy", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("cannot read the policy file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_serving_then_exits_zero() {
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(dir.path(), "p.toml", "[[entries]]\norigin = \"https://a.example\"\n");
    let mut corsd = Corsd::spawn(Command::new(BIN).args(["serve", "--policy", &policy, "--listen", "127.0.0.1:0"]));
    let mut health = HealthClient::new(corsd.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "corsd.v1.CorsPolicy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    corsd.signal("TERM");
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap();
    assert_eq!(next.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    drop(watch);
    let code = tokio::task::block_in_place(|| corsd.wait_exit(Duration::from_secs(10)));
    assert_eq!(code, 0);
    assert!(corsd.logged("shutting down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_environment_configures() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(dir.path(), "p.toml", "[[entries]]\norigin = \"https://a.example\"\n");
    // Flags from the environment; JSON logs.
    let corsd = Corsd::spawn(
        Command::new(BIN)
            .args(["serve"])
            .env("CORSD_POLICY", &policy)
            .env("CORSD_LISTEN", "127.0.0.1:0")
            .env("CORSD_LOG_FORMAT", "json")
            .env("CORSD_WORKERS", "3"),
    );
    let mut workers = None;
    for line in corsd.log.lock().unwrap().iter() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        if line["fields"]["message"] == "corsd listening" {
            workers = line["fields"]["workers"].as_u64();
        }
    }
    assert_eq!(workers, Some(3), "CORSD_WORKERS sets the worker threads");
    // The runtime really has that many workers.
    let threads = std::fs::read_dir(format!("/proc/{}/task", corsd.child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count();
    assert_eq!(threads, 3, "worker threads");
    let mut client = CorsPolicyClient::new(corsd.channel().await);
    let before = client
        .list_entries(ListEntriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.entries[0].pattern, "https://a.example");

    std::fs::write(&policy, "[[entries]]\norigin = \"https://b.example\"\n").unwrap();
    corsd.signal("HUP");
    let started = Instant::now();
    loop {
        let now = client
            .list_entries(ListEntriesRequest::default())
            .await
            .unwrap()
            .into_inner();
        if now.entries[0].pattern == "https://b.example" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "reload not seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(corsd.logged("SIGHUP"));
    assert!(corsd.logged("policy swapped in"));
}

/// SIGTERM with `--drain-delay`: health says NOT_SERVING at once, a new
/// connection opened during the drain is still answered, and the process
/// exits 0 once the delay has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_before_it_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(dir.path(), "p.toml", "[[entries]]\norigin = \"https://a.example\"\n");
    let mut corsd = Corsd::spawn(Command::new(BIN).args([
        "serve",
        "--policy",
        &policy,
        "--listen",
        "127.0.0.1:0",
        "--drain-delay",
        "1500ms",
        "--shutdown-timeout",
        "2s",
    ]));
    let mut health = HealthClient::new(corsd.channel().await);
    let signalled = Instant::now();
    corsd.signal("TERM");
    let started = Instant::now();
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "envoy.service.auth.v3.Authorization".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "NOT_SERVING not at once"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A balancer that has not noticed yet opens a new connection: answered.
    let mut late = CorsPolicyClient::new(corsd.channel().await);
    let answer = late
        .check_origin(crate::common::serve::get_request("https://a.example"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.reason, corsd::grpc::pb::Reason::Allowed as i32);
    assert!(
        signalled.elapsed() < Duration::from_millis(1500),
        "the late call came after the drain"
    );
    drop((health, late));
    let code = tokio::task::block_in_place(|| corsd.wait_exit(Duration::from_secs(10)));
    assert_eq!(code, 0);
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}, before the drain delay"
    );
    assert!(corsd.logged("no longer accepting"));
}
