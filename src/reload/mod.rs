//! Hot reload (DESIGN.md sections 6, 8 and 14): what [`crate::watch`] says
//! changed is read, compiled off the request path and swapped in, keeping
//! the last good policy wherever the file on disk is not one.
//!
//! - A policy file: read until stable, compiled, swapped.
//! - A policy directory: each settled change is one batch. Only the files
//!   that may have changed are read (a rescan compares every file's
//!   metadata first), a file whose content is the policy in force costs
//!   that one read, the changed ones are compiled in parallel, and the whole
//!   batch goes in with one swap of the tenant set. When the directory's
//!   revision (where its path leads, its `..data` link) moved while the
//!   batch was read, the batch is read again, so a ConfigMap or git-sync
//!   update is in force entirely or not at all.
//!
//! Each reloader runs under a supervisor: a reloader that ends or panics is
//! logged, counted and started again, and its first act is a rescan.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{debug, error, info, warn};

use crate::core::Policy;
use crate::memory::release_freed_memory;
use crate::policy_file::{self, Outcome};
use crate::store::{PolicyStore, Prepare, ReloadResult};
use crate::watch::{self, Change, Fingerprint, Watch};

mod batch;
pub mod etcd;
use batch::{DirState, batch};

/// Pause before a reloader that ended is started again; doubled up to
/// [`RESTART_MAX`] while it keeps ending at once.
const RESTART_FIRST: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);
/// Times a batch is read again because the directory's revision moved
/// while it was read.
const MAX_REVISION_RETRIES: usize = 5;

/// A handle on a running reloader.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    now: Arc<Notify>,
    running: Arc<Mutex<Option<AbortHandle>>>,
}

impl ReloadHandle {
    /// Asks for a reload at once, reading every file (what SIGHUP does).
    pub fn reload_now(&self) {
        self.now.notify_one();
    }

    /// Ends the running reloader as a crash would; the supervisor logs it,
    /// counts it and starts a new one. For tests of that recovery.
    #[doc(hidden)]
    pub fn kill_reloader(&self) {
        if let Some(running) = self.running.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            running.abort();
        }
    }
}

/// Runs the reloader `start` makes, again whenever it ends.
fn supervise<P: Prepare, F, Fut>(
    what: String,
    store: Arc<PolicyStore<P>>,
    mut start: F,
) -> (ReloadHandle, JoinHandle<()>)
where
    F: FnMut(Arc<Notify>, bool) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = ReloadHandle {
        now: Arc::new(Notify::new()),
        running: Arc::default(),
    };
    let (now, running) = (Arc::clone(&handle.now), Arc::clone(&handle.running));
    let task = tokio::spawn(async move {
        let mut pause = RESTART_FIRST;
        let mut restarted = false;
        loop {
            let started = Instant::now();
            let task = tokio::spawn(start(Arc::clone(&now), restarted));
            *running.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
            match task.await {
                Ok(()) => warn!(watch = %what, "the reloader ended; starting it again"),
                Err(e) if e.is_panic() => error!(watch = %what, "the reloader panicked; starting it again"),
                Err(_) => warn!(watch = %what, "the reloader was stopped; starting it again"),
            }
            store.reload_stats().count_restart();
            restarted = true;
            if started.elapsed() > RESTART_MAX {
                pause = RESTART_FIRST;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RESTART_MAX);
        }
    });
    (handle, task)
}

