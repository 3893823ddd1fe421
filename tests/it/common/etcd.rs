//! A real etcd (Debian's `etcd-server`) on loopback ports in a temporary
//! directory: one member, or several forming one cluster; killed when
//! dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::envoy::free_port;

/// The etcd binary, or `None` (off CI) with the reason printed.
pub fn etcd_binary() -> Option<PathBuf> {
    super::tool("ETCD", PathBuf::from("/usr/bin/etcd"), "apt-get install etcd-server")
}

/// One member of a cluster.
pub struct Member {
    child: Option<Child>,
    pub client_url: String,
    args: Vec<String>,
    binary: PathBuf,
    _dir: tempfile::TempDir,
}

impl Member {
    /// Starts the process (again, after [`Member::stop`]).
    pub fn start(&mut self) {
        let log = std::fs::File::create(self._dir.path().join("etcd.log")).unwrap();
        self.child = Some(
            Command::new(&self.binary)
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// Kills the process; its data stays for [`Member::start`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One member serving clients over TLS with `cert` and `key`, and asking
/// every client for a certificate signed by `ca` (PEM files); its client
/// URL is `https://127.0.0.1:PORT`. Started; not waited for.
pub fn tls_member(
    binary: &std::path::Path,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Member {
    let (client, peer) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let args = vec![
        "--name=tls".to_owned(),
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=tls={peer_url}"),
        format!("--cert-file={}", cert.display()),
        format!("--key-file={}", key.display()),
        format!("--trusted-ca-file={}", ca.display()),
        "--client-cert-auth".to_owned(),
    ];
    let mut member = Member {
        child: None,
        client_url,
        args,
        binary: binary.to_path_buf(),
        _dir: dir,
    };
    member.start();
    member
}

/// A cluster of `size` members on loopback, started and answering.
pub async fn cluster(binary: &std::path::Path, size: usize) -> Vec<Member> {
    let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut members: Vec<Member> = ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let dir = tempfile::tempdir().unwrap();
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args = vec![
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.path().join("data").display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".to_owned(),
                "--initial-cluster-token=corsd-tests".to_owned(),
            ];
            Member {
                child: None,
                client_url,
                args,
                binary: binary.to_path_buf(),
                _dir: dir,
            }
        })
        .collect();
    for member in &mut members {
        member.start();
    }
    let urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    let client = corsd::etcd::Etcd::new(&urls, "/health-check/").unwrap();
    let started = Instant::now();
    while client.read_all().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "etcd did not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    members
}
