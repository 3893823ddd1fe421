//! Hot reload: watch the policy file's directory, read, compile and swap,
//! keeping the last good policy whenever the file on disk is not one.
//!
//! The directory is watched (not the file) so rename-over saves, editors'
//! temp-file dance and Kubernetes ConfigMap `..data` symlink swaps are seen.
//! Bursts of events are debounced; the file is read until two reads agree, so
//! a write caught half-way is not compiled; compiling runs off the async
//! workers. A slow poll of the file's metadata backs the watcher up.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::core::Policy;
use crate::memory::release_freed_memory;
use crate::policy_file::{self, Outcome};
use crate::store::{PolicyStore, ReloadResult};

/// Quiet time after the last event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(60);
/// Longest a burst of events may put a reload off.
const DEBOUNCE_MAX: Duration = Duration::from_millis(300);
/// Pause between the two reads that must agree.
const SETTLE: Duration = Duration::from_millis(25);
/// Reads tried before a file that keeps changing is given up on, for now.
const MAX_READS: usize = 20;
/// How often the file's metadata is compared, in case an event was missed.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Something changed in the directory.
    Changed,
    /// Reload at once (SIGHUP).
    Now,
}

/// A handle on a running reloader.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    triggers: mpsc::Sender<Trigger>,
}

impl ReloadHandle {
    /// Asks for a reload at once, without debouncing (what SIGHUP does).
    pub fn reload_now(&self) {
        let _ = self.triggers.try_send(Trigger::Now);
    }
}

/// Starts watching `path`, swapping each valid new version into `store`.
/// Must be called within a tokio runtime.
pub fn spawn(path: PathBuf, store: Arc<PolicyStore>) -> Result<(ReloadHandle, JoinHandle<()>), notify::Error> {
    let (triggers, events) = mpsc::channel(256);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    let sender = triggers.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => {
                !matches!(event.kind, EventKind::Access(_))
                    && (event.paths.is_empty()
                        || event.paths.iter().any(|p| {
                            p.file_name()
                                .is_some_and(|n| n == file_name || n.to_string_lossy().starts_with(".."))
                        }))
            }
            Err(_) => true,
        };
        if relevant {
            let _ = sender.try_send(Trigger::Changed);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(run(path, store, events, watcher));
    Ok((ReloadHandle { triggers }, task))
}

async fn run(
    path: PathBuf,
    store: Arc<PolicyStore>,
    mut events: mpsc::Receiver<Trigger>,
    _watcher: notify::RecommendedWatcher,
) {
    let mut seen = fingerprint(&path);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            trigger = events.recv() => match trigger {
                None => return,
                Some(Trigger::Now) => {}
                Some(Trigger::Changed) => debounce(&mut events).await,
            },
            _ = poll.tick() => {
                if fingerprint(&path) == seen {
                    continue;
                }
                debug!(policy = %path.display(), "policy file metadata changed");
            }
        }
        seen = fingerprint(&path);
        reload(&path, "", &store).await;
    }
}

/// Waits until events stop for [`DEBOUNCE`], or [`DEBOUNCE_MAX`] at most.
async fn debounce(events: &mut mpsc::Receiver<Trigger>) {
    let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = tokio::time::sleep(DEBOUNCE);
        tokio::select! {
            _ = quiet => return,
            _ = tokio::time::sleep_until(deadline) => return,
            trigger = events.recv() => match trigger {
                None | Some(Trigger::Now) => return,
                Some(Trigger::Changed) => {}
            },
        }
    }
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Option<(u64, Option<SystemTime>, u64)>);

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    Fingerprint(
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok(), m.ino())),
    )
}

/// Reads the file until two reads agree, or until a read comes from a file
/// renamed into place since the read before it: a rename-over (editors,
/// `corsd entries`, Kubernetes) only ever shows a whole file, so while
/// writers keep renaming new versions in, each is taken as it comes. Only a
/// file changing in place must settle.
async fn read_stable(path: &Path) -> std::io::Result<Vec<u8>> {
    let (mut previous, mut inode) = read_with_inode(path).await?;
    for _ in 0..MAX_READS {
        tokio::time::sleep(SETTLE).await;
        let (bytes, now) = read_with_inode(path).await?;
        if bytes == previous || now != inode {
            return Ok(bytes);
        }
        (previous, inode) = (bytes, now);
    }
    Err(std::io::Error::other("the file kept changing while it was read"))
}