/// Starts following the policy file `path`, swapping each valid new version
/// into `store`. Must be called within a tokio runtime.
pub fn spawn<P: Prepare>(path: PathBuf, store: Arc<PolicyStore<P>>) -> io::Result<(ReloadHandle, JoinHandle<()>)> {
    // Fails here, not in the supervisor, when the file cannot be watched.
    drop(Watch::files(vec![path.clone()], Arc::new(Notify::new()))?);
    let what = path.display().to_string();
    Ok(supervise(what, Arc::clone(&store), move |now, restarted| {
        let (path, store) = (path.clone(), Arc::clone(&store));
        async move {
            let mut watch = match Watch::files(vec![path.clone()], now) {
                Ok(watch) => watch,
                Err(e) => {
                    warn!(policy = %path.display(), "cannot watch the policy file: {e}");
                    return;
                }
            };
            if restarted {
                reload(&path, "", &store).await;
            }
            loop {
                let change = watch.next().await;
                debug!(policy = %path.display(), rescan = change.rescan, "policy file changed");
                reload(&path, "", &store).await;
            }
        }
    }))
}

/// Reads, compiles and swaps in the file at `path` as tenant `tenant`'s
/// policy (`""` in single mode), or records why not. A tenant with no policy
/// in force yet is added by a valid file.
pub async fn reload<P: Prepare>(path: &Path, tenant: &str, store: &PolicyStore<P>) {
    let started = Instant::now();
    let shown = path.display().to_string();
    let in_force = store.tenant(tenant);
    let version = in_force.as_ref().map_or("", |s| s.policy.version()).to_owned();
    let read = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || watch::read_stable(&path)).await
    };
    let bytes = match read {
        Ok(Ok((bytes, _))) => bytes,
        Ok(Err(e)) => {
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
        Err(_) => return,
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
        }
    }
}

/// Starts following the policy directory `dir`: each settled change is one
/// batch, swapped in at once. `known` holds the tenant files loaded at
/// start-up; each is read once by a first rescan. Must be called within a
/// tokio runtime.
pub fn spawn_dir<P: Prepare>(
    dir: PathBuf,
    known: Vec<(String, PathBuf)>,
    store: Arc<PolicyStore<P>>,
) -> io::Result<(ReloadHandle, JoinHandle<()>)> {
    let seen = known.into_iter().map(|(name, _)| (name, None)).collect();
    spawn_dir_seen(dir, seen, store)
}

/// [`spawn_dir`] with the fingerprint of each file as start-up read it, so
/// only files changed since are read again.
pub fn spawn_dir_from<P: Prepare>(
    dir: PathBuf,
    known: Vec<(String, Fingerprint)>,
    store: Arc<PolicyStore<P>>,
) -> io::Result<(ReloadHandle, JoinHandle<()>)> {
    let seen = known.into_iter().map(|(name, print)| (name, Some(print))).collect();
    spawn_dir_seen(dir, seen, store)
}

fn spawn_dir_seen<P: Prepare>(
    dir: PathBuf,
    seen: HashMap<String, Option<Fingerprint>>,
    store: Arc<PolicyStore<P>>,
) -> io::Result<(ReloadHandle, JoinHandle<()>)> {
    drop(Watch::dir(dir.clone(), Arc::new(Notify::new()))?);
    // Start-up already warned of these.
    let warned: HashSet<String> = policy_file::tenant_files(&dir)
        .map(|files| files.misnamed.into_iter().collect())
        .unwrap_or_default();
    let what = dir.display().to_string();
    Ok(supervise(what, Arc::clone(&store), move |now, _restarted| {
        let mut state = DirState {
            dir: dir.clone(),
            seen: seen.clone(),
            warned: warned.clone(),
        };
        let store = Arc::clone(&store);
        async move {
            let mut watch = match Watch::dir(state.dir.clone(), now) {
                Ok(watch) => watch,
                Err(e) => {
                    warn!(dir = %state.dir.display(), "cannot watch the policy directory: {e}");
                    return;
                }
            };
            // Anything that changed between start-up's reading (or the
            // last reloader's) and this watch: a rescan by metadata reads
            // only those files.
            {
                let change = Change {
                    rescan: true,
                    routine: true,
                    since: Some(tokio::time::Instant::now()),
                    ..Change::default()
                };
                state = batch(state, change, &store).await;
            }
            loop {
                let change = watch.next().await;
                state = batch(state, change, &store).await;
            }
        }
    }))
}
