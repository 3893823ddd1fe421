//! `corsd serve` as its own process, on a free loopback port, its log in a
//! file; killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Corsd {
    pub child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Corsd {
    /// Starts `corsd serve --policy POLICY --listen 127.0.0.1:PORT ARGS` and
    /// waits until the port accepts connections.
    pub fn start(policy: &Path, args: &[&str], log_dir: &Path) -> Corsd {
        Corsd::start_with("--policy", policy, args, log_dir, "info")
    }

    /// `corsd serve --policy-dir DIR ...`, as [`Corsd::start`].
    pub fn start_dir(dir: &Path, args: &[&str], log_dir: &Path) -> Corsd {
        Corsd::start_with("--policy-dir", dir, args, log_dir, "info")
    }

    /// `corsd serve --policy-etcd URL ...`, as [`Corsd::start`].
    pub fn start_etcd(url: &str, args: &[&str], log_dir: &Path) -> Corsd {
        Corsd::start_with("--policy-etcd", Path::new(url), args, log_dir, "info")
    }

    /// [`Corsd::start_dir`], its log filtered by `rust_log` (`RUST_LOG`).
    pub fn start_dir_logging(dir: &Path, args: &[&str], log_dir: &Path, rust_log: &str) -> Corsd {
        Corsd::start_with("--policy-dir", dir, args, log_dir, rust_log)
    }

    fn start_with(flag: &str, policy: &Path, args: &[&str], log_dir: &Path, rust_log: &str) -> Corsd {
        let port = super::envoy::free_port();
        let log = log_dir.join(format!("corsd-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_corsd"))
            .arg("serve")
            .arg(flag)
            .arg(policy)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--drain-delay", "0"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let corsd = Corsd { child, port, log };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "corsd did not listen: {}",
                corsd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        corsd
    }

    /// A client channel to its gRPC port.
    pub async fn channel(&self) -> tonic::transport::Channel {
        super::channel_when_up(format!("127.0.0.1:{}", self.port)).await
    }

    /// What corsd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Corsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
