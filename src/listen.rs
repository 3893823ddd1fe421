//! Accepted connections, set up for a decision point: `TCP_NODELAY`, so a
//! small answer leaves at once rather than waiting for the peer's delayed
//! ACK (Nagle), and TCP keepalive, so a peer that vanished is noticed.
//!
//! tonic's own `tcp_nodelay` and `tcp_keepalive` apply only to listeners it
//! binds itself, not to a stream of connections handed to
//! `serve_with_incoming*`; corsd sets both here, on every connection.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
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
