//! The policies in force, shared by every call: an [`ArcSwap`] of an
//! immutable [`TenantSet`] of snapshots. A call loads one set and decides
//! with it alone, so it sees the old policies or the new ones, never a mix,
//! and never waits for a reload. Reloaders are the only writers; a change to
//! one tenant swaps in a new set that shares every other tenant's snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};

use crate::core::{Change, Policy, Reason, TenantSet};

mod usage;
pub use usage::{Hits, Usage};

/// What a shell derives from one snapshot alone, built when the snapshot
/// is swapped in and gone with it (the gRPC API keeps the parts of its
/// answers that are the same for every request, `grpc::cors_policy`).
pub trait Prepare: Send + Sync + Sized + 'static {
    /// The payload for `policy`, in force for `tenant`.
    fn prepare(tenant: &str, policy: &Policy) -> Self;
}

/// No payload.
impl Prepare for () {
    fn prepare(_: &str, _: &Policy) -> Self {}
}

/// A compiled policy, whose tenant it is, and when it came into force.
#[derive(Debug)]
pub struct Snapshot<P = ()> {
    /// The tenant's name; `""` in single mode.
    pub tenant: Arc<str>,
    /// The policy.
    pub policy: Policy,
    /// When it was swapped in, in milliseconds since the Unix epoch.
    pub loaded_at_unix_ms: i64,
    /// The tenant's decision counts (`--metrics-per-tenant`), carried from
    /// each version of its policy to the next.
    pub counts: Arc<DecisionCounts>,
    /// The shell's payload, built at swap time ([`Prepare`]).
    pub prepared: P,
    /// How many decisions each entry allowed, carried from the tenant's
    /// snapshot before for entries still present.
    pub usage: Arc<Usage>,
}

/// Decisions counted by API (`corsd`, `ext_authz`) and by reason (in
/// `Reason::ALL` order): plain atomics, bumped on the decision path.
#[derive(Debug, Default)]
pub struct DecisionCounts {
    counts: [[AtomicU64; Reason::ALL.len()]; 2],
    /// Shadow decisions by API and [`Change`] (in `Change::ALL` order).
    shadow: [[AtomicU64; Change::ALL.len()]; 2],
}

impl DecisionCounts {
    /// Counts one decision.
    pub fn count(&self, api: usize, reason: usize) {
        if let Some(count) = self.counts.get(api).and_then(|by_reason| by_reason.get(reason)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one shadow decision.
    pub fn count_shadow(&self, api: usize, change: Change) {
        if let Some(count) = self
            .shadow
            .get(api)
            .and_then(|by_change| by_change.get(change as usize))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many shadow decisions were counted so.
    pub fn shadow(&self, api: usize, change: Change) -> u64 {
        self.shadow
            .get(api)
            .and_then(|by_change| by_change.get(change as usize))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// How many decisions were counted so.
    pub fn get(&self, api: usize, reason: usize) -> u64 {
        self.counts
            .get(api)
            .and_then(|by_reason| by_reason.get(reason))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl<P> AsRef<Policy> for Snapshot<P> {
    fn as_ref(&self) -> &Policy {
        &self.policy
    }
}

/// How a reload ended, as `corsd_policy_reloads_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// A new policy was swapped in.
    Ok,
    /// The file was read but is not a valid policy.
    Invalid,
    /// The file could not be read.
    Unreadable,
    /// The file is gone and its tenant was removed.
    Removed,
}

impl ReloadResult {
    /// Every result, in label order.
    pub const ALL: [ReloadResult; 4] = [
        ReloadResult::Ok,
        ReloadResult::Invalid,
        ReloadResult::Unreadable,
        ReloadResult::Removed,
    ];

    /// The metric's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Invalid => "invalid",
            ReloadResult::Unreadable => "unreadable",
            ReloadResult::Removed => "removed",
        }
    }
}

/// How a directory's batch ended, as `corsd_policy_reload_batches_total`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchResult {
    /// Every changed file was applied.
    Ok,
    /// Some files were applied, others kept their last good policy.
    Partial,
    /// Nothing could be applied: every changed file was rejected, or the
    /// directory could not be listed.
    Failed,
}

impl BatchResult {
    /// Every result, in label order.
    pub const ALL: [BatchResult; 3] = [BatchResult::Ok, BatchResult::Partial, BatchResult::Failed];

    /// The metric's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchResult::Ok => "ok",
            BatchResult::Partial => "partial",
            BatchResult::Failed => "failed",
        }
    }
}

/// Upper bounds of `corsd_policy_reload_batch_seconds`' buckets.
pub const BATCH_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Counts of the reloaders, bumped by them and read at scrape.
#[derive(Debug, Default)]
pub struct ReloadStats {
    batches: [AtomicU64; 3],
    rescans: AtomicU64,
    restarts: AtomicU64,
    /// Batches by bucket of [`BATCH_BUCKETS`] (the last: above them all).
    batch_buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
    batch_micros: AtomicU64,
    /// Whether the shared store (etcd) is answering: set by its follower;
    /// policy files are always "up".
    source_down: std::sync::atomic::AtomicBool,
}

