//! `corsd serve` from a plain [`ServeConfig`]: the runtime, the listener, the
//! reloader, signals and shutdown. It serves gRPC, reloads on change and on
//! SIGHUP, and on SIGTERM/SIGINT (DESIGN.md section 11) reports NOT_SERVING
//! at once, keeps serving for the drain delay, then stops accepting,
//! finishes the calls in flight (within the shutdown timeout) and exits 0. The command line builds the
//! configuration and checks the policy before this starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tonic_health::ServingStatus;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::core::Policy;
use crate::grpc;
use crate::grpc::Store;
use crate::memory::release_freed_memory;
use crate::observe::{self, metrics::Metrics};
use crate::reload;
use crate::store::{PolicyStore, Prepare};
use crate::watch::Fingerprint;

/// Where the policies come from, each already loaded and valid.
#[derive(Debug)]
pub enum Policies {
    /// `--policy FILE`: one tenant, named `""`.
    File(PathBuf, Box<Policy>),
    /// `--policy-dir DIR`: each tenant's name, file, policy, and the
    /// fingerprint of the file it was read from.
    Dir(PathBuf, Vec<(String, PathBuf, Policy, Fingerprint)>),
    /// `--policy-etcd`: the tenants under a prefix (the second) of an etcd
    /// cluster (its endpoints, the first), read at start-up.
    Etcd(Vec<String>, String, Option<crate::etcd::EtcdTls>),
}

/// Where the live policies are followed from.
enum Live {
    /// Policy files (a directory's, with each file's fingerprint).
    Files(PathBuf, Option<Vec<(String, Fingerprint)>>),
    /// etcd, from the revision start-up read.
    Etcd(crate::etcd::Etcd, i64),
}

