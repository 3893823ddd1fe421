//! The TCP options of the connections a real corsd server accepts: found by
//! their addresses among this process's own sockets and read back with
//! `getsockopt`, so the test sees what the server really set.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use common::serve::TestServer;
use corsd::grpc::Store;
use socket2::SockRef;

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
    let server = TestServer::start(Store::for_test("[[entries]]\norigin = \"https://a.example\"\n").unwrap()).await;
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

/// `--listen unix:PATH`: a stale socket file is replaced, the socket is mode
/// 0660, a gRPC client over it is answered, and the file goes at exit; a
/// path that is not a socket is never replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.toml", "[[entries]]\norigin = \"https://a.example\"\n");
    let socket = dir.path().join("corsd.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap()); // a stale socket file
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["serve", "--policy", &policy, "--drain-delay", "0"])
        .arg(format!("--listen=unix:{}", socket.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let path = socket.clone();
    let started = std::time::Instant::now();
    let channel = loop {
        let path = path.clone();
        let connected = tonic::transport::Endpoint::from_static("http://corsd.sock")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await;
        match connected {
            Ok(channel) => break channel,
            Err(_) => {
                assert!(started.elapsed() < std::time::Duration::from_secs(10), "no socket");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    // A second corsd on the path a running one serves is refused, and the
    // running one's socket stays.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["serve", "--policy", &policy])
        .arg(format!("--listen=unix:{}", socket.display()))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("is in use"));
    assert!(socket.exists());
    let answer = corsd::grpc::pb::cors_policy_client::CorsPolicyClient::new(channel)
        .check_origin(crate::common::serve::get_request("https://a.example"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.reason, corsd::grpc::pb::Reason::Allowed as i32);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists(), "the socket file is removed at exit");

    // A regular file where the socket would go: refused, left alone.
    std::fs::write(&socket, "not a socket").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["serve", "--policy", &policy])
        .arg(format!("--listen=unix:{}", socket.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket");
}

/// `--admin-token-file`: ListEntries and ListTenants need the token (held in
/// memory and swapped within 1 s of the file changing; the scheme in any
/// case); CheckOrigin does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token() {
    use corsd::grpc::pb::{ListEntriesRequest, ListTenantsRequest};
    use tonic::Code;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "  s3cret-1\n").unwrap();
    let store = Store::for_test("[[entries]]\norigin = \"https://a.example\"\n").unwrap();
    let options = corsd::grpc::ServeOptions {
        admin: corsd::grpc::admin::AdminGate::token_file(token_file.clone()),
        ..Default::default()
    };
    let channel = crate::common::serve::start_with_options(store, options).await;
    let mut client = corsd::grpc::pb::cors_policy_client::CorsPolicyClient::new(channel);
    let with = |token: Option<&str>| {
        let mut request = tonic::Request::new(ListEntriesRequest::default());
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    assert_eq!(
        client.list_entries(with(None)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        client.list_entries(with(Some("s3cret-2"))).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        client.list_entries(with(Some("s3cret"))).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        client
            .list_entries(with(Some("s3cret-1")))
            .await
            .unwrap()
            .into_inner()
            .total_size,
        1
    );
    let mut tenants = tonic::Request::new(ListTenantsRequest::default());
    assert_eq!(
        client
            .list_tenants(tonic::Request::new(ListTenantsRequest::default()))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    tenants
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-1".parse().unwrap());
    assert_eq!(client.list_tenants(tenants).await.unwrap().into_inner().total_size, 1);
    // Decisions stay open.
    let answer = client
        .check_origin(crate::common::serve::get_request("https://a.example"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.reason, corsd::grpc::pb::Reason::Allowed as i32);
    // The scheme in lower case (RFC 7235: case-insensitive) admits too.
    let mut lower = tonic::Request::new(ListEntriesRequest::default());
    lower
        .metadata_mut()
        .insert("authorization", "bearer s3cret-1".parse().unwrap());
    assert!(client.list_entries(lower).await.is_ok());
    // Rotated: the new token is in force within 1 s, the old one no longer works.
    std::fs::write(&token_file, "s3cret-2").unwrap();
    let started = std::time::Instant::now();
    while client.list_entries(with(Some("s3cret-2"))).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the rotated token is not in force"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        client.list_entries(with(Some("s3cret-1"))).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A token file that cannot be read admits no one.
    std::fs::remove_file(&token_file).unwrap();
    let started = std::time::Instant::now();
    while client.list_entries(with(Some("s3cret-2"))).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a removed token file still admits"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The limits are flags: a message over `--max-message-size` is
/// RESOURCE_EXHAUSTED, headers over `--max-header-list-size` are refused,
/// and calls within them are answered on the same server; `--help` lists
/// every limit with its default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_flags_that_hold() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (flag, default) in [
        ("--max-connections", "10000"),
        ("--max-concurrent-streams", "256"),
        ("--max-header-list-size", "16384"),
        ("--keepalive-interval", "30s"),
        ("--keepalive-timeout", "20s"),
        ("--max-message-size", "65536"),
    ] {
        let line = help
            .lines()
            .skip_while(|l| !l.contains(flag))
            .take(6)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(line.contains(&format!("[default: {default}]")), "{flag}: {line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.toml", "[[entries]]\norigin = \"https://a.example\"\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_corsd"))
        .args([
            "serve",
            "--policy",
            &policy,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--drain-delay",
            "0",
        ])
        .args(["--max-message-size", "2048", "--max-header-list-size", "4096"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let connect = || async move {
        corsd::grpc::pb::cors_policy_client::CorsPolicyClient::new(
            crate::common::channel_when_up(format!("127.0.0.1:{port}")).await,
        )
    };
    let call = |origin: &str, lines: usize| corsd::grpc::pb::CheckOriginRequest {
        origin: Some(origin.into()),
        method: "OPTIONS".into(),
        access_control_request_method: Some("PUT".into()),
        access_control_request_headers: vec!["content-type".into(); lines],
        ..Default::default()
    };
    let mut client = connect().await;
    let big = client.check_origin(call("https://a.example", 300)).await.unwrap_err();
    assert_eq!(big.code(), tonic::Code::ResourceExhausted, "{big:?}");
    let mut heavy = tonic::Request::new(call("https://a.example", 1));
    heavy
        .metadata_mut()
        .insert("x-padding", "p".repeat(8 * 1024).parse().unwrap());
    assert!(
        client.check_origin(heavy).await.is_err(),
        "an 8 KiB header passed a 4 KiB limit"
    );
    let mut client = connect().await;
    let fine = client
        .check_origin(call("https://a.example", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fine.reason, corsd::grpc::pb::Reason::Allowed as i32);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
