//! `corsd serve`: its flags, turned into a plain [`ServeConfig`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;

use super::validate::{load, load_dir};
use crate::listen::ListenAddr;
use crate::server::{LogFormat, Policies, ServeConfig};

/// Flags of `corsd serve`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("policies").required(true).args(["policy", "policy_dir", "policy_etcd"])))]
pub(super) struct ServeArgs {
    /// The policy file; it is watched and reloaded when it changes.
    #[arg(long, env = "CORSD_POLICY")]
    policy: Option<PathBuf>,
    /// A directory of tenant policies, `NAME.toml` each (exclusive with
    /// --policy); every file is watched and reloaded on its own.
    #[arg(long, env = "CORSD_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// etcd endpoints (http://host:port, comma-separated): each tenant is the
    /// key PREFIX + NAME holding its policy, and every replica follows etcd.
    #[arg(long, env = "CORSD_POLICY_ETCD", value_delimiter = ',', value_name = "URL[,URL...]")]
    policy_etcd: Vec<String>,
    /// With --policy-etcd: the prefix of the tenants' keys.
    #[arg(
        long,
        env = "CORSD_ETCD_PREFIX",
        default_value = "/corsd/tenants/",
        requires = "policy_etcd"
    )]
    etcd_prefix: String,
    /// With --policy-etcd over https://: the CA (PEM) that signs the members' certificates.
    #[arg(long, env = "CORSD_ETCD_CA", requires = "policy_etcd", value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// With --policy-etcd: corsd's client certificate (PEM), for etcd's --client-cert-auth.
    #[arg(long, env = "CORSD_ETCD_CERT", requires_all = ["policy_etcd", "etcd_key"], value_name = "FILE")]
    etcd_cert: Option<PathBuf>,
    /// With --etcd-cert: its private key (PEM).
    #[arg(long, env = "CORSD_ETCD_KEY", requires = "etcd_cert", value_name = "FILE")]
    etcd_key: Option<PathBuf>,
    /// Address to listen on: HOST:PORT, or unix:PATH for a Unix socket (mode 0660).
    #[arg(long, env = "CORSD_LISTEN", default_value = "127.0.0.1:50051")]
    listen: ListenAddr,
    /// Serve TLS 1.2/1.3 with this PEM certificate chain (with --tls-key);
    /// reloaded when it changes.
    #[arg(long, env = "CORSD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert; reloaded when it changes.
    #[arg(long, env = "CORSD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates chaining to this PEM CA (mTLS); reloaded
    /// when it changes.
    #[arg(long, env = "CORSD_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Admit admin calls (ListEntries, ListTenants) from clients whose
    /// certificate has this DNS or URI SAN (repeatable; needs --tls-client-ca).
    #[arg(
        long = "admin-san",
        env = "CORSD_ADMIN_SANS",
        value_delimiter = ',',
        requires = "tls_client_ca"
    )]
    admin_sans: Vec<String>,
    /// Admin calls (ListEntries, ListTenants) must present
    /// `authorization: Bearer TOKEN` with the token in this file (re-read on
    /// change, surrounding whitespace ignored) [default: open].
    #[arg(long, env = "CORSD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "CORSD_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
    /// Worker threads answering calls [default: the CPUs corsd may run on].
    #[arg(long, env = "CORSD_WORKERS")]
    workers: Option<NonZeroUsize>,
    /// Serve Prometheus metrics (/metrics), /healthz and /readyz over plain
    /// HTTP on this address [default: off].
    #[arg(long, env = "CORSD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Label decisions with their tenant (one series per tenant, API and reason).
    #[arg(long, env = "CORSD_METRICS_PER_TENANT")]
    metrics_per_tenant: bool,
    /// After SIGTERM, keep serving this long with health NOT_SERVING, so
    /// balancers stop sending first (`5s`, `500ms`, or seconds).
    #[arg(long, env = "CORSD_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    drain_delay: Duration,
    /// Then let calls in flight finish for at most this long.
    #[arg(long, env = "CORSD_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// Calls open at once on one HTTP/2 connection.
    #[arg(long, env = "CORSD_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    max_concurrent_streams: u32,
    /// Bytes of HTTP/2 headers one call may send.
    #[arg(long, env = "CORSD_MAX_HEADER_LIST_SIZE", default_value_t = 16 * 1024)]
    max_header_list_size: u32,
    /// How often an idle connection is pinged.
    #[arg(long, env = "CORSD_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, env = "CORSD_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    keepalive_timeout: Duration,
    /// Connections open at once; more are closed as soon as accepted.
    #[arg(long, env = "CORSD_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Bytes of one request message; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "CORSD_MAX_MESSAGE_SIZE", default_value_t = crate::grpc::MAX_MESSAGE_BYTES)]
    max_message_size: usize,
    /// Also serve Envoy's Extension Config Discovery Service on the same
    /// port: the policy compiled into an RBAC filter (`corsd-rbac`, or
    /// `corsd-rbac/TENANT`), pushed on every swap (native mode).
    #[arg(long, env = "CORSD_XDS")]
    xds: bool,
    /// Write one JSON line per denied decision to stderr (target corsd::denial).
    #[arg(long, env = "CORSD_LOG_DENIALS")]
    log_denials: bool,
    /// Most denial lines a second; the rest are counted in a line each second.
    #[arg(long, env = "CORSD_LOG_DENIALS_RATE", default_value_t = crate::observe::denials::DEFAULT_RATE)]
    log_denials_rate: u64,
    /// Which ext_authz answers carry dynamic_metadata (corsd_reason,
    /// corsd_matched, corsd_policy_version, corsd_tenant) for Envoy's access
    /// log: denials (403s), all, or off.
    #[arg(long, env = "CORSD_EXT_AUTHZ_METADATA", value_enum, default_value_t = MetadataArg::Denials)]
    ext_authz_metadata: MetadataArg,
    /// A candidate policy (with --policy), tried on every request and never
    /// enforced: each answer says what it would change. Watched like the policy.
    #[arg(long, env = "CORSD_SHADOW_POLICY", requires = "policy", value_name = "FILE")]
    shadow_policy: Option<PathBuf>,
    /// Candidate policies (with --policy-dir): DIR/NAME.toml is tenant NAME's.
    #[arg(long, env = "CORSD_SHADOW_POLICY_DIR", requires = "policy_dir", value_name = "DIR")]
    shadow_policy_dir: Option<PathBuf>,
    /// A directory of tenant tokens: DIR/NAME.token admits admin calls
    /// (PolicyAdmin, ListEntries, ListTenants) about tenant NAME alone.
    #[arg(long, env = "CORSD_TENANT_TOKEN_DIR", value_name = "DIR")]
    tenant_token_dir: Option<PathBuf>,
    /// Count, per entry, the decisions it allowed (ListEntries' hits,
    /// `corsd entries list --server`); off: every entry shows 0.
    #[arg(long, env = "CORSD_ENTRY_USAGE", value_enum, default_value_t = Switch::On)]
    entry_usage: Switch,
    /// Write one JSON line per decision a candidate would change (target corsd::shadow).
    #[arg(long, env = "CORSD_LOG_SHADOW")]
    log_shadow: bool,
    /// Most shadow lines a second; the rest are counted in a line each second.
    #[arg(long, env = "CORSD_LOG_SHADOW_RATE", default_value_t = crate::observe::denials::DEFAULT_RATE)]
    log_shadow_rate: u64,
}