/// How long start-up waits for etcd to answer.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The tenants in etcd at start-up, in a store; exit 2 when etcd does not
/// answer within [`ETCD_START_TIMEOUT`]. A key that is not a valid policy
/// is reported and its tenant not served (fail closed).
async fn load_etcd(etcd: &crate::etcd::Etcd) -> Result<(Arc<Store>, i64), ExitCode> {
    let started = std::time::Instant::now();
    let loaded = loop {
        match reload::etcd::load(etcd).await {
            Ok(loaded) => break loaded,
            Err(why) if started.elapsed() > ETCD_START_TIMEOUT => {
                error!("cannot read the policies from etcd: {why}");
                return Err(ExitCode::from(2));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let store = Store::with_tenants(loaded.tenants);
    for (name, why) in loaded.invalid {
        error!(tenant = %name, "the policy in etcd is not valid; the tenant is not served:\n{why}");
        store.set_reload_error(&name, why);
    }
    Ok((store, loaded.revision))
}

/// What `corsd serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The gRPC address: TCP, or a Unix socket.
    pub listen: crate::listen::ListenAddr,
    /// TLS for the gRPC port (mTLS with a client CA); plaintext when `None`.
    pub tls: Option<crate::tls::TlsFiles>,
    /// A file holding the bearer token that admin calls must present.
    pub admin_token_file: Option<PathBuf>,
    /// Client certificate SANs that admit admin calls (with mTLS).
    pub admin_sans: Vec<String>,
    /// What one client may ask.
    pub limits: grpc::Limits,
    /// Also serve ECDS with the native-mode RBAC filters.
    pub xds: bool,
    /// Which ext_authz answers carry `dynamic_metadata`.
    pub ext_authz_metadata: grpc::ext_authz::ExtAuthzMetadata,
    /// Worker threads of the runtime.
    pub workers: usize,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Label decisions with their tenant.
    pub metrics_per_tenant: bool,
    /// Log denied decisions, at most this many lines a second; off when `None`.
    pub log_denials: Option<u64>,
    /// Log the decisions a candidate would change, at most this many lines a
    /// second; off when `None`.
    pub log_shadow: Option<u64>,
    /// Count each entry's allowed decisions.
    pub entry_usage: bool,
    /// `DIR/NAME.token` admits admin calls about tenant `NAME` alone.
    pub tenant_token_dir: Option<PathBuf>,
    /// After SIGTERM, how long to keep serving with health NOT_SERVING.
    pub drain_delay: Duration,
    /// Then, how long calls in flight may take to finish.
    pub shutdown_timeout: Duration,
}

/// How `corsd serve` writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Serves `policies`, each tenant's decisions tried again by its candidate
/// in `shadow`, and returns the process's exit code.
pub fn main(config: ServeConfig, policies: Policies, shadow: Option<Policies>) -> ExitCode {
    release_freed_memory();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(config, policies, shadow))
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Where policies were loaded from, their store, and (for a directory) each
/// file's fingerprint as it was read.
type Loaded<P> = (PathBuf, Arc<PolicyStore<P>>, Option<Vec<(String, Fingerprint)>>);

fn into_store<P: Prepare>(policies: Policies) -> Loaded<P> {
    match policies {
        Policies::File(path, policy) => (path, PolicyStore::new(*policy), None),
        Policies::Dir(dir, tenants) => {
            let known = tenants
                .iter()
                .map(|(name, _, _, print)| (name.clone(), print.clone()))
                .collect();
            let store = PolicyStore::with_tenants(tenants.into_iter().map(|(name, _, policy, _)| (name, policy)));
            (dir, store, Some(known))
        }
        // Loaded by `load_etcd` instead; candidates come from files only
        // (the command line allows no other), so this holds no tenant.
        Policies::Etcd(..) => (PathBuf::from("etcd"), PolicyStore::with_tenants(Vec::new()), None),
    }
}

/// Follows `source` (a file, or a directory's tenants `known` at start-up)
/// into `store`.
fn follow<P: Prepare>(
    source: &std::path::Path,
    store: &Arc<PolicyStore<P>>,
    known: Option<Vec<(String, Fingerprint)>>,
) -> Result<reload::ReloadHandle, ExitCode> {
    let watching = match known {
        None => reload::spawn(source.to_path_buf(), Arc::clone(store)),
        Some(known) => reload::spawn_dir_from(source.to_path_buf(), known, Arc::clone(store)),
    };
    match watching {
        Ok((handle, _task)) => Ok(handle),
        Err(e) => {
            error!("cannot watch {}: {e}", source.display());
            Err(ExitCode::from(2))
        }
    }
}

/// Warns, once per name, of each candidate whose tenant has no live policy
/// (it is ignored), now and after every swap of either store.
async fn warn_of_orphans(live: Arc<Store>, shadow: Arc<PolicyStore>) {
    let mut warned = std::collections::HashSet::new();
    let (mut live_swaps, mut shadow_swaps) = (live.follow(), shadow.follow());
    loop {
        let (tenants, candidates) = (live.tenants_full(), shadow.tenants_full());
        for (name, _) in candidates.sorted() {
            if tenants.get(name).is_none() && warned.insert(name.to_owned()) {
                warn!(
                    tenant = name,
                    "a candidate policy for a tenant with no live policy is ignored"
                );
            }
        }
        drop((tenants, candidates));
        tokio::select! {
            changed = live_swaps.changed() => if changed.is_err() { return },
            changed = shadow_swaps.changed() => if changed.is_err() { return },
        }
    }
}

async fn run(args: ServeConfig, policies: Policies, shadow: Option<Policies>) -> ExitCode {
    let mut termination = Termination::listen();
    let (source, store, live) = match policies {
        Policies::Etcd(endpoints, prefix, tls) => {
            let etcd = match crate::etcd::Etcd::with_tls(&endpoints, &prefix, tls.as_ref()) {
                Ok(etcd) => etcd,
                Err(why) => {
                    error!("--policy-etcd: {why}");
                    return ExitCode::from(2);
                }
            };
            match load_etcd(&etcd).await {
                Ok((store, revision)) => (
                    PathBuf::from(format!("etcd:{prefix}")),
                    store,
                    Live::Etcd(etcd, revision),
                ),
                Err(code) => return code,
            }
        }
        files => {
            let (source, store, known) = into_store::<grpc::cors_policy::Prepared>(files);
            (source.clone(), store, Live::Files(source, known))
        }
    };
    let tenants = store.tenants_full();
    let entries: usize = tenants.sorted().iter().map(|(_, t)| t.policy.entries().len()).sum();
    let version = store
        .load_full()
        .map(|s| s.policy.version().to_owned())
        .unwrap_or_default();
    let tenant_count = tenants.len();
    drop(tenants);
    let listener = match crate::listen::Listener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            error!("cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let addr = listener.local_addr();
    let tls = match args.tls.clone().map(crate::tls::TlsConfig::load).transpose() {
        Ok(tls) => tls,
        Err(why) => {
            error!("cannot serve TLS: {why}");
            return ExitCode::from(2);
        }
    };
    if let Some(tls) = &tls {
        tls.watch();
    }
    raise_open_files_limit(args.limits.max_connections);
    let admin = grpc::admin::AdminGate::new(args.admin_token_file.clone(), args.admin_sans.clone())
        .with_tenant_tokens(args.tenant_token_dir.clone());
    let audit = observe::audit::AuditLog::new();
    let policy_source = match &live {
        Live::Files(dir, Some(_)) => Some(grpc::policy_admin::PolicySource::Dir(dir.clone())),
        Live::Files(file, None) => Some(grpc::policy_admin::PolicySource::File(file.clone())),
        Live::Etcd(etcd, _) => Some(grpc::policy_admin::PolicySource::Etcd(etcd.clone())),
    };
    if !args.listen.is_local() && admin.is_open() {
        warn!(
            addr = %addr,
            "ListEntries and ListTenants are open to every client that reaches this address: \
             restrict them with --admin-san or --admin-token-file"
        );
    }
    let reloader = match live {
        Live::Files(source, known) => match follow(&source, &store, known) {
            Ok(handle) => Some(handle),
            Err(code) => return code,
        },
        Live::Etcd(etcd, revision) => {
            reload::etcd::follow(etcd, Arc::clone(&store), revision);
            None
        }
    };
    let (shadow, shadow_reloader) = match shadow.map(into_store::<()>) {
        None => (None, None),
        Some((candidates, shadow, known)) => {
            info!(
                candidates = %candidates.display(),
                tenants = shadow.tenants().len(),
                "shadow policies: every decision of their tenants is made again, never enforced"
            );
            let handle = match follow(&candidates, &shadow, known) {
                Ok(handle) => handle,
                Err(code) => return code,
            };
            tokio::spawn(warn_of_orphans(Arc::clone(&store), Arc::clone(&shadow)));
            (Some(shadow), Some(handle))
        }
    };
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    info!("SIGHUP: reloading the policy");
                    if let Some(reloader) = &reloader {
                        reloader.reload_now();
                    }
                    if let Some(shadow) = &shadow_reloader {
                        shadow.reload_now();
                    }
                }
            });
        }
        Err(e) => warn!("SIGHUP will not reload: {e}"),
    }
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    info!(
        addr = %addr,
        policy = %source.display(),
        tls = match &args.tls {
            None => "off",
            Some(files) if files.client_ca.is_some() => "mutual",
            Some(_) => "on",
        },
        version,
        tenants = tenant_count,
        entries,
        workers = args.workers,
        xds = args.xds,
        "corsd listening"
    );
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = match args.metrics_listen {
        None => None,
        Some(metrics_addr) => match std::net::TcpListener::bind(metrics_addr) {
            Ok(metrics_listener) => {
                let made = Metrics::new(Arc::clone(&store), args.metrics_per_tenant)
                    .and_then(|m| m.with_counter(audit.counter()))
                    .and_then(|m| match &tls {
                        Some(tls) => m.with_tls(Arc::clone(tls)),
                        None => Ok(m),
                    });
                let metrics = match made {
                    Ok(metrics) => Arc::new(metrics),
                    Err(e) => {
                        error!("cannot set up the metrics: {e}");
                        return ExitCode::from(2);
                    }
                };
                let shown = metrics_listener
                    .local_addr()
                    .map_or_else(|_| metrics_addr.to_string(), |a| a.to_string());
                info!(addr = %shown, "metrics listening: /metrics, /healthz, /readyz");
                if let Err(e) = observe::http::serve_apart(metrics_listener, Arc::clone(&metrics), Arc::clone(&ready)) {
                    error!("cannot serve the metrics: {e}");
                    return ExitCode::from(2);
                }
                Some(metrics.decisions())
            }
            Err(e) => {
                error!("cannot listen on {metrics_addr} for metrics: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let denials = args.log_denials.map(observe::denials::DenialLog::new);
    if let Some(log) = &denials {
        tokio::spawn(Arc::clone(log).report_dropped());
    }
    let denials_at_exit = denials.clone();
    let shadow_log = args.log_shadow.map(observe::denials::DenialLog::shadow);
    if let Some(log) = &shadow_log {
        tokio::spawn(Arc::clone(log).report_dropped());
    }
    let shadow_log_at_exit = shadow_log.clone();
    let path = grpc::decision::DecisionPath::with_metrics(store, metrics)
        .logging_denials(denials)
        .shadowing(shadow, shadow_log)
        .counting_usage(args.entry_usage);
    let options = grpc::ServeOptions {
        tls,
        admin,
        limits: args.limits.clone(),
        xds: args.xds,
        ext_authz_metadata: args.ext_authz_metadata,
        policy_admin: policy_source.map(|source| (source, audit)),
    };
    let mut server = tokio::spawn(grpc::serve_counted(
        listener,
        path,
        options,
        (reporter.clone(), health_service),
        shutdown,
    ));
    ready.store(true, Ordering::Relaxed);
    tokio::select! {
        () = termination.next() => {}
        ended = &mut server => return server_ended(ended),
    }
    // Balancers stop sending once they see NOT_SERVING; until the drain
    // delay has passed, new connections are still accepted and answered.
    info!(
        drain_delay_ms = args.drain_delay.as_millis(),
        "shutting down: NOT_SERVING, serving on while balancers notice"
    );
    ready.store(false, Ordering::Relaxed);
    grpc::set_health(&reporter, ServingStatus::NotServing).await;
    tokio::select! {
        () = tokio::time::sleep(args.drain_delay) => {}
        () = termination.next() => info!("second signal: ending the drain now"),
        ended = &mut server => return server_ended(ended),
    }
    info!(
        shutdown_timeout_ms = args.shutdown_timeout.as_millis(),
        "no longer accepting; finishing calls in flight"
    );
    let _ = stop.send(());
    let flush_denials = move || {
        for log in [&denials_at_exit, &shadow_log_at_exit].into_iter().flatten() {
            log.close();
        }
    };
    let code = match tokio::time::timeout(args.shutdown_timeout, server).await {
        Ok(ended) => server_ended(ended),
        Err(_) => {
            warn!(
                "calls still open after {} ms (health watchers?); exiting",
                args.shutdown_timeout.as_millis()
            );
            ExitCode::SUCCESS
        }
    };
    // Every denial is either a line or counted as dropped, to the end.
    flush_denials();
    code
}

/// Raises the soft limit on open files toward the hard one, so that
/// `max_connections` connections fit; warns when they cannot.
fn raise_open_files_limit(max_connections: usize) {
    // Room for the policy files, the watcher, metrics and logs besides.
    let wanted = u64::try_from(max_connections).unwrap_or(u64::MAX).saturating_add(64);
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => warn!(
            open_files = got,
            max_connections, "the open files limit is below --max-connections; accepts will fail before it"
        ),
        Ok(_) => {}
        Err(e) => warn!("cannot raise the open files limit: {e}"),
    }
}

type Served = Result<Result<(), Box<dyn std::error::Error + Send + Sync>>, tokio::task::JoinError>;

fn server_ended(ended: Served) -> ExitCode {
    match ended {
        Ok(Ok(())) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            error!("server failed: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            error!("server task failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM and SIGINT, listened for from start-up on: a signal that comes
/// before the server is up is not lost to the default action.
struct Termination {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Termination {
    fn listen() -> Self {
        let listen = |kind| match signal(kind) {
            Ok(signals) => Some(signals),
            Err(e) => {
                warn!("cannot listen for a signal: {e}");
                None
            }
        };
        Termination {
            terminate: listen(SignalKind::terminate()),
            interrupt: listen(SignalKind::interrupt()),
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        async fn one(signals: &mut Option<tokio::signal::unix::Signal>) {
            match signals {
                Some(signals) => {
                    signals.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = one(&mut self.terminate) => {}
            () = one(&mut self.interrupt) => {}
        }
    }
}
