//! A policy directory's batch: one settled change read, compiled in
//! parallel and put in force with one swap (DESIGN.md section 14). See the
//! parent module for the whole picture.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, error, info, warn};

use super::MAX_REVISION_RETRIES;
use crate::core::{Policy, TenantSet};
use crate::memory::release_freed_memory;
use crate::policy_file::{self, Outcome};
use crate::store::{BatchResult, PolicyStore, Prepare, ReloadResult, Snapshot};
use crate::watch::{self, Change, Fingerprint, Layout};

/// What a directory's reloader remembers between batches.
#[derive(Debug, Clone)]
pub(super) struct DirState {
    pub(super) dir: PathBuf,
    /// Each tenant file seen, and its fingerprint when it was last read
    /// (`None`: read it at the next look).
    pub(super) seen: HashMap<String, Option<Fingerprint>>,
    /// Misnamed `.toml` files already warned about.
    pub(super) warned: HashSet<String>,
}

/// What one tenant file turned out to be in a batch.
#[derive(Debug)]
enum Found {
    /// Its content is the policy in force.
    Same(String, Fingerprint),
    /// A new version to compile.
    Changed(String, PathBuf, Vec<u8>, Fingerprint),
    /// It is there but cannot be read (a dangling link, a FIFO, a
    /// directory, a read error); its tenant keeps its policy.
    Unreadable(String, String, Fingerprint),
    /// Its name is gone from the directory.
    Gone(String),
}

/// What a batch read: each file's state, and names warned about.
#[derive(Debug, Default)]
struct Survey {
    found: Vec<Found>,
    misnamed: Vec<String>,
    /// A full rescan that is not routine (counted).
    rescanned: bool,
    /// Tenant files looked at (their metadata), and of those, read.
    looked_at: usize,
    read: usize,
    /// Time spent looking and reading, and compiling.
    survey_ms: f64,
    compile_ms: f64,
}

/// Reads one settled change of the directory and puts it in force with one
/// swap. Returns the state for the next batch.
pub(super) async fn batch<P: Prepare>(state: DirState, change: Change, store: &Arc<PolicyStore<P>>) -> DirState {
    let since = change.since.map_or_else(Instant::now, tokio::time::Instant::into_std);
    let change_rescan = change.rescan;
    let tenants = store.tenants_full();
    // Should the batch panic, the state is rebuilt rather than kept: with
    // no fingerprints, the next look reads every file again.
    let (dir, warned) = (state.dir.clone(), state.warned.clone());
    let work = tokio::task::spawn_blocking(move || {
        let surveying = Instant::now();
        let survey = survey_stable(&state, &change, &tenants);
        drop(tenants);
        let survey = survey.map(|mut s| {
            s.survey_ms = surveying.elapsed().as_secs_f64() * 1000.0;
            let compiling = Instant::now();
            let compiled = compile_changed(&s.found, &state.dir);
            s.compile_ms = compiling.elapsed().as_secs_f64() * 1000.0;
            (s, compiled)
        });
        (state, survey)
    })
    .await;
    let Ok((mut state, survey)) = work else {
        error!(dir = %dir.display(), "a policy directory batch failed; the policies in force stay");
        store.reload_stats().count_batch(BatchResult::Failed, since.elapsed());
        return DirState {
            dir,
            seen: HashMap::new(),
            warned,
        };
    };
    let (survey, compiled) = match survey {
        Ok(done) => done,
        Err(e) => {
            warn!(dir = %state.dir.display(), "cannot list the policy directory: {e}; every tenant stays in force");
            store.reload_stats().count_batch(BatchResult::Failed, since.elapsed());
            return state;
        }
    };
    if survey.rescanned {
        store.reload_stats().count_rescan();
    }
    debug!(
        dir = %state.dir.display(),
        rescan = change_rescan,
        looked_at = survey.looked_at,
        read = survey.read,
        changed = compiled.len(),
        "policy directory batch surveyed"
    );
    apply(&mut state, survey, compiled, store, since).await;
    state
}

