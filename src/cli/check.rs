//! `corsd check`: one decision offline, as the server would make it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::validate::{load, load_dir};
use crate::core::shadow::{Shadowed, compare};
use crate::core::{Decision, Request, TenantDecision, Verdict, decide, decide_for};
use crate::grpc::Store;

/// Flags of `corsd check`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("policies").required(true).args(["policy", "policy_dir"])))]
pub(super) struct CheckArgs {
    /// The policy file.
    #[arg(long, env = "CORSD_POLICY")]
    policy: Option<PathBuf>,
    /// A directory of tenant policies, as `corsd serve --policy-dir` takes.
    #[arg(long, env = "CORSD_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// The tenant the gateway names; without it the tenant is chosen by
    /// the target's host (--authority).
    #[arg(long, default_value = "")]
    tenant: String,
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
    /// A candidate policy: decide with it too, and print what it would
    /// change (the live decision still sets the exit code). With
    /// --policy-dir it is the candidate of the tenant that decides.
    #[arg(long, value_name = "FILE")]
    shadow: Option<PathBuf>,
    /// Print the decision as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: &CheckArgs) -> ExitCode {
    let store = match (&args.policy, &args.policy_dir) {
        (Some(path), _) => match load(path) {
            Ok(compiled) => Store::new(compiled.policy),
            Err(_) => return ExitCode::from(2),
        },
        (None, Some(dir)) => match load_dir(dir) {
            Ok(tenants) => Store::with_tenants(tenants.into_iter().map(|(name, _, policy, _)| (name, policy))),
            Err(_) => return ExitCode::from(2),
        },
        (None, None) => return ExitCode::from(2),
    };
    let candidate = match args.shadow.as_deref().map(load).transpose() {
        Ok(candidate) => candidate.map(|c| c.policy),
        Err(_) => return ExitCode::from(2),
    };
    let method = match (&args.method, &args.request_method) {
        (Some(m), _) => m.as_str(),
        (None, Some(_)) => "OPTIONS",
        (None, None) => "GET",
    };
    let request = Request {
        origin: args.origin.as_deref(),
        several_origins: false,
        method,
        request_method: args.request_method.as_deref(),
        request_headers: &args.request_headers,
        request_private_network: args.private_network,
        scheme: &args.scheme,
        authority: &args.authority,
        path: &args.path,
    };
    let tenants = store.tenants();
    let TenantDecision {
        tenant,
        decision,
        selected,
    } = decide_for(&tenants, &args.tenant, &request);
    // As the server: only what a live policy decided is shadowed.
    let shadowed = candidate.as_ref().filter(|_| selected.is_some()).map(|candidate| {
        let shadow = decide(candidate, &request);
        Shadowed {
            change: compare(&decision, &shadow),
            decision: shadow,
        }
    });
    let printed = if args.json {
        print_json(tenant, &decision, shadowed.as_ref())
    } else {
        print_text(tenant, &decision, store.is_single(), shadowed.as_ref())
    };
    if let Err(e) = printed {
        eprintln!("corsd check: cannot write the decision: {e}");
        return ExitCode::from(2);
    }
    match decision.verdict {
        Verdict::Deny => ExitCode::from(1),
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
    tenant: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<JsonShadow<'a>>,
}

#[derive(Serialize)]
struct JsonShadow<'a> {
    verdict: &'static str,
    reason: &'static str,
    matched_pattern: &'a str,
    policy_version: &'a str,
    change: &'static str,
}

#[derive(Serialize)]
struct JsonHeader<'a> {
    name: &'static str,
    value: &'a str,
    append: bool,
}

fn print_json(tenant: &str, decision: &Decision<'_>, shadow: Option<&Shadowed<'_>>) -> std::io::Result<()> {
    let json = JsonDecision {
        verdict: decision.verdict.as_str(),
        reason: decision.reason.as_str(),
        preflight: decision.preflight,
        respond_status: decision.answer.respond_status(),
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
        tenant,
        shadow: shadow.map(|s| JsonShadow {
            verdict: s.decision.verdict.as_str(),
            reason: s.decision.reason.as_str(),
            matched_pattern: s.decision.matched_pattern(),
            policy_version: s.decision.policy_version,
            change: s.change.as_str(),
        }),
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &json).map_err(std::io::Error::other)?;
    writeln!(out)
}

fn print_text(
    tenant: &str,
    decision: &Decision<'_>,
    single: bool,
    shadow: Option<&Shadowed<'_>>,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    write!(out, "{} ({})", decision.verdict.as_str(), decision.reason.as_str())?;
    if let Some(detail) = decision.detail {
        write!(out, ": {detail}")?;
    }
    writeln!(out)?;
    writeln!(out, "preflight: {}", decision.preflight)?;
    match decision.answer.status() {
        None => writeln!(out, "answer: forward to the upstream")?,
        Some(status) => writeln!(out, "answer: respond now with {status}")?,
    }
    if let Some(entry) = decision.matched {
        writeln!(out, "matched: {} (line {})", entry.pattern, entry.line)?;
    }
    if !single {
        writeln!(out, "tenant: {tenant}")?;
    }
    writeln!(out, "policy version: {}", decision.policy_version)?;
    for h in &decision.response_headers {
        let how = if h.append { " (appended)" } else { "" };
        writeln!(out, "{}: {}{how}", h.name, h.value)?;
    }
    if let Some(shadow) = shadow {
        let candidate = &shadow.decision;
        writeln!(out, "shadow: {}", shadow.change.as_str())?;
        writeln!(
            out,
            "candidate: {} ({})",
            candidate.verdict.as_str(),
            candidate.reason.as_str()
        )?;
        if let Some(entry) = candidate.matched {
            writeln!(out, "candidate matched: {} (line {})", entry.pattern, entry.line)?;
        }
        writeln!(out, "candidate policy version: {}", candidate.policy_version)?;
    }
    Ok(())
}
