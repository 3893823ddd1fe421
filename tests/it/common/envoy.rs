//! A real Envoy in front of a real corsd and a real upstream, all on
//! loopback: the shipped `deploy/envoy/envoy.yaml` with its ports rewritten.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where the Envoy binary is: `CORSD_ENVOY`, else `.cache/envoy/envoy` (what
/// `scripts/fetch-envoy` unpacks).
pub fn envoy_binary() -> Option<PathBuf> {
    let unpacked = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/envoy/envoy");
    super::tool("CORSD_ENVOY", unpacked, "run scripts/fetch-envoy")
}

/// A free loopback port (bound, then released for Envoy to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Envoy {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy on the shipped config, pointed at `corsd` and `upstream`,
    /// and waits until its listener answers.
    pub async fn start(binary: &Path, corsd: SocketAddr, upstream: SocketAddr) -> Envoy {
        Envoy::start_config(binary, "envoy.yaml", corsd, upstream).await
    }

    /// Starts Envoy on the shipped `deploy/envoy/NAME`, its ports rewritten.
    pub async fn start_config(binary: &Path, name: &str, corsd: SocketAddr, upstream: SocketAddr) -> Envoy {
        Envoy::start_ports(binary, name, &[(50051, corsd.port()), (9000, upstream.port())]).await
    }

    /// Starts Envoy on the shipped `deploy/envoy/NAME` with each
    /// `port_value` in `ports` rewritten (the listener and admin ports too).
    pub async fn start_ports(binary: &Path, name: &str, ports: &[(u16, u16)]) -> Envoy {
        Envoy::start_rewritten(binary, name, ports, &[]).await
    }

    /// [`Envoy::start_ports`], with each `(from, to)` text of `texts` replaced too.
    pub async fn start_rewritten(binary: &Path, name: &str, ports: &[(u16, u16)], texts: &[(&str, &str)]) -> Envoy {
        let shipped =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy").join(name)).unwrap();
        Envoy::start_text(binary, &shipped, ports, texts).await
    }

    /// Starts Envoy on the config `shipped` (YAML or JSON), with the
    /// listener on a free port instead of 8080, the admin on one instead of
    /// 9901, each `port_value` in `ports` and each text in `texts` rewritten.
    pub async fn start_text(binary: &Path, shipped: &str, ports: &[(u16, u16)], texts: &[(&str, &str)]) -> Envoy {
        let (port, admin_port) = (free_port(), free_port());
        let mut config = shipped
            .replace("port_value: 8080", &format!("port_value: {port}"))
            .replace("port_value: 9901", &format!("port_value: {admin_port}"));
        for (from, to) in ports {
            config = config.replace(&format!("port_value: {from} "), &format!("port_value: {to} "));
            config = config.replace(&format!("port_value: {from}\n"), &format!("port_value: {to}\n"));
        }
        for (from, to) in texts {
            config = config.replace(from, to);
        }
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let access = std::fs::File::create(dir.path().join("access.log")).unwrap();
        let child = Command::new(binary)
            .args([
                "-c",
                config_path.to_str().unwrap(),
                "--log-level",
                "warn",
                "--concurrency",
                "1",
            ])
            .args(["--base-id", &port.to_string()])
            .stdout(access)
            .stderr(log)
            .spawn()
            .unwrap();
        let mut envoy = Envoy {
            child,
            port,
            admin_port,
            _dir: dir,
        };
        envoy.wait_ready().await;
        envoy
    }

    /// What Envoy's stdout access log holds so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("access.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(r) = request_at(
                self.admin_port,
                "GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
            )
            .await
                && r.status == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default();
                panic!("envoy exited with {status}: {log}");
            }
            assert!(started.elapsed() < Duration::from_secs(20), "envoy not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends one raw HTTP/1.1 request (the text up to the blank line) to the listener.
    pub async fn send(&self, head: &str) -> HttpResponse {
        request_at(self.port, head).await.unwrap()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of `name`; fails when it appears more than once.
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} appears {} times: {:?}", all.len(), self.headers);
        all.first().copied()
    }

    /// The `Vary` values, split into their elements.
    pub fn vary(&self) -> Vec<String> {
        self.all("vary")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_owned())
            .collect()
    }
}

pub async fn request_at(port: u16, head: &str) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(body_at) = response.parse(&raw).map_err(std::io::Error::other)? else {
        return Err(std::io::Error::other(format!(
            "incomplete response: {}",
            String::from_utf8_lossy(&raw)
        )));
    };
    Ok(HttpResponse {
        status: response.code.unwrap_or(0),
        headers: response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&raw[body_at..]).into_owned(),
    })
}

/// The API behind Envoy: answers 200 (404 under `/missing`), and sets its
/// own `Access-Control-Allow-Origin` and `Vary` so tests can see corsd's win
/// and its Vary kept.
pub async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let missing = req.uri().path().contains("/missing");
                    let response = hyper::Response::builder()
                        .status(if missing { 404 } else { 200 })
                        .header("access-control-allow-origin", "https://upstream-chose-this.example")
                        .header("vary", "Accept-Encoding")
                        .header("x-request-id", "req-1")
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(if missing {
                            "{\"error\":\"not found\"}"
                        } else {
                            "{\"ok\":true}"
                        })))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
