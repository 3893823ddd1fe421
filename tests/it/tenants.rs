//! Tenants (DESIGN.md section 8): the selection table through the core,
//! `corsd check --policy-dir` and a real server's `CheckOrigin`; per-tenant
//! reloads with real file operations in a temp directory; `ListTenants`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use corsd::core::{Policy, Request, TenantDecision, decide_for};
use corsd::grpc::Store;
use corsd::grpc::pb::{CheckOriginRequest, ListEntriesRequest, PolicyInfo};
use tonic::Code;

use crate::common::serve::TestServer;

#[derive(serde::Deserialize)]
struct Table {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    tenant: String,
    authority: String,
    origin: Option<String>,
    method: Option<String>,
    request_method: Option<String>,
    verdict: String,
    reason: String,
    decided_by: String,
    max_age: Option<String>,
}

impl Case {
    fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("GET")
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tenants")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(crate::common::cases_dir().join("tenants.toml")).unwrap();
    toml::from_str::<Table>(&text).unwrap().case
}

fn example_store() -> Arc<Store> {
    let mut tenants = Vec::new();
    for name in ["acme", "globex", "initech"] {
        let path = examples().join(format!("{name}.toml"));
        let policy = Policy::compile(&path.display().to_string(), &std::fs::read(&path).unwrap())
            .unwrap()
            .policy;
        tenants.push((name.to_owned(), policy));
    }
    Store::with_tenants(tenants)
}

#[test]
fn selection_table_through_the_core() {
    let store = example_store();
    let tenants = store.tenants();
    for case in cases() {
        let request = Request::<&str> {
            origin: case.origin.as_deref(),
            several_origins: false,
            method: case.method(),
            request_method: case.request_method.as_deref(),
            request_headers: &[],
            request_private_network: false,
            scheme: "https",
            authority: &case.authority,
            path: "",
        };
        let TenantDecision { tenant, decision, .. } = decide_for(&tenants, &case.tenant, &request);
        assert_eq!(decision.verdict.as_str(), case.verdict, "{}", case.name);
        assert_eq!(decision.reason.as_str(), case.reason, "{}", case.name);
        assert_eq!(tenant, case.decided_by, "{}", case.name);
        if decision.verdict == corsd::core::Verdict::Deny {
            let headers: Vec<_> = decision
                .response_headers
                .iter()
                .map(|h| (h.name.as_str(), &*h.value))
                .collect();
            let vary = if decision.reason.as_str().starts_with("tenant_") {
                "Origin"
            } else {
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
            };
            if decision.preflight || decision.reason.as_str().starts_with("tenant_") {
                assert_eq!(headers, [("vary", vary)], "{}", case.name);
            }
        }
        if let Some(max_age) = &case.max_age {
            let got = decision
                .response_headers
                .iter()
                .find(|h| h.name.as_str() == "access-control-max-age");
            assert_eq!(got.map(|h| &*h.value), Some(max_age.as_str()), "{}", case.name);
        }
    }
}

#[test]
fn selection_table_through_check() {
    let dir = examples();
    for case in cases() {
        let mut command = Command::new(env!("CARGO_BIN_EXE_corsd"));
        command.args(["check", "--json", "--policy-dir"]).arg(&dir);
        command.args(["--authority", &case.authority, "--method", case.method()]);
        if !case.tenant.is_empty() {
            command.args(["--tenant", &case.tenant]);
        }
        if let Some(origin) = &case.origin {
            command.args(["--origin", origin]);
        }
        if let Some(method) = &case.request_method {
            command.args(["--request-method", method]);
        }
        let out = command.output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{}: {e}: {}", case.name, String::from_utf8_lossy(&out.stderr)));
        assert_eq!(json["verdict"], case.verdict, "{}", case.name);
        assert_eq!(json["reason"], case.reason, "{}", case.name);
        assert_eq!(json["tenant"], case.decided_by, "{}", case.name);
        let want_exit = if case.verdict == "deny" { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(want_exit), "{}", case.name);
    }
}

