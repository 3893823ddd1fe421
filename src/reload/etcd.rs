//! Policies kept in etcd (`--policy-etcd`, DESIGN.md section 17): each
//! tenant is the key `PREFIX + NAME` holding its policy text. Start-up reads
//! every key at one revision; then the prefix is watched from the next, and
//! each burst of changes (the events of one response, and of those that
//! follow within [`BURST`]) is compiled off the request path and swapped in
//! at once. A key whose text is not a valid policy keeps its tenant's last
//! good policy (at start-up it is not served). A watch refused after
//! compaction is followed by a fresh read of everything; when etcd stops
//! answering, decisions go on with the policies in force, the follower
//! reconnects with backoff, and `corsd_policy_source_up` is 0 meanwhile.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::core::{Policy, is_tenant_name};
use crate::etcd::pb::event::EventType;
use crate::etcd::{Etcd, Stored, Unavailable};
use crate::policy_file::{self, Outcome};
use crate::store::{PolicyStore, Prepare, ReloadResult};

/// How long after a change more changes are taken into the same swap.
const BURST: Duration = Duration::from_millis(30);
/// The longest a burst is gathered before it is swapped in.
const BURST_MAX: Duration = Duration::from_millis(300);
/// Pause before reconnecting, doubled up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a read of etcd found: the revision, each valid tenant's policy, and
/// why each other key is not one.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The store's revision the read was made at.
    pub revision: i64,
    /// Each tenant with a valid policy.
    pub tenants: Vec<(String, Policy)>,
    /// Each key under the prefix that is not a valid policy, and why.
    pub invalid: Vec<(String, String)>,
}

/// Compiles one stored key: its tenant name and policy, or why not.
fn compile(stored: &Stored) -> Result<(String, Policy), (String, String)> {
    let shown = format!("{}.toml", stored.name);
    match policy_file::compile(&shown, &stored.text) {
        Outcome::Valid(compiled) => Ok((stored.name.clone(), compiled.policy)),
        rejected => Err((stored.name.clone(), rejected.report(&shown).to_string())),
    }
}

/// Reads every key under the prefix at one revision and compiles them (on
/// every core); keys whose name is not a tenant name are skipped, with one
/// warning each.
pub async fn load(etcd: &Etcd) -> Result<Loaded, Unavailable> {
    let (revision, stored) = etcd.read_all().await?;
    let stored: Vec<Stored> = stored
        .into_iter()
        .filter(|s| {
            let valid = is_tenant_name(&s.name);
            if !valid {
                warn!(key = %s.name, "an etcd key under the prefix whose name is not a tenant name is ignored");
            }
            valid
        })
        .collect();
    let compiled = tokio::task::spawn_blocking(move || policy_file::in_parallel(&stored, compile))
        .await
        .map_err(|e| Unavailable(format!("compiling the policies failed: {e}")))?;
    let mut loaded = Loaded {
        revision,
        ..Loaded::default()
    };
    for outcome in compiled {
        match outcome {
            Ok(tenant) => loaded.tenants.push(tenant),
            Err(invalid) => loaded.invalid.push(invalid),
        }
    }
    Ok(loaded)
}

/// Follows the prefix from `revision` on into `store`, until the process
/// ends. Must be called within a tokio runtime.
pub fn follow<P: Prepare>(etcd: Etcd, store: Arc<PolicyStore<P>>, revision: i64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut next = revision + 1;
        let mut backoff = BACKOFF_FIRST;
        let mut warned = HashSet::new();
        loop {
            match watch_from(&etcd, &store, &mut next, &mut warned).await {
                Ok(()) => backoff = BACKOFF_FIRST,
                Err(e) => {
                    if store.reload_stats().source_up() {
                        warn!(error = %e, "etcd does not answer; the policies in force stay, reconnecting");
                    }
                    store.reload_stats().set_source_up(false);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    })
}

/// One watch, from `next` on, until it ends: `Ok` when it must simply be
/// started again (from `next`, which it moves on), `Err` when etcd did not
/// answer.
async fn watch_from<P: Prepare>(
    etcd: &Etcd,
    store: &PolicyStore<P>,
    next: &mut i64,
    warned: &mut HashSet<String>,
) -> Result<(), Unavailable> {
    let mut stream = etcd.watch(*next).await?;
    loop {
        let Some(response) = stream.message().await? else {
            return Err(Unavailable("the watch ended".to_owned()));
        };
        if !store.reload_stats().source_up() {
            info!("etcd answers again");
            store.reload_stats().set_source_up(true);
        }
        if response.canceled {
            if response.compact_revision > 0 {
                // Events were compacted away: read everything again.
                info!(
                    compacted = response.compact_revision,
                    "etcd compacted past the watch; reading every tenant again"
                );
                store.reload_stats().count_rescan();
                let loaded = load(etcd).await?;
                *next = loaded.revision + 1;
                resync(store, loaded);
                return Ok(());
            }
            return Err(Unavailable(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason
            )));
        }
        let mut changes: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        absorb(etcd, response, next, &mut changes, warned);
        if changes.is_empty() {
            continue;
        }
        // Take what follows closely into the same swap.
        let started = tokio::time::Instant::now();
        while started.elapsed() < BURST_MAX {
            match tokio::time::timeout(BURST, stream.message()).await {
                Ok(Ok(Some(more))) if !more.canceled => absorb(etcd, more, next, &mut changes, warned),
                // Cancelled: the next watch says why (a compaction: a fresh read).
                Ok(Ok(Some(_))) => {
                    apply(store, changes).await;
                    return Ok(());
                }
                Ok(Ok(None)) => {
                    apply(store, changes).await;
                    return Err(Unavailable("the watch ended".to_owned()));
                }
                Ok(Err(e)) => {
                    apply(store, changes).await;
                    return Err(e.into());
                }
                Err(_) => break,
            }
        }
        apply(store, changes).await;
    }
}

