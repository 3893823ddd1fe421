//! `corsd diff OLD NEW [--origin O]... [--json]` (DESIGN.md section 12):
//! what a change to a policy file changes. Entries are compared normalised,
//! settings by their effective values, and each origin checked (by default
//! every exact entry of both files) by deciding it under both files.
//!
//! Exit 0 when the two decide alike (reordered entries, comments, spellings
//! that normalise the same), 1 when they differ, 2 when a file cannot be
//! read or is invalid.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::core::pattern::PatternKind;
use crate::core::{Policy, Request, decide};

/// Flags of `corsd diff`.
#[derive(Debug, clap::Args)]
pub(super) struct DiffArgs {
    /// The policy file before the change.
    old: PathBuf,
    /// The policy file after it.
    new: PathBuf,
    /// An origin whose verdict to compare; repeat for several [default:
    /// every exact entry of both files].
    #[arg(long)]
    origin: Vec<String>,
    /// Print the differences as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Setting {
    setting: &'static str,
    old: String,
    new: String,
}

#[derive(Serialize)]
struct Verdicts {
    origin: String,
    old: Outcome,
    new: Outcome,
}

#[derive(Serialize, PartialEq, Eq)]
struct Outcome {
    verdict: &'static str,
    reason: &'static str,
}

#[derive(Serialize)]
struct Differences {
    entries_added: Vec<String>,
    entries_removed: Vec<String>,
    settings_changed: Vec<Setting>,
    verdicts_changed: Vec<Verdicts>,
    differ: bool,
}

pub(super) fn run(args: &DiffArgs) -> ExitCode {
    let Ok(old) = super::validate::load(&args.old) else {
        return ExitCode::from(2);
    };
    let Ok(new) = super::validate::load(&args.new) else {
        return ExitCode::from(2);
    };
    let differences = compare(&old.policy, &new.policy, &args.origin);
    let printed = if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &differences)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        print_text(&differences)
    };
    if let Err(e) = printed {
        eprintln!("corsd diff: cannot write: {e}");
        return ExitCode::from(2);
    }
    if differences.differ {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn compare(old: &Policy, new: &Policy, origins: &[String]) -> Differences {
    let patterns = |p: &Policy| p.entries().iter().map(|e| e.pattern.to_string()).collect::<Vec<_>>();
    let (before, after) = (patterns(old), patterns(new));
    let (before_set, after_set): (BTreeSet<&String>, BTreeSet<&String>) =
        (before.iter().collect(), after.iter().collect());
    let entries_added: Vec<String> = dedup(after.iter().filter(|p| !before_set.contains(p)));
    let entries_removed: Vec<String> = dedup(before.iter().filter(|p| !after_set.contains(p)));
    let settings_changed: Vec<Setting> = old
        .settings()
        .into_iter()
        .zip(new.settings())
        .filter(|((_, a), (_, b))| a != b)
        .map(|((setting, old), (_, new))| Setting { setting, old, new })
        .collect();
    let checked: Vec<String> = if origins.is_empty() {
        let exact = |p: &Policy| {
            p.entries()
                .iter()
                .filter(|e| matches!(e.pattern.kind(), PatternKind::Exact))
                .map(|e| e.pattern.to_string())
                .collect::<Vec<_>>()
        };
        dedup(exact(old).iter().chain(exact(new).iter()))
    } else {
        origins.to_vec()
    };
    let verdicts_changed = checked
        .into_iter()
        .filter_map(|origin| {
            let (a, b) = (outcome(old, &origin), outcome(new, &origin));
            (a != b).then_some(Verdicts { origin, old: a, new: b })
        })
        .collect::<Vec<_>>();
    let differ = !entries_added.is_empty()
        || !entries_removed.is_empty()
        || !settings_changed.is_empty()
        || !verdicts_changed.is_empty();
    Differences {
        entries_added,
        entries_removed,
        settings_changed,
        verdicts_changed,
        differ,
    }
}

/// Each string once, in first-seen order.
fn dedup<'a>(items: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    items.filter(|i| seen.insert(*i)).cloned().collect()
}

/// How `policy` decides a cross-origin GET from `origin` to a target in scope.
fn outcome(policy: &Policy, origin: &str) -> Outcome {
    let request = Request::get(origin);
    let decision = decide(policy, &request);
    Outcome {
        verdict: decision.verdict.as_str(),
        reason: decision.reason.as_str(),
    }
}

fn print_text(d: &Differences) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if !d.differ {
        return writeln!(out, "the two policies decide alike");
    }
    for (title, items, sign) in [
        ("entries added:", &d.entries_added, '+'),
        ("entries removed:", &d.entries_removed, '-'),
    ] {
        if !items.is_empty() {
            writeln!(out, "{title}")?;
            for item in items {
                writeln!(out, "  {sign} {item}")?;
            }
        }
    }
    if !d.settings_changed.is_empty() {
        writeln!(out, "settings changed:")?;
        for s in &d.settings_changed {
            writeln!(out, "  {}: {:?} -> {:?}", s.setting, s.old, s.new)?;
        }
    }
    if !d.verdicts_changed.is_empty() {
        writeln!(out, "verdicts changed:")?;
        for v in &d.verdicts_changed {
            writeln!(
                out,
                "  {}: {} ({}) -> {} ({})",
                v.origin, v.old.verdict, v.old.reason, v.new.verdict, v.new.reason
            )?;
        }
    }
    Ok(())
}
