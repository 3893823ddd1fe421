//! A real corsd server on `127.0.0.1:0`, in this process, and clients for it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corsd::grpc::Store;
use corsd::grpc::pb::cors_policy_client::CorsPolicyClient;
use corsd::grpc::pb::{CheckOriginRequest, ListEntriesRequest, ListEntriesResponse};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(store: Arc<Store>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let store = store.clone();
            async move {
                corsd::grpc::serve(listener, store, (reporter, health), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            }
        });
        TestServer {
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A server whose store holds the policy file at `path`.
    pub async fn start_with_file(path: &Path) -> TestServer {
        let bytes = std::fs::read(path).unwrap();
        let policy = corsd::core::Policy::compile(&path.display().to_string(), &bytes)
            .unwrap()
            .policy;
        TestServer::start(Store::new(policy)).await
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> CorsPolicyClient<Channel> {
        CorsPolicyClient::new(self.channel().await)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Lists the first page, with the policy info.
pub async fn info(client: &mut CorsPolicyClient<Channel>) -> ListEntriesResponse {
    client
        .list_entries(ListEntriesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls `ListEntries` until `done` holds; returns how long it took, or
/// fails after `limit`.
pub async fn wait_for(
    client: &mut CorsPolicyClient<Channel>,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&ListEntriesResponse) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let response = info(client).await;
        if done(&response) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not seen within {limit:?}; last: {:?}",
            response.policy
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain cross-origin GET from `origin`, to a target the gateway did not describe.
pub fn get_request(origin: impl Into<String>) -> CheckOriginRequest {
    CheckOriginRequest {
        origin: Some(origin.into()),
        method: "GET".into(),
        ..Default::default()
    }
}

/// A channel to a real server on `127.0.0.1:0` serving `store` with
/// `options` (admin gate, ECDS, ...), in this process until the test ends.
pub async fn start_with_options(store: Arc<Store>, options: corsd::grpc::ServeOptions) -> Channel {
    super::channel_when_up(serve_with_options(store, options).await).await
}

/// [`start_with_options`], returning the server's address.
pub async fn serve_with_options(store: Arc<Store>, options: corsd::grpc::ServeOptions) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(corsd::grpc::serve_counted(
        corsd::listen::Listener::Tcp(listener),
        corsd::grpc::decision::DecisionPath::new(store),
        options,
        tonic_health::server::health_reporter(),
        std::future::pending(),
    ));
    addr
}

/// Every tenant's info, `page_size` a page, checked against the total.
pub async fn all_tenants(client: &mut CorsPolicyClient<Channel>, page_size: u32) -> Vec<corsd::grpc::pb::PolicyInfo> {
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let page = client
            .list_tenants(corsd::grpc::pb::ListTenantsRequest {
                page_size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.tenants);
        if page.next_page_token.is_empty() {
            assert_eq!(all.len(), page.total_size as usize);
            return all;
        }
        token = page.next_page_token;
    }
}