#[tokio::test]
async fn selection_table_through_check_origin() {
    let server = TestServer::start(example_store()).await;
    let mut client = server.client().await;
    for case in cases() {
        let answer = client
            .check_origin(CheckOriginRequest {
                origin: case.origin.clone(),
                method: case.method().to_owned(),
                access_control_request_method: case.request_method.clone(),
                scheme: "https".into(),
                authority: case.authority.clone(),
                tenant: case.tenant.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.verdict().as_str_name().to_ascii_lowercase(),
            format!("verdict_{}", case.verdict),
            "{}",
            case.name
        );
        assert_eq!(
            answer.reason().as_str_name().to_ascii_lowercase(),
            format!("reason_{}", case.reason),
            "{}",
            case.name
        );
        assert_eq!(answer.tenant, case.decided_by, "{}", case.name);
    }
    server.stop().await;
}

#[test]
fn validate_reports_every_file_of_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.toml"),
        "[[entries]]\norigin = \"https://a.example\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[cors]\nmax_age = -1\n").unwrap();
    std::fs::write(
        dir.path().join("worse.toml"),
        "[[entries]]\norigin = \"http://b.example\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("Capital.toml"), "").unwrap();
    std::fs::write(dir.path().join(".hidden.toml"), "").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_corsd"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let d = dir.path().display();
    assert!(
        stderr.contains(&format!("{d}/Capital.toml: warning: `Capital.toml` is not read")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{d}/bad.toml:2:11: `max_age` must be")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{d}/worse.toml:2:10: invalid origin `http://b.example`")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{d}: 2 errors: not a valid policy directory")),
        "{stderr}"
    );
    assert!(!stderr.contains("hidden"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_corsd"))
        .arg("validate")
        .arg(examples())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 valid tenant policies"));
}

async fn tenants(server: &TestServer) -> Vec<PolicyInfo> {
    crate::common::serve::all_tenants(&mut server.client().await, 2).await
}

async fn wait_tenants(server: &TestServer, what: &str, done: impl Fn(&[PolicyInfo]) -> bool) -> Vec<PolicyInfo> {
    let started = std::time::Instant::now();
    loop {
        let now = tenants(server).await;
        if done(&now) {
            println!("{what}: seen after {:?}", started.elapsed());
            return now;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{what}: not seen; {now:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn version(text: &str) -> String {
    Policy::version_of(text.as_bytes())
}

fn info<'i>(all: &'i [PolicyInfo], name: &str) -> Option<&'i PolicyInfo> {
    all.iter().find(|t| t.tenant == name)
}

fn policy(origin: &str) -> String {
    format!("[[entries]]\norigin = \"{origin}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_reloads_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        ("a", policy("https://a.example")),
        ("b", policy("https://b.example")),
        ("c", policy("https://c.example")),
    ];
    let mut known = Vec::new();
    let mut loaded = Vec::new();
    for (name, text) in &texts {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        known.push((name.to_string(), path));
        loaded.push((name.to_string(), Policy::compile("t", text.as_bytes()).unwrap().policy));
    }
    let server = TestServer::start(Store::with_tenants(loaded)).await;
    corsd::reload::spawn_dir(dir.path().to_path_buf(), known, server.store.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = tenants(&server).await;
    assert_eq!(
        before.iter().map(|t| t.tenant.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );

    // Edit one: only it changes.
    let edited = policy("https://a2.example");
    std::fs::write(dir.path().join("a.toml"), &edited).unwrap();
    let now = wait_tenants(&server, "edit a", |t| {
        info(t, "a").is_some_and(|a| a.version == version(&edited))
    })
    .await;
    for name in ["b", "c"] {
        assert_eq!(info(&now, name), info(&before, name), "{name} untouched");
    }

    // Break one: it keeps its last good policy and says why.
    std::fs::write(
        dir.path().join("b.toml"),
        "[[entries]]\norigin = \"https://b.example/\"\n",
    )
    .unwrap();
    let now = wait_tenants(&server, "break b", |t| {
        info(t, "b").is_some_and(|b| !b.last_reload_error.is_empty())
    })
    .await;
    let b = info(&now, "b").unwrap();
    assert_eq!(b.version, version(&texts[1].1));
    assert!(
        b.last_reload_error.contains("b.toml:2:10: invalid origin"),
        "{}",
        b.last_reload_error
    );
    assert_eq!(info(&now, "c"), info(&before, "c"));

    // Delete one: its tenant goes.
    std::fs::remove_file(dir.path().join("c.toml")).unwrap();
    wait_tenants(&server, "delete c", |t| info(t, "c").is_none()).await;

    // Add one, by a rename-over as editors save: it comes.
    let added = policy("https://d.example");
    std::fs::write(dir.path().join(".d.toml.tmp"), &added).unwrap();
    std::fs::rename(dir.path().join(".d.toml.tmp"), dir.path().join("d.toml")).unwrap();
    let now = wait_tenants(&server, "add d", |t| info(t, "d").is_some()).await;
    assert_eq!(info(&now, "d").unwrap().version, version(&added));

    // Decisions follow: d's origin is allowed on a request naming d.
    let mut client = server.client().await;
    let answer = client
        .check_origin(CheckOriginRequest {
            origin: Some("https://d.example".into()),
            method: "GET".into(),
            tenant: "d".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.reason, corsd::grpc::pb::Reason::Allowed as i32);
    assert_eq!(answer.tenant, "d");

    // An unknown tenant's entries are NOT_FOUND.
    let missing = client
        .list_entries(ListEntriesRequest {
            tenant: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_of_the_whole_directory_is_seen() {
    // Kubernetes mounts a ConfigMap as NAME.toml -> ..data/NAME.toml, with
    // ..data a symlink to a timestamped directory swapped in one rename.
    let dir = tempfile::tempdir().unwrap();
    let write_version = |stamp: &str, texts: &[(&str, String)]| {
        let versioned = dir.path().join(stamp);
        std::fs::create_dir(&versioned).unwrap();
        for (name, text) in texts {
            std::fs::write(versioned.join(format!("{name}.toml")), text).unwrap();
        }
        let link = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(stamp, &link).unwrap();
        std::fs::rename(&link, dir.path().join("..data")).unwrap();
    };
    let first = [("a", policy("https://a.example")), ("b", policy("https://b.example"))];
    write_version("..2026_12_01_1", &first);
    for (name, _) in &first {
        std::os::unix::fs::symlink(format!("..data/{name}.toml"), dir.path().join(format!("{name}.toml"))).unwrap();
    }
    let files = corsd::policy_file::tenant_files(dir.path()).unwrap();
    assert_eq!(
        files.tenants.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let loaded = first
        .iter()
        .map(|(n, t)| (n.to_string(), Policy::compile("t", t.as_bytes()).unwrap().policy));
    let server = TestServer::start(Store::with_tenants(loaded)).await;
    corsd::reload::spawn_dir(dir.path().to_path_buf(), files.tenants, server.store.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let second = [("a", policy("https://a2.example")), ("b", policy("https://b2.example"))];
    write_version("..2026_12_01_2", &second);
    wait_tenants(&server, "..data swap", |t| {
        second
            .iter()
            .all(|(n, text)| info(t, n).is_some_and(|i| i.version == version(text)))
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn single_mode_lists_its_one_tenant() {
    let server = TestServer::start(Store::for_test(&policy("https://a.example")).unwrap()).await;
    let all = tenants(&server).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].tenant, "");
    assert_eq!(all[0].version, version(&policy("https://a.example")));
    server.stop().await;
}

/// Envoy names the tenant in `context_extensions` (set per route or virtual
/// host), so a client cannot choose it; without it the shared host is
/// ambiguous and denied.
#[test]
fn ext_authz_reads_the_tenant_from_context_extensions() {
    use corsd::grpc::wire::AuthzCall;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
    use prost::Message;

    let authz = corsd::grpc::ext_authz::AuthorizationService::new(example_store());
    let check = |extensions: &[(&str, &str)]| {
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        scheme: "https".into(),
                        host: "api.example.com".into(),
                        path: "/services/data/v60.0".into(),
                        headers: [("origin".to_owned(), "https://portal.globex.example".to_owned())].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: extensions.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            }),
        };
        let call = AuthzCall::decode(request.encode_to_vec().as_slice()).unwrap();
        let answer = authz.answer(&call).unwrap();
        let response = CheckResponse::decode(answer.as_bytes()).unwrap();
        let status = response.status.unwrap();
        (status.code, status.message)
    };
    assert_eq!(check(&[("tenant", "globex")]).0, 0, "globex's own origin, tenant named");
    assert_eq!(check(&[("tenant", "acme")]), (7, "origin_not_allowed".to_owned()));
    assert_eq!(check(&[]), (7, "tenant_ambiguous".to_owned()));
    assert_eq!(
        check(&[("other", "x"), ("tenant", "nobody")]),
        (7, "tenant_unknown".to_owned())
    );
}

/// The shipped multi-tenant front proxy (`deploy/envoy/envoy-tenants.yaml`)
/// in front of a corsd serving `examples/tenants/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_names_the_tenant_per_virtual_host_and_route() {
    use crate::common::envoy::{Envoy, envoy_binary, start_upstream};
    let Some(binary) = envoy_binary() else { return };
    let corsd = TestServer::start(example_store()).await;
    let upstream = start_upstream().await;
    let envoy = Envoy::start_config(&binary, "envoy-tenants.yaml", corsd.addr, upstream).await;
    let send = |method: &str, host: &str, path: &str, headers: &[(&str, &str)]| {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head
    };
    let acao = "access-control-allow-origin";
    let acme = "https://app.acme.example";
    let globex = "https://portal.globex.example";

    let r = envoy
        .send(&send(
            "GET",
            "acme.my.example.com",
            "/services/data/v60.0",
            &[("Origin", acme)],
        ))
        .await;
    assert_eq!((r.status, r.one(acao)), (200, Some(acme)), "acme on its own host");
    let r = envoy
        .send(&send(
            "GET",
            "acme.my.example.com",
            "/services/data",
            &[("Origin", globex)],
        ))
        .await;
    assert_eq!((r.status, r.one(acao)), (403, None), "globex's origin on acme's host");
    let r = envoy
        .send(&send(
            "GET",
            "api.example.com",
            "/org/globex/services/data",
            &[("Origin", globex)],
        ))
        .await;
    assert_eq!(
        (r.status, r.one(acao)),
        (200, Some(globex)),
        "globex named on the shared host"
    );
    let r = envoy
        .send(&send(
            "GET",
            "api.example.com",
            "/org/acme/services/data",
            &[("Origin", globex)],
        ))
        .await;
    assert_eq!(
        (r.status, r.one(acao)),
        (403, None),
        "globex's origin under acme's route"
    );
    let r = envoy
        .send(&send(
            "GET",
            "api.example.com",
            "/services/data",
            &[("Origin", acme), ("x-tenant", "acme")],
        ))
        .await;
    assert_eq!(r.status, 403, "the shared host names no tenant: ambiguous");
    assert!(r.body.contains("tenant_ambiguous"), "{}", r.body);
    assert_eq!(r.vary(), ["Origin"]);
    let r = envoy
        .send(&send("GET", "www.other.example", "/", &[("Origin", acme)]))
        .await;
    assert_eq!(
        (r.status, r.one(acao)),
        (200, Some("https://upstream-chose-this.example")),
        "no tenant lists the host: the upstream's own header stays"
    );
    let r = envoy
        .send(&send(
            "OPTIONS",
            "api.example.com",
            "/org/initech/services/data",
            &[
                ("Origin", "https://tps.initech.example"),
                ("Access-Control-Request-Method", "PUT"),
            ],
        ))
        .await;
    assert_eq!(r.status, 204, "initech's preflight");
    assert_eq!(r.one("access-control-max-age"), Some("3600"));
    drop(envoy);
    corsd.stop().await;
}

/// Several tenants rewritten (some writes invalid) while clients call
/// continuously: no call fails, and every answer is one a valid version of
/// that tenant's file gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_edited_under_load_answer_from_some_valid_version() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const TENANTS: usize = 3;
    const EDITS: usize = 30;
    let text = |tenant: usize, v: usize| policy(&format!("https://v{v}.t{tenant}.example"));
    let dir = tempfile::tempdir().unwrap();
    let mut known = Vec::new();
    let mut loaded = Vec::new();
    for t in 0..TENANTS {
        let path = dir.path().join(format!("t{t}.toml"));
        std::fs::write(&path, text(t, 0)).unwrap();
        known.push((format!("t{t}"), path));
        loaded.push((
            format!("t{t}"),
            Policy::compile("t", text(t, 0).as_bytes()).unwrap().policy,
        ));
    }
    let server = TestServer::start(Store::with_tenants(loaded)).await;
    corsd::reload::spawn_dir(dir.path().to_path_buf(), known, server.store.clone()).unwrap();
    let valid: Vec<Vec<String>> = (0..TENANTS)
        .map(|t| (0..=EDITS).map(|v| version(&text(t, v))).collect())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let mut client = server.client().await;
        let (stop, calls, valid) = (stop.clone(), calls.clone(), valid.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut n = 0usize;
            // Bounded: stops when the writer is done, or after 20,000 calls.
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                let (t, v) = ((n + c) % TENANTS, n % (EDITS + 1));
                let answer = client
                    .check_origin(CheckOriginRequest {
                        origin: Some(format!("https://v{v}.t{t}.example")),
                        method: "GET".into(),
                        tenant: format!("t{t}"),
                        ..Default::default()
                    })
                    .await
                    .expect("no call fails during reloads")
                    .into_inner();
                let in_force = valid[t].iter().position(|x| *x == answer.policy_version);
                let in_force =
                    in_force.unwrap_or_else(|| panic!("t{t}: version {} was never valid", answer.policy_version));
                let allowed = answer.reason == corsd::grpc::pb::Reason::Allowed as i32;
                assert_eq!(allowed, in_force == v, "t{t}: origin v{v} under version v{in_force}");
                seen.insert((t, in_force));
                n += 1;
            }
            calls.fetch_add(n, Ordering::Relaxed);
            seen.len()
        }));
    }
    for v in 1..=EDITS {
        for t in 0..TENANTS {
            let path = dir.path().join(format!("t{t}.toml"));
            if v % 7 == 0 {
                // An invalid save, then the good one.
                std::fs::write(&path, "[[entries]]\norigin = \"https://broken.example/\"\n").unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let tmp = dir.path().join(format!(".t{t}.toml.tmp"));
            std::fs::write(&tmp, text(t, v)).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The last version of every tenant comes into force.
    wait_tenants(&server, "last versions", |all| {
        (0..TENANTS).all(|t| info(all, &format!("t{t}")).is_some_and(|i| i.version == valid[t][EDITS]))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut versions_seen = 0;
    for client in clients {
        versions_seen += client.await.unwrap();
    }
    let calls = calls.load(Ordering::Relaxed);
    println!("{calls} calls, {versions_seen} (tenant, version) pairs seen");
    assert!(calls > 100, "only {calls} calls");
    assert!(versions_seen > TENANTS * 2, "clients saw reloads happen");
    server.stop().await;
}

/// An in-place edit that keeps the length and the modification time (as
/// `cp -p` or `touch -r` leave it) is still seen: after an event the
/// directory's files are read, not judged by their metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_that_keeps_the_metadata_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    let (before, after) = (policy("https://a1.example"), policy("https://a2.example"));
    assert_eq!(before.len(), after.len());
    std::fs::write(&path, &before).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let loaded = [("a".to_owned(), Policy::compile("t", before.as_bytes()).unwrap().policy)];
    let server = TestServer::start(Store::with_tenants(loaded)).await;
    corsd::reload::spawn_dir(
        dir.path().to_path_buf(),
        vec![("a".into(), path.clone())],
        server.store.clone(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut &file, after.as_bytes()).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    wait_tenants(&server, "same-metadata edit", |t| {
        info(t, "a").is_some_and(|a| a.version == version(&after))
    })
    .await;
    server.stop().await;
}

/// The selection table through a real Envoy on the shipped multi-tenant
/// config, for every case that config can express: Envoy names the tenant
/// on an organisation's own host and under `/org/NAME/` on the shared host,
/// and names none elsewhere. (A name with no route, or a named tenant on
/// another organisation's host, cannot be sent through it: Envoy, not the
/// client, chooses the name.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_table_through_envoy() {
    use crate::common::envoy::{Envoy, envoy_binary, start_upstream};
    let Some(binary) = envoy_binary() else { return };
    let corsd = TestServer::start(example_store()).await;
    let upstream = start_upstream().await;
    let envoy = Envoy::start_config(&binary, "envoy-tenants.yaml", corsd.addr, upstream).await;
    let own_hosts = ["acme.my.example.com", "globex.my.example.com", "initech.my.example.com"];
    let mut carried = 0;
    for case in cases() {
        let host = case.authority.to_ascii_lowercase();
        let host = host.trim_end_matches(":443").trim_end_matches('.');
        let own = own_hosts
            .iter()
            .find(|h| **h == host)
            .map(|h| h.split('.').next().unwrap());
        let path = match (case.tenant.as_str(), host, own) {
            ("", _, _) => "/services/data".to_owned(),
            (named, "api.example.com", _) if ["acme", "globex", "initech"].contains(&named) => {
                format!("/org/{named}/services/data")
            }
            (named, _, Some(owner)) if named == owner => "/services/data".to_owned(),
            _ => continue,
        };
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            case.method(),
            case.authority
        );
        if let Some(origin) = &case.origin {
            head.push_str(&format!("Origin: {origin}\r\n"));
        }
        if let Some(method) = &case.request_method {
            head.push_str(&format!("Access-Control-Request-Method: {method}\r\n"));
        }
        head.push_str("\r\n");
        let r = envoy.send(&head).await;
        carried += 1;
        let acao = r.one("access-control-allow-origin");
        match case.verdict.as_str() {
            "allow" => {
                assert!(matches!(r.status, 200 | 204), "{}: {}", case.name, r.status);
                assert_eq!(acao, case.origin.as_deref(), "{}", case.name);
            }
            "deny" => {
                assert_eq!(r.status, 403, "{}", case.name);
                assert!(r.body.contains(&case.reason), "{}: {}", case.name, r.body);
            }
            _ => {
                assert_eq!(r.status, 200, "{}", case.name);
                assert_ne!(acao, case.origin.as_deref(), "{}: not CORS, nothing echoed", case.name);
            }
        }
    }
    assert!(carried >= 9, "only {carried} cases through Envoy");
    drop(envoy);
    corsd.stop().await;
}
