//! The metrics listener (`--metrics-listen ADDR`): plain HTTP/1.1 serving
//! `GET /metrics` (Prometheus' text format), `GET /healthz` (200 while the process
//! runs) and `GET /readyz` (200 only while health is SERVING, else 503).
//!
//! A client of this port can never slow the gRPC port: the server runs it on
//! a thread and runtime of its own ([`serve_apart`]), at most
//! [`MAX_CONNECTIONS`] connections are open at once (more are closed as
//! soon as accepted), a request's header must arrive within
//! [`HEADER_TIMEOUT`], a connection lasts [`CONNECTION_TIMEOUT`] at most,
//! and the exposition is gathered on the blocking pool.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::metrics::{CONTENT_TYPE, Metrics};
use crate::store::Prepare;

/// Connections the metrics port keeps open at once; Prometheus needs one.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open, requests included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the metrics listener on a thread and runtime of its own, so its
/// clients never take a gRPC worker's time.
pub fn serve_apart<P: Prepare>(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics<P>>,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new()
        .name("corsd-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, metrics, ready).await,
                    Err(e) => warn!("metrics listener: {e}"),
                }
            });
        })?;
    Ok(())
}

/// Serves the metrics listener until the process ends. `ready` says whether
/// health is SERVING.
pub async fn serve<P: Prepare>(listener: TcpListener, metrics: Arc<Metrics<P>>, ready: Arc<AtomicBool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("metrics listener: cannot accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!("metrics listener: {MAX_CONNECTIONS} connections open; closing a new one");
            drop(stream);
            continue;
        };
        let (metrics, ready) = (Arc::clone(&metrics), Arc::clone(&ready));
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (metrics, ready) = (Arc::clone(&metrics), Arc::clone(&ready));
                async move { Ok::<_, Infallible>(answer(&request, metrics, &ready).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => debug!("metrics connection: {e}"),
                Err(_) => debug!("metrics connection: open for {CONNECTION_TIMEOUT:?}; closed"),
                Ok(Ok(())) => {}
            }
        });
    }
}

async fn answer<P: Prepare>(
    request: &Request<Incoming>,
    metrics: Arc<Metrics<P>>,
    ready: &AtomicBool,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match request.uri().path() {
        "/metrics" => match encode(metrics, ready.load(Ordering::Relaxed)).await {
            Some(body) => Response::builder()
                .header(header::CONTENT_TYPE, CONTENT_TYPE)
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n")),
            None => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n"),
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not serving\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: /metrics, /healthz, /readyz\n"),
    }
}

/// The exposition, gathered on the blocking pool.
async fn encode<P: Prepare>(metrics: Arc<Metrics<P>>, ready: bool) -> Option<String> {
    tokio::task::spawn_blocking(move || metrics.encode(ready).ok())
        .await
        .ok()
        .flatten()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
