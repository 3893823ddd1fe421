//! `corsd serve`: its flags, turned into a plain [`ServeConfig`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;

use super::validate::{load, load_dir};
use crate::server::{LogFormat, Policies, ServeConfig};

/// Flags of `corsd serve`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("policies").required(true).args(["policy", "policy_dir"])))]
pub(super) struct ServeArgs {
    /// The policy file; it is watched and reloaded when it changes.
    #[arg(long, env = "CORSD_POLICY")]
    policy: Option<PathBuf>,
    /// A directory of tenant policies, `NAME.toml` each (exclusive with
    /// --policy); every file is watched and reloaded on its own.
    #[arg(long, env = "CORSD_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "CORSD_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
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
    /// Write one JSON line per denied decision to stderr (target corsd::denial).
    #[arg(long, env = "CORSD_LOG_DENIALS")]
    log_denials: bool,
    /// Most denial lines a second; the rest are counted in a line each second.
    #[arg(long, env = "CORSD_LOG_DENIALS_RATE", default_value_t = crate::observe::denials::DEFAULT_RATE)]
    log_denials_rate: u64,
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
        (None, None) => return ExitCode::from(2),
    };
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let config = ServeConfig {
        listen: args.listen,
        workers,
        metrics_listen: args.metrics_listen,
        metrics_per_tenant: args.metrics_per_tenant,
        log_denials: args.log_denials.then_some(args.log_denials_rate),
    };
    crate::server::main(config, policies)
}
