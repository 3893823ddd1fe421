//! The shared case tables (`tests/cases/*.toml`) and how to compare a layer's
//! answer with them. Every layer (core, command line, gRPC, Envoy) replays the
//! same cases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod envoy;
pub mod etcd;
pub mod pki;
pub mod process;
pub mod serve;

use serde::Deserialize;

/// An end-to-end test's tool: the path in `variable`, else `default`. When
/// it is missing, off CI the caller skips and this prints why; in CI
/// (`CI=true`) the test fails.
pub fn tool(variable: &str, default: PathBuf, how_to_get: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).map_or(default, PathBuf::from);
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "no {} at {}: {how_to_get} (or set {variable})",
        path.file_name().unwrap_or_default().display(),
        path.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    println!("skipped: {why}");
    None
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The directory of the case tables.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases")
}

#[derive(Debug, Deserialize)]
struct PolicyText {
    text: String,
}

/// The named policies of `policies.toml`.
pub fn policies() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(cases_dir().join("policies.toml")).unwrap();
    let table: BTreeMap<String, PolicyText> = toml::from_str(&text).unwrap();
    table.into_iter().map(|(k, v)| (k, v.text)).collect()
}

/// One request of the table, defaults filled in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    pub policy: Option<String>,
    pub origin: Option<String>,
    pub method: Option<String>,
    pub request_method: Option<String>,
    #[serde(default)]
    pub request_headers: Vec<String>,
    #[serde(default)]
    pub private_network: bool,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
}

/// What the case expects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub verdict: String,
    pub reason: String,
    pub status: u32,
    pub preflight: Option<bool>,
    #[serde(default)]
    pub matched: String,
    pub headers: Option<Vec<(String, String, bool)>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: CaseRequest,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
struct Defaults {
    policy: String,
    method: String,
    scheme: String,
    authority: String,
    path: String,
}

#[derive(Debug, Deserialize)]
struct CaseFile {
    defaults: Defaults,
    case: Vec<Case>,
}

/// A request with every field decided.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub policy: String,
    pub origin: Option<String>,
    pub method: String,
    pub request_method: Option<String>,
    pub request_headers: Vec<String>,
    pub private_network: bool,
    pub scheme: String,
    pub authority: String,
    pub path: String,
}

impl Resolved {
    /// The request as the core takes it.
    pub fn request(&self) -> corsd::core::Request<'_, String> {
        corsd::core::Request {
            origin: self.origin.as_deref(),
            several_origins: false,
            method: &self.method,
            request_method: self.request_method.as_deref(),
            request_headers: &self.request_headers,
            request_private_network: self.private_network,
            scheme: &self.scheme,
            authority: &self.authority,
            path: &self.path,
        }
    }
}

/// The decision cases, with their requests resolved against the defaults.
pub fn decision_cases() -> Vec<(Case, Resolved)> {
    let text = std::fs::read_to_string(cases_dir().join("decide.toml")).unwrap();
    let file: CaseFile = toml::from_str(&text).unwrap();
    let d = file.defaults;
    file.case
        .into_iter()
        .map(|case| {
            let r = &case.request;
            let resolved = Resolved {
                policy: r.policy.clone().unwrap_or_else(|| d.policy.clone()),
                origin: r.origin.clone(),
                method: r.method.clone().unwrap_or_else(|| d.method.clone()),
                request_method: r.request_method.clone(),
                request_headers: r.request_headers.clone(),
                private_network: r.private_network,
                scheme: r.scheme.clone().unwrap_or_else(|| d.scheme.clone()),
                authority: r.authority.clone().unwrap_or_else(|| d.authority.clone()),
                path: r.path.clone().unwrap_or_else(|| d.path.clone()),
            };
            (case, resolved)
        })
        .collect()
}

/// A layer's answer, in the words of the case table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: String,
    pub reason: String,
    pub status: u32,
    pub preflight: bool,
    pub matched: String,
    pub headers: Vec<(String, String, bool)>,
    pub version: String,
}