/// Takes `response`'s events into `changes` (the last of a key's wins; a
/// deletion is `None`) and moves `next` past them.
fn absorb(
    etcd: &Etcd,
    response: crate::etcd::pb::WatchResponse,
    next: &mut i64,
    changes: &mut BTreeMap<String, Option<Vec<u8>>>,
    warned: &mut HashSet<String>,
) {
    // A progress notice (no events, not the reply that creates the watch,
    // which carries etcd's current revision, not the watch's) says every
    // change up to its revision was sent; with events, their own count.
    let progress =
        response.events.is_empty() && !response.created && !response.canceled && response.compact_revision == 0;
    if let Some(header) = response.header.as_ref().filter(|_| progress) {
        *next = (*next).max(header.revision + 1);
    }
    for event in response.events {
        let put = event.r#type() == EventType::Put;
        let Some(kv) = event.kv else { continue };
        *next = (*next).max(kv.mod_revision + 1);
        let Some(name) = etcd.name_of(&kv.key) else { continue };
        if !is_tenant_name(&name) {
            if warned.insert(name.clone()) {
                warn!(key = %name, "an etcd key under the prefix whose name is not a tenant name is ignored");
            }
            continue;
        }
        changes.insert(name, put.then_some(kv.value));
    }
}

/// Compiles `changes` (`None`: the key was deleted) and swaps the valid
/// ones in at once; an invalid one keeps its tenant's last good policy.
async fn apply<P: Prepare>(store: &PolicyStore<P>, changes: BTreeMap<String, Option<Vec<u8>>>) {
    let stored: Vec<(String, Option<Vec<u8>>)> = changes.into_iter().collect();
    let names: Vec<String> = stored.iter().map(|(name, _)| name.clone()).collect();
    let compiled = tokio::task::spawn_blocking(move || {
        stored
            .into_iter()
            .map(|(name, text)| match text {
                None => (name, None),
                Some(text) => {
                    let outcome = compile(&Stored {
                        name: name.clone(),
                        text,
                        mod_revision: 0,
                    });
                    (name, Some(outcome))
                }
            })
            .collect::<Vec<_>>()
    })
    .await;
    let compiled = match compiled {
        Ok(compiled) => compiled,
        Err(e) => {
            // Not lost in silence: each tenant keeps its last good policy
            // and says why, until its key changes again.
            for name in &names {
                store.count_reload(ReloadResult::Invalid);
                store.set_reload_error(name, format!("compiling the policy from etcd failed: {e}"));
            }
            warn!(tenants = names.len(), "compiling policies from etcd failed: {e}");
            return;
        }
    };
    let mut swaps = Vec::new();
    for (name, outcome) in compiled {
        match outcome {
            None => {
                store.count_reload(ReloadResult::Removed);
                swaps.push((name, None));
            }
            Some(Ok((_, policy))) => {
                store.count_reload(ReloadResult::Ok);
                swaps.push((name, Some(policy)));
            }
            Some(Err((name, error))) => {
                warn!(tenant = %name, "policy in etcd rejected; the last good policy stays in force:\n{error}");
                store.count_reload(ReloadResult::Invalid);
                store.set_reload_error(&name, error);
            }
        }
    }
    let count = swaps.len();
    store.swap_batch(swaps);
    if count > 0 {
        info!(tenants = count, "policies from etcd swapped in");
    }
}

/// Puts a fresh read in force: every tenant whose policy differs, and the
/// removal of every tenant etcd no longer holds, in one swap.
fn resync<P: Prepare>(store: &PolicyStore<P>, loaded: Loaded) {
    let in_force = store.tenants_full();
    let mut present: HashSet<String> = HashSet::new();
    let mut swaps = Vec::new();
    for (name, policy) in loaded.tenants {
        present.insert(name.clone());
        let same = in_force
            .get(&name)
            .is_some_and(|s| s.policy.version() == policy.version());
        if !same {
            swaps.push((name, Some(policy)));
        }
    }
    for (name, error) in loaded.invalid {
        present.insert(name.clone());
        store.set_reload_error(&name, error);
    }
    for (name, _) in in_force.sorted() {
        if !present.contains(name) {
            swaps.push((name.to_owned(), None));
        }
    }
    drop(in_force);
    store.swap_batch(swaps);
}