/// Surveys the change, again while the directory's revision moves under it.
fn survey_stable<P: Prepare>(
    state: &DirState,
    change: &Change,
    tenants: &TenantSet<Snapshot<P>>,
) -> io::Result<Survey> {
    let mut tries = 0;
    loop {
        let before = Layout::of(&state.dir);
        let read_at = std::time::SystemTime::now();
        let mut survey = survey(state, change, tenants)?;
        // A changed file that no writer touched for a while was read whole;
        // one changed just now must read the same again.
        let unsettled =
            |f: &Found| matches!(f, Found::Changed(_, _, _, print) if !watch::settled_before(print, read_at));
        let changing = survey.found.iter().any(unsettled);
        let gone = survey.found.iter().any(|f| matches!(f, Found::Gone(_)));
        if changing || gone {
            // One pause for the whole batch; then each such file must read
            // the same again (or have been renamed in since).
            std::thread::sleep(watch::SETTLE);
            for slot in &mut survey.found {
                if !unsettled(slot) {
                    continue;
                }
                if let Found::Changed(name, path, bytes, print) = &*slot {
                    let settled = match watch::agrees(path, bytes, print) {
                        Ok(Some(read)) => Ok(read),
                        Ok(None) => watch::read_stable(path),
                        Err(e) => Err(e),
                    };
                    *slot = settled_found(name, path, print, settled, tenants);
                }
            }
            // A name that came back meanwhile is left to the next batch.
            let revision = configmap_revision(&state.dir);
            survey.found.retain(|f| match f {
                Found::Gone(name) => present(&state.dir, revision.as_deref(), name).is_none(),
                _ => true,
            });
        }
        let after = Layout::of(&state.dir);
        tries += 1;
        if before.same_revision(&after) || tries > MAX_REVISION_RETRIES {
            return Ok(survey);
        }
        // A new revision came in while this one was read: once its writer
        // is done (links of new keys added, of removed keys removed), read
        // it whole.
        debug!(dir = %state.dir.display(), "the directory changed revision while it was read; reading again");
        Layout::settled(&state.dir);
    }
}

/// The second read of a changed file, as a [`Found`].
fn settled_found<P: Prepare>(
    name: &str,
    path: &Path,
    print: &Fingerprint,
    read: io::Result<(Vec<u8>, Fingerprint)>,
    tenants: &TenantSet<Snapshot<P>>,
) -> Found {
    match read {
        Ok((bytes, print)) => {
            if tenants
                .get(name)
                .is_some_and(|s| s.policy.version() == Policy::version_of(&bytes))
            {
                Found::Same(name.to_owned(), print)
            } else {
                Found::Changed(name.to_owned(), path.to_path_buf(), bytes, print)
            }
        }
        Err(e) => Found::Unreadable(name.to_owned(), e.to_string(), print.clone()),
    }
}

/// Looks at the files the change may have touched (every tenant file on a
/// rescan), reading only those whose metadata moved (all of them when
/// forced). Blocking.
fn survey<P: Prepare>(state: &DirState, change: &Change, tenants: &TenantSet<Snapshot<P>>) -> io::Result<Survey> {
    let dir = &state.dir;
    let mut survey = Survey {
        rescanned: change.rescan && !change.routine,
        ..Survey::default()
    };
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    if change.rescan {
        let (listed, misnamed) = listing(dir)?;
        survey.misnamed = misnamed;
        names = listed;
        let in_force = tenants.sorted();
        let known = state
            .seen
            .keys()
            .map(String::as_str)
            .chain(in_force.iter().map(|(n, _)| *n));
        let gone: BTreeSet<&str> = known.filter(|n| !n.is_empty() && !names.contains_key(*n)).collect();
        survey.found.extend(gone.into_iter().map(|n| Found::Gone(n.to_owned())));
    } else {
        let revision = configmap_revision(dir);
        for path in &change.paths {
            let Some(file) = watch::name_of(path) else { continue };
            let Some(stem) = file.strip_suffix(".toml") else {
                continue;
            };
            if !crate::core::is_tenant_name(stem) {
                survey.misnamed.push(file);
                continue;
            }
            match present(dir, revision.as_deref(), stem) {
                Some(read_from) => {
                    names.insert(stem.to_owned(), read_from);
                }
                None if state.seen.contains_key(stem) || tenants.get(stem).is_some() => {
                    survey.found.push(Found::Gone(stem.to_owned()));
                }
                None => {}
            }
        }
    }
    // Looked at (and read, where the metadata moved) on every core: a
    // ConfigMap swap changes every file's identity.
    let names: Vec<(String, PathBuf)> = names.into_iter().collect();
    survey.looked_at = names.len();
    let looked = policy_file::in_parallel(&names, |(name, path)| {
        look_at(name, path, state, change.forced, tenants)
    });
    for found in looked.into_iter().flatten() {
        survey.read += 1;
        survey.found.push(found);
    }
    Ok(survey)
}

