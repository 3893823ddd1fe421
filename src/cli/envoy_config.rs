//! `corsd envoy-config (--policy FILE | --policy-dir DIR [--tenant T])
//! [--format json|yaml]` (DESIGN.md section 13): the policy compiled into
//! Envoy's own RBAC and CORS filters, printed as one object whose keys are
//! the Envoy fields its values go into. A directory without `--tenant`
//! prints its one tenant's object, or with several, one object per tenant
//! under the tenant's name.
//!
//! Exit 0 printed, 1 the policy is invalid, 2 usage or I/O error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;

use crate::core::Policy;
use crate::native::envoy::envoy_config_shadowed;
use crate::native::envoy_config_json;

/// Flags of `corsd envoy-config`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("policies").required(true).args(["policy", "policy_dir"])))]
pub(super) struct EnvoyConfigArgs {
    /// The policy file.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A directory of tenant policies.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// The tenant of --policy-dir whose policy to compile.
    #[arg(long, requires = "policy_dir")]
    tenant: Option<String>,
    /// A candidate policy (with --policy), compiled into the RBAC filter's
    /// shadow_matcher: counted and logged by Envoy, never enforced.
    #[arg(long, requires = "policy", value_name = "FILE")]
    shadow_policy: Option<PathBuf>,
    /// Candidate policies (with --policy-dir): DIR/NAME.toml is tenant NAME's.
    #[arg(long, requires = "policy_dir", value_name = "DIR")]
    shadow_policy_dir: Option<PathBuf>,
    /// How to print the fragments.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One JSON object.
    Json,
    /// The same object as YAML.
    Yaml,
}

pub(super) fn run(args: &EnvoyConfigArgs) -> ExitCode {
    let policies: Vec<(String, Policy)> = match (&args.policy, &args.policy_dir, &args.tenant) {
        (Some(path), _, _) => match super::validate::load(path) {
            Ok(compiled) => vec![(String::new(), compiled.policy)],
            Err(code) => return code,
        },
        (None, Some(dir), Some(tenant)) => match tenant_policy(dir, tenant) {
            Ok(policy) => vec![(tenant.clone(), policy)],
            Err(code) => return code,
        },
        (None, Some(dir), None) => match super::validate::load_dir(dir) {
            Ok(tenants) if !tenants.is_empty() => tenants.into_iter().map(|(name, _, p, _)| (name, p)).collect(),
            Ok(_) => {
                eprintln!("{}: no tenant policy (NAME.toml) in it", dir.display());
                return ExitCode::from(2);
            }
            Err(code) => return code,
        },
        _ => return ExitCode::from(2),
    };
    let candidates: Vec<(String, Policy)> = match (&args.shadow_policy, &args.shadow_policy_dir) {
        (Some(path), _) => match super::validate::load(path) {
            Ok(compiled) => vec![(String::new(), compiled.policy)],
            Err(code) => return code,
        },
        (None, Some(dir)) => match super::validate::load_dir(dir) {
            Ok(tenants) => tenants.into_iter().map(|(name, _, p, _)| (name, p)).collect(),
            Err(code) => return code,
        },
        (None, None) => Vec::new(),
    };
    let candidate = |tenant: &str| candidates.iter().find(|(name, _)| name == tenant).map(|(_, p)| p);
    let compiled: Result<Vec<(String, serde_json::Value)>, String> = policies
        .iter()
        .map(|(tenant, policy)| {
            let config = envoy_config_shadowed(policy, candidate(tenant), tenant);
            Ok((tenant.clone(), envoy_config_json(&config)?))
        })
        .collect();
    let value = match compiled {
        Ok(mut objects) if objects.len() == 1 => objects.remove(0).1,
        Ok(objects) => serde_json::Value::Object(objects.into_iter().collect()),
        Err(e) => {
            eprintln!("corsd envoy-config: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match args.format {
        Format::Json => serde_json::to_string_pretty(&value).map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml_ng::to_string(&value).map_err(|e| e.to_string()),
    };
    let printed = text.map_err(std::io::Error::other).and_then(|text| {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        Ok(())
    });
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corsd envoy-config: {e}");
            ExitCode::from(2)
        }
    }
}

/// The policy of `tenant` in `dir`, every file of which must be valid.
fn tenant_policy(dir: &std::path::Path, tenant: &str) -> Result<Policy, ExitCode> {
    let tenants = super::validate::load_dir(dir)?;
    let names: Vec<String> = tenants.iter().map(|(name, _, _, _)| name.clone()).collect();
    match tenants.into_iter().find(|(name, _, _, _)| name == tenant) {
        Some((_, _, policy, _)) => Ok(policy),
        None => {
            eprintln!(
                "{}: no tenant `{tenant}` (tenants: {})",
                dir.display(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            );
            Err(ExitCode::from(2))
        }
    }
}
