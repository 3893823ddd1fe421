//! The metrics listener (`--metrics-listen ADDR`): plain HTTP/1.1 serving
//! `GET /metrics` (Prometheus' text format), `GET /healthz` (200 while the process
//! runs) and `GET /readyz` (200 only while health is SERVING, else 503).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::metrics::{CONTENT_TYPE, Metrics};

/// Serves the metrics listener until the process ends. `ready` says whether
/// health is SERVING.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("metrics listener: cannot accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, ready) = (Arc::clone(&metrics), Arc::clone(&ready));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&request, &metrics, &ready);
                async move { Ok::<_, Infallible>(answer) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("metrics connection: {e}");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, metrics: &Metrics, ready: &AtomicBool) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match request.uri().path() {
        "/metrics" => match metrics.encode(ready.load(Ordering::Relaxed)) {
            Ok(body) => Response::builder()
                .header(header::CONTENT_TYPE, CONTENT_TYPE)
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n")),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n"),
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not serving\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: /metrics, /healthz, /readyz\n"),
    }
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
