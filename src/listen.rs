//! Accepted connections, set up for a decision point: `TCP_NODELAY`, so a
//! small answer leaves at once rather than waiting for the peer's delayed
//! ACK (Nagle), and TCP keepalive, so a peer that vanished is noticed.
//!
//! tonic's own `tcp_nodelay` and `tcp_keepalive` apply only to listeners it
//! binds itself, not to a stream of connections handed to
//! `serve_with_incoming*`; corsd sets both here, on every connection.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tracing::debug;

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the connection is dropped.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// The connections `listener` accepts, each with `TCP_NODELAY` and keepalive set.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = configure(stream) {
                // The peer may already be gone; the connection fails on its own then.
                debug!("cannot set TCP options on an accepted connection: {e}");
            }
        })
    })
}

/// Sets `TCP_NODELAY` and keepalive on one connection.
pub fn configure(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Where `corsd serve` listens: `HOST:PORT`, or `unix:PATH` for a Unix
/// domain socket (a sidecar beside its Envoy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket's path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path, as in `unix:/run/corsd/corsd.sock`".to_owned());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("`{text}` is not HOST:PORT (as in `127.0.0.1:50051`) or `unix:PATH`"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ListenAddr {
    /// Whether only this machine can reach the address (loopback or a Unix socket).
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => addr.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }
}

/// A bound listener of either kind.
#[derive(Debug)]
pub enum Listener {
    /// TCP: connections get [`configure`]'s options.
    Tcp(TcpListener),
    /// A Unix domain socket, mode 0660, and its file.
    Unix(UnixListener, SocketFile),
}

/// A Unix socket's file, removed when this is dropped (at exit).
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Mode of corsd's Unix socket: its owner and group may connect.
const SOCKET_MODE: u32 = 0o660;

impl Listener {
    /// Binds `addr`. A stale socket file left by an earlier corsd is
    /// replaced; any other file at the path is refused.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if let Ok(metadata) = std::fs::symlink_metadata(path) {
                    if !metadata.file_type().is_socket() {
                        return Err(std::io::Error::other(format!(
                            "{} exists and is not a socket; corsd will not replace it",
                            path.display()
                        )));
                    }
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
                Ok(Listener::Unix(listener, SocketFile(path.clone())))
            }
        }
    }

    /// The address bound, for the logs (the port chosen for `:0`).
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string()),
            Listener::Unix(_, file) => format!("unix:{}", file.0.display()),
        }
    }
}