/// One tenant file: `None` when its metadata says it is as last read.
fn look_at<P: Prepare>(
    name: &str,
    path: &Path,
    state: &DirState,
    forced: bool,
    tenants: &TenantSet<Snapshot<P>>,
) -> Option<Found> {
    let path = path.to_path_buf();
    let print = Fingerprint::of(&path);
    if !forced && state.seen.get(name).and_then(Option::as_ref) == Some(&print) {
        return None;
    }
    let name = name.to_owned();
    Some(match watch::read_file(&path) {
        Ok((bytes, print)) => {
            let same = tenants
                .get(&name)
                .is_some_and(|s| s.policy.version() == Policy::version_of(&bytes));
            if same {
                Found::Same(name, print)
            } else {
                Found::Changed(name, path, bytes, print)
            }
        }
        Err(e) => Found::Unreadable(name, e.to_string(), print),
    })
}

/// A Kubernetes volume's (ConfigMap, Secret, projected) current revision:
/// the directory `DIR/..data` leads to, when there is one.
///
/// The volume swaps `..data` in one rename, then adds the links of new keys
/// and removes those of removed keys, which takes a while for many keys. A
/// key's presence is read from the revision itself, so a batch sees the new
/// keys and not the removed ones at once, whatever state the links are in.
fn configmap_revision(dir: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(dir.join("..data")).ok()?;
    let revision = dir.join(target);
    revision.is_dir().then_some(revision)
}

/// Whether `path` is a volume's link into its revision (`..data/NAME`).
fn is_revision_link(path: &Path) -> bool {
    std::fs::read_link(path).is_ok_and(|target| target.starts_with("..data"))
}

/// Whether `path` is still there and is not a volume's link into its
/// revision: a file of the directory's own, beside the volume's keys.
fn outside_revision(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Err(_) => false,
        Ok(m) if m.file_type().is_symlink() => std::fs::read_link(path).is_ok_and(|t| !t.starts_with("..data")),
        Ok(_) => true,
    }
}

/// The directory's tenant files and where to read each; with a volume's
/// revision, its keys are read from the revision itself.
fn listing(dir: &Path) -> io::Result<(BTreeMap<String, PathBuf>, Vec<String>)> {
    let files = policy_file::tenant_files(dir)?;
    let Some(revision) = configmap_revision(dir) else {
        return Ok((files.tenants.into_iter().collect(), files.misnamed));
    };
    let mut listed: BTreeMap<String, PathBuf> = files
        .tenants
        .into_iter()
        .filter(|(_, path)| outside_revision(path))
        .collect();
    for (name, path) in policy_file::tenant_files(&revision)?.tenants {
        listed.entry(name).or_insert(path);
    }
    Ok((listed, files.misnamed))
}

/// Tenant `name`'s file as the directory shows it.
fn shown(dir: &Path, name: &str) -> String {
    dir.join(format!("{name}.toml")).display().to_string()
}

/// Where tenant `name`'s file is read from, or `None` when it is gone.
fn present(dir: &Path, revision: Option<&Path>, name: &str) -> Option<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    let exists = std::fs::symlink_metadata(&path).is_ok();
    match revision {
        Some(revision) if !exists || is_revision_link(&path) => {
            let key = revision.join(format!("{name}.toml"));
            std::fs::symlink_metadata(&key).is_ok().then_some(key)
        }
        _ => exists.then_some(path),
    }
}

