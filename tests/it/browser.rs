//! A real browser: headless Chromium loads a page from a loopback origin whose
//! script calls the API through Envoy with `fetch`, a non-safelisted header
//! and credentials. From an allowlisted origin the call succeeds; from any
//! other, the browser's own CORS check fails it. What is asserted is what the
//! browser reports: the page's view of the `fetch` outcome (written into the
//! DOM that Chromium dumps) and Chromium's console message.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use http_body_util::Full;
use tokio::net::TcpListener;

use crate::common::envoy::{Envoy, envoy_binary, start_upstream};
use crate::common::serve::TestServer;

/// Debian's Chromium: `CORSD_CHROMIUM`, else `/usr/bin/chromium`.
fn chromium_binary() -> Option<PathBuf> {
    crate::common::tool(
        "CORSD_CHROMIUM",
        PathBuf::from("/usr/bin/chromium"),
        "apt-get install chromium",
    )
}

/// Serves the test page, which calls `api` and writes the outcome into `#out`.
async fn serve_page(api: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><title>corsd browser test</title><pre id="out">pending</pre>
<script>
fetch({api:?}, {{
  method: "PUT",
  credentials: "include",
  headers: {{ "X-Requested-With": "corsd-browser-test", "Content-Type": "application/json" }},
  body: "{{}}",
}}).then(async (r) => {{
  document.getElementById("out").textContent =
    "FETCH-OK status=" + r.status + " request-id=" + r.headers.get("x-request-id") + " body=" + (await r.text());
}}).catch((e) => {{
  document.getElementById("out").textContent = "FETCH-FAILED " + e.name + ": " + e.message;
}});
</script>"#
    );
    let page = Bytes::from(page);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let page = page.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let page = page.clone();
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/html; charset=utf-8")
                                .body(Full::new(page))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The text the page wrote into `#out`.
fn outcome(dom: &str) -> &str {
    let start = dom.find("<pre id=\"out\">").map_or(0, |i| i + "<pre id=\"out\">".len());
    let end = dom[start..].find("</pre>").map_or(dom.len(), |i| start + i);
    &dom[start..end]
}

/// Loads `url` in headless Chromium; returns the DOM after the page's script
/// ran, and Chromium's log (console messages included).
fn load_in_chromium(chromium: &PathBuf, url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_fetch_passes_only_from_allowlisted_origins() {
    let (Some(envoy_bin), Some(chromium)) = (envoy_binary(), chromium_binary()) else {
        return;
    };
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, "# filled in below\n").unwrap();
    let corsd = TestServer::start_with_file(&policy_path).await;
    let envoy = Envoy::start(&envoy_bin, corsd.addr, upstream).await;
    let api = format!(
        "http://127.0.0.1:{}/services/data/v60.0/sobjects/Account/001",
        envoy.port
    );
    let page = serve_page(api).await;

    let allowed_origin = format!("http://localhost:{}", page.port());
    let policy = format!(
        "[cors]\nallow_headers = [\"content-type\", \"x-requested-with\"]\nexpose_headers = [\"x-request-id\"]\n\
         allow_credentials = true\n[scope]\npaths = [\"/services/data\"]\n[[entries]]\norigin = \"{allowed_origin}\"\n"
    );
    corsd.store.swap(
        corsd::core::Policy::compile("browser", policy.as_bytes())
            .unwrap()
            .policy,
    );

    // Allowlisted origin: preflight, then the PUT with credentials, succeed;
    // the exposed header is readable by the page.
    let (dom, log) =
        tokio::task::block_in_place(|| load_in_chromium(&chromium, &format!("{allowed_origin}/page.html")));
    println!("allowlisted page: {}", outcome(&dom));
    assert!(
        dom.contains("FETCH-OK status=200 request-id=req-1 body={\"ok\":true}"),
        "the allowlisted page's fetch failed:\nDOM: {dom}\nlog: {log}"
    );

    // Another origin (same page, another host name): the browser blocks it.
    let other_origin = format!("http://127.0.0.1:{}", page.port());
    let (dom, log) = tokio::task::block_in_place(|| load_in_chromium(&chromium, &format!("{other_origin}/page.html")));
    println!("other page: {}", outcome(&dom));
    let report = log
        .lines()
        .find(|l| l.contains("blocked by CORS policy"))
        .unwrap_or_default();
    println!("chromium: {report}");
    assert!(
        dom.contains("FETCH-FAILED TypeError"),
        "the other page's fetch was not blocked:\nDOM: {dom}\nlog: {log}"
    );
    assert!(
        log.contains("blocked by CORS policy"),
        "Chromium did not report a CORS failure:\n{log}"
    );
    drop(envoy);
    corsd.stop().await;
}
