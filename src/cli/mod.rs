//! The `corsd` command line: `serve`, `validate`, `check`, `entries`, `diff`
//! and `envoy-config`. clap lives
//! here and nowhere else; each command turns its flags into plain values
//! for the library.
//!
//! Exit codes: `validate` 0 valid, 1 invalid, 2 usage or I/O error; `check`
//! 0 unless the verdict is deny (1) or the check could not be made (2).

mod check;
mod diff;
mod entries;
mod entries_server;
mod envoy_config;
mod serve;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A CORS policy decision point for API gateways.
#[derive(Debug, Parser)]
#[command(
    name = "corsd",
    version,
    about,
    propagate_version = true,
    after_help = "Examples:\n  corsd serve --policy examples/policy.toml\n  corsd check --policy examples/policy.toml --origin https://a.partner.example.net"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve decisions over gRPC (corsd.v1, Envoy ext_authz v3, health, reflection).
    #[command(
        after_help = "Example:\n  corsd serve --policy-dir /etc/corsd/tenants --listen 0.0.0.0:50051 --metrics-listen 0.0.0.0:9090"
    )]
    Serve(Box<serve::ServeArgs>),
    /// Check a policy file; every error is printed as FILE:LINE:COL: message.
    #[command(after_help = "Example:\n  corsd validate examples/policy.toml")]
    Validate(validate::ValidateArgs),
    /// Decide one request offline, as the server would.
    #[command(
        after_help = "Example:\n  corsd check --policy examples/policy.toml --origin https://a.partner.example.net --request-method PATCH"
    )]
    Check(check::CheckArgs),
    /// Show what a change to a policy file changes (exit 1 when the two decide differently).
    #[command(after_help = "Example:\n  corsd diff examples/policy.toml examples/policy-v2.toml")]
    Diff(diff::DiffArgs),
    /// Compile a policy into Envoy's own RBAC and CORS filters (native mode).
    #[command(after_help = "Example:\n  corsd envoy-config --policy examples/policy.toml --format yaml")]
    EnvoyConfig(envoy_config::EnvoyConfigArgs),
    /// List, add or remove allowlist entries, keeping the file's layout.
    #[command(
        subcommand,
        after_help = "Example:\n  corsd entries add examples/policy.toml https://app.example.com --note \"web app\" --dry-run"
    )]
    Entries(entries::EntriesCommand),
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Validate(args) => validate::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Entries(command) => entries::run(command),
        Command::Diff(args) => diff::run(&args),
        Command::EnvoyConfig(args) => envoy_config::run(&args),
    }
}
