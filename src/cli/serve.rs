//! `corsd serve`: its flags, turned into a plain [`ServeConfig`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;

use super::validate::load;
use crate::server::{LogFormat, ServeConfig};

/// Flags of `corsd serve`.
#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// The policy file; it is watched and reloaded when it changes.
    #[arg(long, env = "CORSD_POLICY")]
    policy: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "CORSD_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "CORSD_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
    /// Worker threads answering calls [default: the CPUs corsd may run on].
    #[arg(long, env = "CORSD_WORKERS")]
    workers: Option<NonZeroUsize>,
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
    let compiled = match load(&args.policy) {
        Ok(compiled) => compiled,
        Err(code) => return code,
    };
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let config = ServeConfig {
        policy_path: args.policy,
        listen: args.listen,
        workers,
    };
    crate::server::main(config, compiled.policy)
}