/// The version corsd gives a policy text.
pub fn version_of(text: &str) -> String {
    corsd::core::Policy::compile("version", text.as_bytes())
        .unwrap()
        .policy
        .version()
        .to_owned()
}

/// Compares an answer with the case; `Err` says what differs.
pub fn compare(case: &Case, policy_text: &str, got: &Outcome) -> Result<(), String> {
    let e = &case.expect;
    let mut wrong = Vec::new();
    if got.verdict != e.verdict {
        wrong.push(format!("verdict {} (want {})", got.verdict, e.verdict));
    }
    if got.reason != e.reason {
        wrong.push(format!("reason {} (want {})", got.reason, e.reason));
    }
    if got.status != e.status {
        wrong.push(format!("status {} (want {})", got.status, e.status));
    }
    if let Some(p) = e.preflight
        && got.preflight != p
    {
        wrong.push(format!("preflight {} (want {p})", got.preflight));
    }
    if got.matched != e.matched {
        wrong.push(format!("matched {:?} (want {:?})", got.matched, e.matched));
    }
    if let Some(headers) = &e.headers
        && &got.headers != headers
    {
        wrong.push(format!("headers {:?}\n      want {:?}", got.headers, headers));
    }
    let version = version_of(policy_text);
    if got.version != version {
        wrong.push(format!("policy version {} (want {version})", got.version));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("case {:?}: {}", case.name, wrong.join("; ")))
    }
}

/// Runs every case through `answer` and fails with every mismatch at once.
/// `answer` returns `None` for a request its layer cannot carry (a NUL byte
/// in a command-line argument); those are listed, and must stay few.
pub fn replay(mut answer: impl FnMut(&Case, &Resolved, &str) -> Option<Outcome>) {
    let policies = policies();
    let cases = decision_cases();
    assert!(cases.len() >= 100, "the case table shrank to {}", cases.len());
    let mut failures = Vec::new();
    let mut cannot_carry = Vec::new();
    for (case, resolved) in &cases {
        let text = &policies[&resolved.policy];
        let Some(got) = answer(case, resolved, text) else {
            cannot_carry.push(case.name.clone());
            continue;
        };
        if let Err(e) = compare(case, text, &got) {
            failures.push(e);
        }
    }
    if !cannot_carry.is_empty() {
        println!("this layer cannot carry these requests: {cannot_carry:?}");
    }
    assert!(cannot_carry.len() <= 2, "too many cases left out: {cannot_carry:?}");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Tests that load the machine (floods) or that time failures under load
/// (replicas behind Envoy) take this, so they never run at the same time;
/// the rest run beside them.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// A channel to the plaintext gRPC server at `addr` (`host:port`), once it
/// accepts: retried every 20 ms, for at most 10 s.
pub async fn channel_when_up(addr: impl std::fmt::Display) -> tonic::transport::Channel {
    let started = std::time::Instant::now();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    loop {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no gRPC server at {addr} after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An ext_authz `CheckRequest` as Envoy sends it for a browser's `GET
/// https://api.example.com/` from `origin`, naming `tenant` in the route's
/// context extensions.
pub fn authz_get(tenant: &str, origin: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    scheme: "https".into(),
                    host: "api.example.com".into(),
                    path: "/".into(),
                    headers: [("origin".to_owned(), origin.to_owned())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("tenant".to_owned(), tenant.to_owned())].into(),
            ..Default::default()
        }),
    }
}

/// A `CheckOrigin` call for a browser's `GET https://api.example.com/` from
/// `origin`, naming `tenant`.
pub fn check_get(tenant: &str, origin: Option<&str>) -> corsd::grpc::pb::CheckOriginRequest {
    corsd::grpc::pb::CheckOriginRequest {
        origin: origin.map(str::to_owned),
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.example.com".into(),
        path: "/".into(),
        tenant: tenant.into(),
        ..Default::default()
    }
}
