//! `corsd envoy-config (--policy FILE | --policy-dir DIR --tenant T)
//! [--format json|yaml]` (DESIGN.md section 13): the policy compiled into
//! Envoy's own RBAC and CORS filters, printed as one object whose keys are
//! the Envoy fields its values go into.
//!
//! Exit 0 printed, 1 the policy is invalid, 2 usage or I/O error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;

use crate::core::Policy;
use crate::core::native::envoy_config;
use crate::native::envoy_config_json;

/// Flags of `corsd envoy-config`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("policies").required(true).args(["policy", "policy_dir"])))]
pub(super) struct EnvoyConfigArgs {
    /// The policy file.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A directory of tenant policies (with --tenant).
    #[arg(long, requires = "tenant")]
    policy_dir: Option<PathBuf>,
    /// The tenant of --policy-dir whose policy to compile.
    #[arg(long, requires = "policy_dir")]
    tenant: Option<String>,
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
    let (policy, tenant) = match (&args.policy, &args.policy_dir, &args.tenant) {
        (Some(path), _, _) => match super::validate::load(path) {
            Ok(compiled) => (compiled.policy, String::new()),
            Err(code) => return code,
        },
        (None, Some(dir), Some(tenant)) => match tenant_policy(dir, tenant) {
            Ok(policy) => (policy, tenant.clone()),
            Err(code) => return code,
        },
        _ => return ExitCode::from(2),
    };
    let value = match envoy_config_json(&envoy_config(&policy, &tenant)) {
        Ok(value) => value,
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
    let names: Vec<String> = tenants.iter().map(|(name, _, _)| name.clone()).collect();
    match tenants.into_iter().find(|(name, _, _)| name == tenant) {
        Some((_, _, policy)) => Ok(policy),
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
