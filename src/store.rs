//! The policy in force, shared by every call: an [`ArcSwap`] of an immutable
//! snapshot. A call loads one snapshot and decides with it alone, so it sees
//! the old policy or the new one, never a mix, and never waits for a reload.
//! The reloader is the only writer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

use crate::core::Policy;

/// A compiled policy and when it came into force.
#[derive(Debug)]
pub struct Snapshot {
    /// The policy.
    pub policy: Policy,
    /// When it was swapped in, in milliseconds since the Unix epoch.
    pub loaded_at_unix_ms: i64,
}

/// The policy in force and the state of the last reload.
#[derive(Debug)]
pub struct PolicyStore {
    current: ArcSwap<Snapshot>,
    last_reload_error: ArcSwapOption<String>,
}

impl PolicyStore {
    /// A store with `policy` in force.
    pub fn new(policy: Policy) -> Arc<Self> {
        Arc::new(PolicyStore {
            current: ArcSwap::from_pointee(Snapshot {
                policy,
                loaded_at_unix_ms: now_unix_ms(),
            }),
            last_reload_error: ArcSwapOption::empty(),
        })
    }

    /// A store holding the policy `text`, for tests.
    pub fn for_test(text: &str) -> Result<Arc<Self>, crate::core::PolicyError> {
        Ok(Self::new(Policy::compile("test.toml", text.as_bytes())?.policy))
    }

    /// The snapshot in force; cheap, lock-free, never waits.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The snapshot in force, as an owned handle (for long-lived use).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Puts `policy` in force and clears the reload error.
    pub fn swap(&self, policy: Policy) {
        self.current.store(Arc::new(Snapshot {
            policy,
            loaded_at_unix_ms: now_unix_ms(),
        }));
        self.last_reload_error.store(None);
    }

    /// Records why the file on disk is not the policy in force.
    pub fn set_reload_error(&self, error: String) {
        self.last_reload_error.store(Some(Arc::new(error)));
    }

    /// Clears the reload error: the file on disk is the policy in force.
    pub fn clear_reload_error(&self) {
        self.last_reload_error.store(None);
    }

    /// Why the file on disk is not the policy in force; `None` when it is.
    pub fn last_reload_error(&self) -> Option<Arc<String>> {
        self.last_reload_error.load_full()
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
