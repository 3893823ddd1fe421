//! The `corsd` command line: `serve`, `validate` and `check`.
//!
//! Exit codes: `validate` 0 valid, 1 invalid, 2 usage or I/O error; `check`
//! 0 unless the verdict is deny (1) or the check could not be made (2).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::core::{Compiled, Decision, Policy, Request, decide};

/// A CORS policy decision point for API gateways.
#[derive(Debug, Parser)]
#[command(name = "corsd", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve decisions over gRPC (corsd.v1, Envoy ext_authz v3, health, reflection).
    Serve(ServeArgs),
    /// Check a policy file; every error is printed as FILE:LINE:COL: message.
    Validate {
        /// The policy file.
        file: PathBuf,
    },
    /// Decide one request offline, as the server would.
    Check(CheckArgs),
}

/// Flags of `corsd serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The policy file; it is watched and reloaded when it changes.
    #[arg(long, env = "CORSD_POLICY")]
    pub policy: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "CORSD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "CORSD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How `corsd serve` writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The policy file.
    #[arg(long, env = "CORSD_POLICY")]
    policy: PathBuf,
    /// The request's Origin header; without it the request has none.
    #[arg(long)]
    origin: Option<String>,
    /// The request method [default: OPTIONS with --request-method, else GET].
    #[arg(long)]
    method: Option<String>,
    /// Access-Control-Request-Method (makes an OPTIONS request a preflight).
    #[arg(long)]
    request_method: Option<String>,
    /// Access-Control-Request-Headers; repeat for several header lines.
    #[arg(long)]
    request_headers: Vec<String>,
    /// Send Access-Control-Request-Private-Network: true.
    #[arg(long)]
    private_network: bool,
    /// The target's scheme.
    #[arg(long, default_value = "https")]
    scheme: String,
    /// The target's host[:port]; without it the target counts as inside the
    /// policy's scope and never as the same origin.
    #[arg(long, default_value = "")]
    authority: String,
    /// The target's path; without it the target counts as inside the scope's paths.
    #[arg(long, default_value = "")]
    path: String,
    /// Print the decision as one JSON object.
    #[arg(long)]
    json: bool,
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
        Command::Serve(args) => crate::server::main(args),
        Command::Validate { file } => validate(&file),
        Command::Check(args) => check(&args),
    }
}

/// Reads and compiles a policy file. On failure the messages are printed on
/// stderr and the exit code (1 invalid, 2 unreadable) is returned.
pub fn load_policy(path: &Path) -> Result<Compiled, ExitCode> {
    let shown = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{shown}: cannot read the policy file: {e}");
            return Err(ExitCode::from(2));
        }
    };
    match Policy::compile(&shown, &bytes) {
        Ok(compiled) => {
            for warning in &compiled.warnings {
                eprintln!("{}", warning.display(&shown));
            }
            Ok(compiled)
        }
        Err(error) => {
            eprintln!("{}", error.display(&shown));
            let count = error
                .diagnostics
                .iter()
                .filter(|d| d.severity == crate::core::Severity::Error)
                .count();
            eprintln!(
                "{shown}: {count} error{}: not a valid policy",
                if count == 1 { "" } else { "s" }
            );
            Err(ExitCode::from(1))
        }
    }
}

fn validate(file: &Path) -> ExitCode {
    match load_policy(file) {
        Ok(compiled) => {
            let p = &compiled.policy;
            println!(
                "{}: valid policy, version {}, {} entr{}",
                file.display(),
                p.version(),
                p.entries().len(),
                if p.entries().len() == 1 { "y" } else { "ies" }
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    let compiled = match load_policy(&args.policy) {
        Ok(compiled) => compiled,
        Err(_) => return ExitCode::from(2),
    };
    let method = match (&args.method, &args.request_method) {
        (Some(m), _) => m.as_str(),
        (None, Some(_)) => "OPTIONS",
        (None, None) => "GET",
    };
    let request = Request {
        origin: args.origin.as_deref(),
        method,
        request_method: args.request_method.as_deref(),
        request_headers: &args.request_headers,
        request_private_network: args.private_network,
        scheme: &args.scheme,
        authority: &args.authority,
        path: &args.path,
    };
    let decision = decide(&compiled.policy, &request);
    let printed = if args.json {
        print_json(&decision)
    } else {
        print_text(&decision)
    };
    if let Err(e) = printed {
        eprintln!("corsd check: cannot write the decision: {e}");
        return ExitCode::from(2);
    }
    match decision.verdict {
        crate::core::Verdict::Deny => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

#[derive(Serialize)]
struct JsonDecision<'a> {
    verdict: &'static str,
    reason: &'static str,
    preflight: bool,
    respond_status: u16,
    response_headers: Vec<JsonHeader<'a>>,
    matched_pattern: &'a str,
    policy_version: &'a str,
}

#[derive(Serialize)]
struct JsonHeader<'a> {
    name: &'static str,
    value: &'a str,
    append: bool,
}

fn print_json(decision: &Decision<'_>) -> std::io::Result<()> {
    let json = JsonDecision {
        verdict: decision.verdict.as_str(),
        reason: decision.reason.as_str(),
        preflight: decision.preflight,
        respond_status: decision.respond_status,
        response_headers: decision
            .response_headers
            .iter()
            .map(|h| JsonHeader {
                name: h.name.as_str(),
                value: &h.value,
                append: h.append,
            })
            .collect(),
        matched_pattern: decision.matched_pattern(),
        policy_version: decision.policy_version,
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &json).map_err(std::io::Error::other)?;
    writeln!(out)
}

fn print_text(decision: &Decision<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    write!(out, "{} ({})", decision.verdict.as_str(), decision.reason.as_str())?;
    if let Some(detail) = decision.detail {
        write!(out, ": {detail}")?;
    }
    writeln!(out)?;
    writeln!(out, "preflight: {}", decision.preflight)?;
    match decision.respond_status {
        0 => writeln!(out, "answer: forward to the upstream")?,
        status => writeln!(out, "answer: respond now with {status}")?,
    }
    if let Some(entry) = decision.matched {
        writeln!(out, "matched: {} (line {})", entry.pattern, entry.line)?;
    }
    writeln!(out, "policy version: {}", decision.policy_version)?;
    for h in &decision.response_headers {
        let how = if h.append { " (appended)" } else { "" };
        writeln!(out, "{}: {}{how}", h.name, h.value)?;
    }
    Ok(())
}