/// Which ext_authz answers carry `dynamic_metadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MetadataArg {
    /// Every answer that denies (403); none on allowed or forwarded ones.
    Denials,
    /// Every answer.
    All,
    /// None.
    Off,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// How `corsd serve` writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

pub(super) fn run(args: ServeArgs) -> ExitCode {
    let log_format = match args.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    };
    crate::server::init_tracing(log_format);
    // Start-up refuses a policy that `corsd validate` refuses, with its messages.
    let policies = match (args.policy, args.policy_dir) {
        (Some(path), _) => match load(&path) {
            Ok(compiled) => Policies::File(path, Box::new(compiled.policy)),
            Err(code) => return code,
        },
        (None, Some(dir)) => match load_dir(&dir) {
            Ok(tenants) => Policies::Dir(dir, tenants),
            Err(code) => return code,
        },
        (None, None) if !args.policy_etcd.is_empty() => {
            let tls = (args.etcd_ca.is_some() || args.etcd_cert.is_some()).then(|| crate::etcd::EtcdTls {
                ca: args.etcd_ca,
                identity: args.etcd_cert.zip(args.etcd_key),
            });
            Policies::Etcd(args.policy_etcd, args.etcd_prefix, tls)
        }
        (None, None) => return ExitCode::from(2),
    };
    // A candidate that does not load stops start-up the same way.
    let shadow = match (args.shadow_policy, args.shadow_policy_dir) {
        (Some(path), _) => match load(&path) {
            Ok(compiled) => Some(Policies::File(path, Box::new(compiled.policy))),
            Err(code) => return code,
        },
        (None, Some(dir)) => match load_dir(&dir) {
            Ok(tenants) => Some(Policies::Dir(dir, tenants)),
            Err(code) => return code,
        },
        (None, None) => None,
    };
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let config = ServeConfig {
        listen: args.listen,
        tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| crate::tls::TlsFiles {
            cert,
            key,
            client_ca: args.tls_client_ca,
        }),
        admin_token_file: args.admin_token_file,
        admin_sans: args.admin_sans,
        limits: crate::grpc::Limits {
            max_concurrent_streams: args.max_concurrent_streams,
            max_header_list_size: args.max_header_list_size,
            keepalive_interval: args.keepalive_interval,
            keepalive_timeout: args.keepalive_timeout,
            max_message_bytes: args.max_message_size,
            max_connections: args.max_connections,
        },
        xds: args.xds,
        ext_authz_metadata: match args.ext_authz_metadata {
            MetadataArg::Denials => crate::grpc::ext_authz::ExtAuthzMetadata::Denials,
            MetadataArg::All => crate::grpc::ext_authz::ExtAuthzMetadata::All,
            MetadataArg::Off => crate::grpc::ext_authz::ExtAuthzMetadata::Off,
        },
        workers,
        metrics_listen: args.metrics_listen,
        metrics_per_tenant: args.metrics_per_tenant,
        log_denials: args.log_denials.then_some(args.log_denials_rate),
        log_shadow: args.log_shadow.then_some(args.log_shadow_rate),
        entry_usage: args.entry_usage == Switch::On,
        tenant_token_dir: args.tenant_token_dir,
        drain_delay: args.drain_delay,
        shutdown_timeout: args.shutdown_timeout,
    };
    crate::server::main(config, policies, shadow)
}

/// A duration as the flags take it: `5s`, `500ms`, `2m`, or a bare number of
/// seconds (`5`, `0.5`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write `5s`, `500ms` or a number of seconds"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("`{text}`: the unit is `ms`, `s` or `m`")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