/// The file's bytes and the inode they were read from.
async fn read_with_inode(path: &Path) -> std::io::Result<(Vec<u8>, u64)> {
    use std::os::unix::fs::MetadataExt;
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let inode = file.metadata().await?.ino();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await?;
    Ok((bytes, inode))
}

/// Reads, compiles and swaps in the file at `path` as tenant `tenant`'s
/// policy (`""` in single mode), or records why not. A tenant with no policy
/// in force yet is added by a valid file.
pub async fn reload(path: &Path, tenant: &str, store: &PolicyStore) {
    let started = Instant::now();
    let shown = path.display().to_string();
    let in_force = store.tenant(tenant);
    let version = in_force.as_ref().map_or("", |s| s.policy.version()).to_owned();
    let bytes = match read_stable(path).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let error = Outcome::Unreadable(e).report(&shown).to_string();
            warn!(
                policy = %shown,
                tenant,
                version,
                error = %error,
                "policy reload rejected; the last good policy stays in force"
            );
            store.set_reload_error(tenant, error);
            store.count_reload(ReloadResult::Unreadable);
            return;
        }
    };
    if in_force.is_some() && Policy::version_of(&bytes) == version {
        debug!(policy = %shown, tenant, version, "policy file unchanged");
        store.clear_reload_error(tenant);
        return;
    }
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    let source = shown.clone();
    let compiled = tokio::task::spawn_blocking(move || {
        let compiling = Instant::now();
        let outcome = policy_file::compile(&source, &bytes);
        (outcome, compiling.elapsed().as_secs_f64() * 1000.0)
    })
    .await;
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    let Ok((outcome, compile_ms)) = compiled else {
        let error = format!("{shown}: compiling the policy failed");
        warn!(policy = %shown, tenant, error = %error, "policy reload rejected");
        store.set_reload_error(tenant, error);
        store.count_reload(ReloadResult::Invalid);
        return;
    };
    match outcome {
        Outcome::Valid(compiled) => {
            for warning in &compiled.warnings {
                warn!(policy = %shown, "{}", warning.display(&shown));
            }
            let policy = compiled.policy;
            let previous = version;
            let (version, entries) = (policy.version().to_owned(), policy.entries().len());
            store.swap_tenant(tenant, Some(policy));
            store.count_reload(ReloadResult::Ok);
            drop(in_force);
            let _ = tokio::task::spawn_blocking(release_freed_memory).await;
            info!(
                policy = %shown,
                tenant,
                version,
                previous,
                entries,
                read_ms,
                compile_ms,
                took_ms,
                "policy swapped in"
            );
        }
        rejected => {
            let errors = match &rejected {
                Outcome::Invalid(error) => error.error_count(),
                _ => 1,
            };
            let text = rejected.report(&shown).to_string();
            warn!(
                policy = %shown,
                tenant,
                version,
                errors,
                took_ms,
                "policy reload rejected; the last good policy stays in force:\n{text}"
            );
            store.set_reload_error(tenant, text);
            store.count_reload(match &rejected {
                Outcome::Unreadable(_) => ReloadResult::Unreadable,
                _ => ReloadResult::Invalid,
            });
            drop(rejected);
            let _ = tokio::task::spawn_blocking(release_freed_memory).await;
        }
    }
}

/// How often a policy directory's files are compared, in case an event was missed.
const DIR_POLL: Duration = Duration::from_secs(1);

