//! Accepted connections, set up for a decision point: `TCP_NODELAY`, so a
//! small answer leaves at once rather than waiting for the peer's delayed
//! ACK (Nagle), and TCP keepalive, so a peer that vanished is noticed.
//!
//! tonic's own `tcp_nodelay` and `tcp_keepalive` apply only to listeners it
//! binds itself, not to a stream of connections handed to
//! `serve_with_incoming*`; corsd sets both here, on every connection, and
//! also counts connections against `--max-connections` and does the TLS
//! handshakes ([`accept`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::CertificateDer;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::tls::{self, TlsConfig};

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the connection is dropped.
pub const KEEPALIVE_RETRIES: u32 = 3;

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

/// A Unix socket's file, removed when this is dropped (at exit), unless
/// another process has since bound a socket of its own at the path.
#[derive(Debug)]
pub struct SocketFile(PathBuf, Option<(u64, u64)>);

fn file_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.1.is_some() && file_identity(&self.0) == self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Mode of corsd's Unix socket: its owner and group may connect.
const SOCKET_MODE: u32 = 0o660;

impl Listener {
    /// Whether only this machine can connect: a loopback address, or a
    /// Unix socket.
    pub fn is_local(&self) -> bool {
        match self {
            Listener::Tcp(listener) => listener.local_addr().is_ok_and(|a| a.ip().is_loopback()),
            Listener::Unix(..) => true,
        }
    }

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
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(std::io::Error::other(format!(
                            "{} is in use: a running process accepts on it",
                            path.display()
                        )));
                    }
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
                let identity = file_identity(path);
                Ok(Listener::Unix(listener, SocketFile(path.clone(), identity)))
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

/// One accepted connection, plain or TLS, holding its place among
/// `--max-connections` until it closes.
pub struct Connection {
    io: Io,
    info: ConnectionInfo,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsTcp(Box<TlsStream<TcpStream>>),
    TlsUnix(Box<TlsStream<UnixStream>>),
}

/// What a call knows of its connection (a request extension).
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The peer's address, for TCP.
    pub remote: Option<SocketAddr>,
    /// The certificate the client presented over mTLS (its own first).
    pub client_certs: Option<Arc<[CertificateDer<'static>]>>,
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

macro_rules! each_io {
    ($self:ident, $io:ident => $body:expr) => {
        match &mut $self.get_mut().io {
            Io::Tcp($io) => $body,
            Io::Unix($io) => $body,
            Io::TlsTcp($io) => $body,
            Io::TlsUnix($io) => $body,
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        each_io!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        each_io!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each_io!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(io) => io.is_write_vectored(),
            Io::Unix(io) => io.is_write_vectored(),
            Io::TlsTcp(io) => io.is_write_vectored(),
            Io::TlsUnix(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_io!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_io!(self, io => Pin::new(io).poll_shutdown(cx))
    }
}

/// Accepts connections on `listener` until the returned stream is dropped:
/// at most `max_connections` open at once (one more is closed at once, so
/// its client can try another replica). Each connection waits on its own
/// task, within [`tls::HANDSHAKE_TIMEOUT`], for its TLS handshake or (in
/// plaintext) its first byte, so a slow or silent client holds up no other
/// and keeps no place for long. Running out of file descriptors is logged
/// and retried after a pause.
pub fn accept(
    listener: Listener,
    tls: Option<Arc<TlsConfig>>,
    max_connections: usize,
) -> impl Stream<Item = std::io::Result<Connection>> {
    let (send, receive) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    tokio::spawn(async move {
        let mut refused = Refusals::default();
        // The listener (and a Unix socket's file) lives as long as this loop.
        let listener = listener;
        loop {
            let accepted = tokio::select! {
                () = send.closed() => return,
                accepted = accept_one(&listener) => accepted,
            };
            let (io, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if out_of_resources(&e) => {
                    warn!("cannot accept a connection: {e}; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                // One connection failed (reset before it was taken): next.
                Err(e) => {
                    debug!("a connection failed as it was accepted: {e}");
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                refused.note(max_connections);
                drop(io);
                continue;
            };
            let info = ConnectionInfo {
                remote,
                client_certs: None,
            };
            let acceptor = tls.as_ref().map(|tls| TlsAcceptor::from(tls.current()));
            let send = send.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, ready(acceptor, io, info)).await {
                    Ok(Ok((io, info))) => {
                        let _ = send.send(Ok(Connection { io, info, _slot: slot })).await;
                    }
                    Ok(Err(e)) => debug!("connection failed before it was ready: {e}"),
                    Err(_) => debug!("connection not ready within {:?}: closed", tls::HANDSHAKE_TIMEOUT),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receive)
}

/// Whether an accept failed for want of descriptors or memory (worth a
/// pause), not because of the one connection.
fn out_of_resources(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

async fn accept_one(listener: &Listener) -> std::io::Result<(Io, Option<SocketAddr>)> {
    match listener {
        Listener::Tcp(tcp) => {
            let (stream, remote) = tcp.accept().await?;
            if let Err(e) = configure(&stream) {
                // The peer may already be gone; the connection fails on its own then.
                debug!("cannot set TCP options on an accepted connection: {e}");
            }
            Ok((Io::Tcp(stream), Some(remote)))
        }
        Listener::Unix(unix, _) => Ok((Io::Unix(unix.accept().await?.0), None)),
    }
}

/// The connection once it can be served: over TLS, handshaken (with the
/// client's certificates noted); in plaintext TCP, once the client has sent
/// something (or closed), so a silent one holds no place for long. A Unix
/// socket's clients are local and vouched for by the file's mode: a
/// plaintext one is not waited for.
async fn ready(
    acceptor: Option<TlsAcceptor>,
    io: Io,
    mut info: ConnectionInfo,
) -> std::io::Result<(Io, ConnectionInfo)> {
    let peer = |certs: Option<&[CertificateDer<'static>]>| certs.map(Arc::from);
    let io = match (acceptor, io) {
        (None, Io::Tcp(tcp)) => {
            tcp.peek(&mut [0u8; 1]).await?;
            Io::Tcp(tcp)
        }
        (None, io) => io,
        (Some(acceptor), Io::Tcp(tcp)) => {
            let tls = acceptor.accept(tcp).await?;
            info.client_certs = peer(tls.get_ref().1.peer_certificates());
            Io::TlsTcp(Box::new(tls))
        }
        (Some(acceptor), Io::Unix(unix)) => {
            let tls = acceptor.accept(unix).await?;
            info.client_certs = peer(tls.get_ref().1.peer_certificates());
            Io::TlsUnix(Box::new(tls))
        }
        (Some(_), io @ (Io::TlsTcp(_) | Io::TlsUnix(_))) => io,
    };
    Ok((io, info))
}

/// Connections closed for want of a slot, logged at most every ten seconds.
#[derive(Default)]
struct Refusals {
    count: u64,
    logged: Option<tokio::time::Instant>,
}

impl Refusals {
    fn note(&mut self, max_connections: usize) {
        self.count += 1;
        let now = tokio::time::Instant::now();
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
        {
            warn!(
                refused = self.count,
                "{max_connections} connections are open (--max-connections): closing new ones"
            );
            self.logged = Some(now);
            self.count = 0;
        }
    }
}