impl ReloadStats {
    /// Counts one batch and how long it took, from its first event to its swap.
    pub fn count_batch(&self, result: BatchResult, took: std::time::Duration) {
        if let Some(counter) = self.batches.get(result as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = took.as_secs_f64();
        let bucket = BATCH_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(BATCH_BUCKETS.len());
        if let Some(counter) = self.batch_buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.batch_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts a full rescan of a followed directory.
    pub fn count_rescan(&self) {
        self.rescans.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reloader that ended and was started again.
    pub fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Batches that ended so.
    pub fn batches(&self, result: BatchResult) -> u64 {
        self.batches
            .get(result as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Records whether the shared store answers.
    pub fn set_source_up(&self, up: bool) {
        self.source_down.store(!up, Ordering::Relaxed);
    }

    /// Whether the shared store answers (always, for policy files).
    pub fn source_up(&self) -> bool {
        !self.source_down.load(Ordering::Relaxed)
    }

    /// Full rescans so far.
    pub fn rescans(&self) -> u64 {
        self.rescans.load(Ordering::Relaxed)
    }

    /// Reloader restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Batches per bucket of [`BATCH_BUCKETS`] (not cumulative; the last is
    /// above every bound), and their summed time in seconds.
    pub fn batch_times(&self) -> (Vec<u64>, f64) {
        let counts = self.batch_buckets.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (counts, self.batch_micros.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// The tenants in force and the state of their last reloads.
#[derive(Debug)]
pub struct PolicyStore<P = ()> {
    tenants: ArcSwap<TenantSet<Snapshot<P>>>,
    /// Serialises writers, so no swap is lost between a load and a store.
    writer: Mutex<()>,
    /// Why a tenant's file on disk is not its policy in force. Read by admin
    /// calls and written by reloaders, never on the decision path.
    reload_errors: Mutex<HashMap<String, Arc<String>>>,
    single: bool,
    /// Reloads by [`ReloadResult`], in its `ALL` order.
    reloads: [AtomicU64; 4],
    /// When a policy was last swapped in (start-up counts).
    last_swap_unix_ms: AtomicI64,
    /// Each tenant's decision counts, kept when its file goes, so a tenant
    /// removed and added again counts on from where it was.
    counts: Mutex<HashMap<String, Arc<DecisionCounts>>>,
    /// The set's revision: how many swaps it has seen. Followers (any
    /// shell that pushes each new set on) wait for it to change.
    revision: tokio::sync::watch::Sender<u64>,
    reload_stats: ReloadStats,
}

impl<P: Prepare> PolicyStore<P> {
    /// Single mode (`--policy FILE`): one tenant, named `""`, in force.
    pub fn new(policy: Policy) -> Arc<Self> {
        let snapshot = Arc::new(snapshot("", policy));
        Arc::new(PolicyStore::from_set(TenantSet::single(snapshot), true))
    }

    /// Directory mode (`--policy-dir DIR`): these tenants in force.
    pub fn with_tenants(tenants: impl IntoIterator<Item = (String, Policy)>) -> Arc<Self> {
        let set = TenantSet::from_tenants(tenants.into_iter().map(|(name, policy)| {
            let snapshot = Arc::new(snapshot(&name, policy));
            (Arc::clone(&snapshot.tenant), snapshot)
        }));
        Arc::new(PolicyStore::from_set(set, false))
    }

    fn from_set(set: TenantSet<Snapshot<P>>, single: bool) -> Self {
        let counts = set
            .sorted()
            .into_iter()
            .map(|(name, snapshot)| (name.to_owned(), Arc::clone(&snapshot.counts)))
            .collect();
        PolicyStore {
            tenants: ArcSwap::from_pointee(set),
            writer: Mutex::new(()),
            reload_errors: Mutex::new(HashMap::new()),
            single,
            reloads: Default::default(),
            last_swap_unix_ms: AtomicI64::new(now_unix_ms()),
            counts: Mutex::new(counts),
            revision: tokio::sync::watch::Sender::new(0),
            reload_stats: ReloadStats::default(),
        }
    }

    /// Follows the set's revision: it changes with every swap from now on.
    pub fn follow(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// A single-mode store holding the policy `text`, for tests.
    pub fn for_test(text: &str) -> Result<Arc<Self>, crate::core::PolicyError> {
        Ok(Self::new(Policy::compile("test.toml", text.as_bytes())?.policy))
    }

    /// Whether this is single mode (one tenant `""`).
    pub fn is_single(&self) -> bool {
        self.single
    }

    /// The tenants in force; cheap, lock-free, never waits.
    pub fn tenants(&self) -> Guard<Arc<TenantSet<Snapshot<P>>>> {
        self.tenants.load()
    }

    /// The tenants in force, as an owned handle (for long-lived use).
    pub fn tenants_full(&self) -> Arc<TenantSet<Snapshot<P>>> {
        self.tenants.load_full()
    }

    /// One tenant's snapshot in force.
    pub fn tenant(&self, name: &str) -> Option<Arc<Snapshot<P>>> {
        self.tenants.load().get(name).cloned()
    }

    /// Single mode's snapshot in force (tenant `""`); `None` in a directory
    /// without a tenant of that name, which cannot exist.
    pub fn load_full(&self) -> Option<Arc<Snapshot<P>>> {
        self.tenant("")
    }

    /// Puts `policy` in force for `name` (`None`: removes the tenant) and
    /// clears its reload error. The other tenants keep their snapshots.
    pub fn swap_tenant(&self, name: &str, policy: Option<Policy>) {
        self.swap_batch(vec![(name.to_owned(), policy)]);
    }

    /// Counts one reload's result.
    pub fn count_reload(&self, result: ReloadResult) {
        if let Some(counter) = self.reloads.get(result as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many reloads ended so.
    pub fn reload_count(&self, result: ReloadResult) -> u64 {
        self.reloads
            .get(result as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// When a policy was last swapped in, in milliseconds since the Unix epoch.
    pub fn last_swap_unix_ms(&self) -> i64 {
        self.last_swap_unix_ms.load(Ordering::Relaxed)
    }

    /// The counts kept for `name`, or `fresh` as its counts from now on.
    fn counts_of(&self, name: &str, fresh: &Arc<DecisionCounts>) -> Arc<DecisionCounts> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(counts.entry(name.to_owned()).or_insert_with(|| Arc::clone(fresh)))
    }

    /// Puts every change of a batch in force with one swap: each `Some`
    /// policy replaces or adds its tenant, each `None` removes it, and each
    /// changed tenant's reload error is cleared. A call sees the set before
    /// the batch or after it, never a part of it.
    pub fn swap_batch(&self, changes: Vec<(String, Option<Policy>)>) {
        if changes.is_empty() {
            return;
        }
        // Payloads are prepared before the writer's lock is taken.
        let prepared: Vec<(String, Option<Snapshot<P>>)> = changes
            .into_iter()
            .map(|(name, policy)| {
                let snapshot = policy.map(|p| snapshot(&name, p));
                (name, snapshot)
            })
            .collect();
        let _writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        // Usage carries on from the snapshot in force, read under the lock.
        let in_force = self.tenants.load();
        let changes: Vec<TenantChange<P>> = prepared
            .into_iter()
            .map(|(name, snapshot)| {
                let snapshot = snapshot.map(|mut snapshot| {
                    snapshot.counts = self.counts_of(&name, &snapshot.counts);
                    if let Some(previous) = in_force.get(&name) {
                        snapshot.usage = Arc::new(Usage::new(
                            &snapshot.policy,
                            Some(&previous.usage),
                            Some(&previous.policy),
                        ));
                    }
                    Arc::new(snapshot)
                });
                (Arc::from(name), snapshot)
            })
            .collect();
        drop(in_force);
        let names: Vec<Arc<str>> = changes.iter().map(|(name, _)| Arc::clone(name)).collect();
        let next = self.tenants.load().with_all(changes);
        self.tenants.store(Arc::new(next));
        self.last_swap_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        let mut errors = self.errors();
        for name in &names {
            errors.remove(&**name);
        }
        drop(errors);
        self.revision.send_modify(|count| *count += 1);
    }

    /// The reloaders' own counts: batches, rescans, restarts.
    pub fn reload_stats(&self) -> &ReloadStats {
        &self.reload_stats
    }

    /// Single mode: puts `policy` in force.
    pub fn swap(&self, policy: Policy) {
        self.swap_tenant("", Some(policy));
    }

    /// Records why `name`'s file on disk is not its policy in force.
    pub fn set_reload_error(&self, name: &str, error: String) {
        self.errors().insert(name.to_owned(), Arc::new(error));
    }

    /// Clears `name`'s reload error: its file on disk is the policy in force.
    pub fn clear_reload_error(&self, name: &str) {
        self.errors().remove(name);
    }

    /// Why `name`'s file on disk is not its policy in force; `None` when it is.
    pub fn reload_error(&self, name: &str) -> Option<Arc<String>> {
        self.errors().get(name).cloned()
    }

    /// How many tenants have a reload error.
    pub fn stale_count(&self) -> usize {
        self.errors().len()
    }

    fn errors(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<String>>> {
        self.reload_errors.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A tenant's new snapshot in a batch; `None`: the tenant is removed.
type TenantChange<P> = (Arc<str>, Option<Arc<Snapshot<P>>>);

fn snapshot<P: Prepare>(name: &str, policy: Policy) -> Snapshot<P> {
    Snapshot {
        tenant: Arc::from(name),
        prepared: P::prepare(name, &policy),
        usage: Arc::new(Usage::new(&policy, None, None)),
        policy,
        loaded_at_unix_ms: now_unix_ms(),
        counts: Arc::default(),
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
