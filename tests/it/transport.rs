//! The TCP options of the connections a real corsd server accepts: found by
//! their addresses among this process's own sockets and read back with
//! `getsockopt`, so the test sees what the server really set.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};

use common::serve::TestServer;
use corsd::store::PolicyStore;
use socket2::SockRef;
use tokio_stream::StreamExt;

use crate::common;

/// The socket of this process whose local and peer addresses are these.
fn find_socket(local: SocketAddr, peer: SocketAddr) -> Option<RawFd> {
    std::fs::read_dir("/proc/self/fd").ok()?.flatten().find_map(|entry| {
        let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(entry.path()).ok()?;
        if !target.to_string_lossy().starts_with("socket:") {
            return None;
        }
        #[expect(
            unsafe_code,
            reason = "the fd stays open while the test holds both ends of the connection"
        )]
        // SAFETY: the descriptor belongs to this process and is only read
        // while borrowed, within this call.
        let fd_ref = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&fd_ref);
        let here = socket.local_addr().ok()?.as_socket()?;
        let there = socket.peer_addr().ok()?.as_socket()?;
        (here == local && there == peer).then_some(fd)
    })
}

fn options(fd: RawFd) -> (bool, bool, std::time::Duration) {
    #[expect(
        unsafe_code,
        reason = "the fd stays open while the test holds both ends of the connection"
    )]
    // SAFETY: as above; the descriptor is open for the whole call.
    let fd_ref = unsafe { BorrowedFd::borrow_raw(fd) };
    let socket = SockRef::from(&fd_ref);
    (
        socket.tcp_nodelay().unwrap(),
        socket.keepalive().unwrap(),
        socket.tcp_keepalive_time().unwrap(),
    )
}

#[tokio::test]
async fn the_server_sets_nodelay_and_keepalive_on_every_connection() {
    let server =
        TestServer::start(PolicyStore::for_test("[[entries]]\norigin = \"https://a.example\"\n").unwrap()).await;
    // Two connections: each one accepted is set up, not only the first.
    for _ in 0..2 {
        let client = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let peer = client.local_addr().unwrap();
        let mut found = None;
        for _ in 0..100 {
            found = find_socket(server.addr, peer);
            if found.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let fd = found.expect("the server's end of the connection");
        // The server sets the options right after accepting; give it a moment.
        let mut seen = options(fd);
        for _ in 0..100 {
            if seen.0 && seen.1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            seen = options(fd);
        }
        let (nodelay, keepalive, idle) = seen;
        assert!(nodelay, "TCP_NODELAY is off on an accepted connection");
        assert!(keepalive, "SO_KEEPALIVE is off on an accepted connection");
        assert_eq!(idle, corsd::listen::KEEPALIVE_TIME);
        drop(client);
    }
    server.stop().await;
}

#[tokio::test]
async fn incoming_sets_the_options_before_yielding_a_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = std::pin::pin!(corsd::listen::incoming(listener));
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accepted = incoming.next().await.unwrap().unwrap();
    assert!(accepted.nodelay().unwrap());
    let socket = SockRef::from(&accepted);
    assert!(socket.keepalive().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), corsd::listen::KEEPALIVE_TIME);
    assert_eq!(
        socket.tcp_keepalive_interval().unwrap(),
        corsd::listen::KEEPALIVE_INTERVAL
    );
    assert_eq!(
        socket.tcp_keepalive_retries().unwrap(),
        corsd::listen::KEEPALIVE_RETRIES
    );
}