/// Starts watching the policy directory `dir` (directory mode): a changed
/// tenant file is compiled alone and swapped in, a new one adds its tenant,
/// and one removed (and still gone after the debounce) removes its tenant.
/// `known` holds the tenant files loaded at start-up. Must be called within
/// a tokio runtime.
pub fn spawn_dir(
    dir: PathBuf,
    known: Vec<(String, PathBuf)>,
    store: Arc<PolicyStore>,
) -> Result<(ReloadHandle, JoinHandle<()>), notify::Error> {
    let (triggers, events) = mpsc::channel(256);
    let sender = triggers.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if !matches!(&event, Ok(event) if matches!(event.kind, EventKind::Access(_))) {
            let _ = sender.try_send(Trigger::Changed);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    // Not fingerprinted here: a file edited between start-up's load and now
    // would look unchanged. The first scan reads every file instead.
    let seen = known.into_iter().map(|(name, _)| (name, None)).collect();
    // Start-up already warned of these.
    let warned = crate::policy_file::tenant_files(&dir)
        .map(|files| files.misnamed.into_iter().collect())
        .unwrap_or_default();
    let task = tokio::spawn(run_dir(dir, store, seen, warned, events, watcher));
    Ok((ReloadHandle { triggers }, task))
}

async fn run_dir(
    dir: PathBuf,
    store: Arc<PolicyStore>,
    mut seen: HashMap<String, Option<Fingerprint>>,
    mut warned: HashSet<String>,
    mut events: mpsc::Receiver<Trigger>,
    _watcher: notify::RecommendedWatcher,
) {
    let mut poll = tokio::time::interval(DIR_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // After an event or SIGHUP every file is read; a poll compares metadata.
        let by_content = tokio::select! {
            trigger = events.recv() => match trigger {
                None => return,
                Some(Trigger::Now) => true,
                Some(Trigger::Changed) => {
                    debounce(&mut events).await;
                    true
                }
            },
            _ = poll.tick() => false,
        };
        scan(&dir, &store, &mut seen, &mut warned, by_content).await;
    }
}

/// A tenant file as the directory holds it now.
struct Listed {
    name: String,
    path: PathBuf,
    print: Fingerprint,
    /// The version of its content, when it was read.
    version: Option<String>,
}

/// Lists the directory and fingerprints each tenant file, reading (and
/// hashing) those whose metadata changed, or all of them with `by_content`.
/// Blocking: run off the async workers.
fn list(
    dir: &Path,
    seen: &HashMap<String, Option<Fingerprint>>,
    by_content: bool,
) -> std::io::Result<(Vec<Listed>, Vec<String>)> {
    let files = crate::policy_file::tenant_files(dir)?;
    let listed = files
        .tenants
        .into_iter()
        .map(|(name, path)| {
            let print = fingerprint(&path);
            let changed = by_content || seen.get(&name).and_then(Option::as_ref) != Some(&print);
            let version = changed
                .then(|| std::fs::read(&path).ok().map(|bytes| Policy::version_of(&bytes)))
                .flatten();
            Listed {
                name,
                path,
                print,
                version,
            }
        })
        .collect();
    Ok((listed, files.misnamed))
}

/// Compares the directory with what is in force and applies each
/// difference. A file whose content is the policy in force costs one read;
/// only one that differs is read until stable, compiled and swapped in.
async fn scan(
    dir: &Path,
    store: &PolicyStore,
    seen: &mut HashMap<String, Option<Fingerprint>>,
    warned: &mut HashSet<String>,
    by_content: bool,
) {
    let listing = {
        let (dir, snapshot) = (dir.to_path_buf(), seen.clone());
        tokio::task::spawn_blocking(move || list(&dir, &snapshot, by_content)).await
    };
    let (listed, misnamed) = match listing {
        Ok(Ok(listing)) => listing,
        Ok(Err(e)) => {
            warn!(dir = %dir.display(), "cannot list the policy directory: {e}; every tenant stays in force");
            return;
        }
        Err(_) => return,
    };
    for name in misnamed {
        if !warned.contains(&name) {
            warn!("{}", crate::policy_file::misnamed_message(dir, &name));
            warned.insert(name);
        }
    }
    let present: HashSet<String> = listed.iter().map(|l| l.name.clone()).collect();
    for Listed {
        name,
        path,
        print,
        version,
    } in listed
    {
        let unchanged = seen.get(&name).and_then(Option::as_ref) == Some(&print);
        if !by_content && unchanged {
            continue;
        }
        seen.insert(name.clone(), Some(print));
        let in_force = store.tenant(&name).map(|s| s.policy.version().to_owned());
        if version.is_some() && version == in_force {
            store.clear_reload_error(&name);
            continue;
        }
        reload(&path, &name, store).await;
    }
    let gone: Vec<String> = seen.keys().filter(|n| !present.contains(*n)).cloned().collect();
    if gone.is_empty() {
        return;
    }
    // Removed, or caught between a rename's two halves: removed only if the
    // file is still gone after the debounce.
    tokio::time::sleep(DEBOUNCE).await;
    for name in gone {
        let path = dir.join(format!("{name}.toml"));
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        seen.remove(&name);
        if store.tenant(&name).is_some() {
            store.swap_tenant(&name, None);
            store.count_reload(ReloadResult::Removed);
            info!(tenant = %name, policy = %path.display(), "policy file removed; tenant removed");
        } else {
            store.clear_reload_error(&name);
        }
    }
}