/// Compiles the changed files of a survey, in parallel, in its order.
/// Files are named as the directory shows them (`DIR/NAME.toml`), wherever
/// they were read from.
fn compile_changed(found: &[Found], dir: &Path) -> Vec<Outcome> {
    let changed: Vec<(String, &[u8])> = found
        .iter()
        .filter_map(|f| match f {
            Found::Changed(name, _, bytes, _) => Some((shown(dir, name), bytes.as_slice())),
            _ => None,
        })
        .collect();
    policy_file::in_parallel(&changed, |(shown, bytes)| policy_file::compile(shown, bytes))
}

/// Puts a surveyed batch in force: one swap for every valid change and
/// removal, the last good policy kept (and why) for every other file.
async fn apply<P: Prepare>(
    state: &mut DirState,
    survey: Survey,
    compiled: Vec<Outcome>,
    store: &PolicyStore<P>,
    since: Instant,
) {
    for name in survey.misnamed {
        if state.warned.insert(name.clone()) {
            warn!("{}", policy_file::misnamed_message(&state.dir, &name));
        }
    }
    let (survey_ms, compile_ms) = (survey.survey_ms, survey.compile_ms);
    let mut compiled = compiled.into_iter();
    let mut changes: Vec<(String, Option<Policy>)> = Vec::new();
    let (mut applied, mut rejected, mut added, mut removed) = (0usize, 0usize, 0usize, 0usize);
    for found in survey.found {
        match found {
            Found::Same(name, print) => {
                store.clear_reload_error(&name);
                state.seen.insert(name, Some(print));
            }
            Found::Changed(name, _, _, print) => {
                let shown = shown(&state.dir, &name);
                state.seen.insert(name.clone(), Some(print));
                match compiled.next() {
                    Some(Outcome::Valid(done)) => {
                        for warning in &done.warnings {
                            warn!(policy = %shown, "{}", warning.display(&shown));
                        }
                        if store.tenant(&name).is_none() {
                            added += 1;
                        }
                        applied += 1;
                        store.count_reload(ReloadResult::Ok);
                        changes.push((name, Some(done.policy)));
                    }
                    Some(rejected_outcome) => {
                        rejected += 1;
                        let text = rejected_outcome.report(&shown).to_string();
                        warn!(
                            policy = %shown,
                            tenant = %name,
                            "policy reload rejected; the last good policy stays in force:\n{text}"
                        );
                        store.set_reload_error(&name, text);
                        store.count_reload(match rejected_outcome {
                            Outcome::Unreadable(_) => ReloadResult::Unreadable,
                            _ => ReloadResult::Invalid,
                        });
                    }
                    None => {}
                }
            }
            Found::Unreadable(name, why, print) => {
                rejected += 1;
                let text = format!(
                    "{}: {}",
                    shown(&state.dir, &name),
                    policy_file::unreadable_message(&io::Error::other(why))
                );
                let known = store.reload_error(&name).is_some_and(|e| *e == text);
                if !known {
                    warn!(tenant = %name, "policy reload rejected; the last good policy stays in force: {text}");
                }
                store.set_reload_error(&name, text);
                store.count_reload(ReloadResult::Unreadable);
                state.seen.insert(name, Some(print));
            }
            Found::Gone(name) => {
                state.seen.remove(&name);
                if store.tenant(&name).is_some() {
                    removed += 1;
                    store.count_reload(ReloadResult::Removed);
                    changes.push((name, None));
                } else {
                    store.clear_reload_error(&name);
                }
            }
        }
    }
    if applied == 0 && rejected == 0 && removed == 0 {
        return;
    }
    let swapped = !changes.is_empty();
    store.swap_batch(changes);
    let took = since.elapsed();
    let result = match (applied + removed, rejected) {
        (_, 0) => BatchResult::Ok,
        (0, _) => BatchResult::Failed,
        _ => BatchResult::Partial,
    };
    store.reload_stats().count_batch(result, took);
    info!(
        dir = %state.dir.display(),
        changed = applied - added,
        added,
        removed,
        rejected,
        tenants = store.tenants().len(),
        survey_ms,
        compile_ms,
        took_ms = took.as_secs_f64() * 1000.0,
        result = result.as_str(),
        "policy directory batch {}",
        if swapped { "swapped in" } else { "rejected" }
    );
    if swapped || rejected > 0 {
        let _ = tokio::task::spawn_blocking(release_freed_memory).await;
    }
}
