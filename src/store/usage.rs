//! Entry usage (DESIGN.md section 16): how many decisions each entry of a
//! snapshot allowed, and when the last one was.
//!
//! A decision counts into its own shard, picked by the thread that decides:
//! each shard is a row of slots, one per entry, and rows are padded apart,
//! so counting takes no lock and no two threads write one cache line. A
//! snapshot swapped in for a tenant starts from its predecessor's counts
//! for every entry still present (the same normalised pattern); hits that
//! calls still deciding with the predecessor count after that are carried
//! over too, until the predecessor is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::{Entry, Policy};

/// Slots in a cache line (a slot is 16 bytes).
const SLOTS_PER_LINE: usize = 4;
/// Most shards: more threads share them.
const MAX_SHARDS: usize = 16;

/// One entry's count in one shard.
#[derive(Debug, Default)]
struct Slot {
    hits: AtomicU64,
    last_hit_unix_ms: AtomicI64,
}

/// An entry's usage as read: decisions allowed, and when the last one was
/// (0: never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits {
    /// Decisions the entry allowed.
    pub hits: u64,
    /// The last of them, in milliseconds since the Unix epoch; 0: never.
    pub last_hit_unix_ms: i64,
}

impl Hits {
    fn add(self, other: Hits) -> Hits {
        Hits {
            hits: self.hits + other.hits,
            last_hit_unix_ms: self.last_hit_unix_ms.max(other.last_hit_unix_ms),
        }
    }
}

/// The usage of one snapshot's entries.
#[derive(Debug)]
pub struct Usage {
    entries: usize,
    /// Slots from one shard's row to the next: the entries, rounded up to a
    /// cache line, and one line more, so two rows never share one.
    stride: usize,
    slots: Box<[Slot]>,
    /// What the predecessor had counted when this snapshot was made, and the
    /// predecessor itself while calls may still count into it. Read and
    /// written by readers and swaps only, never on the decision path.
    carried: Mutex<Carried>,
}

#[derive(Debug, Default)]
struct Carried {
    /// Per entry: the counts carried over.
    base: Vec<Hits>,
    /// The predecessor, each entry's index in it, and what its shards held
    /// for that entry when this snapshot was made.
    from: Option<(Arc<Usage>, Mapping)>,
}

/// Per entry: its index in the predecessor and what the predecessor's
/// shards held for it then; `None`: a new entry.
type Mapping = Vec<Option<(usize, Hits)>>;

fn shards() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, MAX_SHARDS)
    })
}

/// This thread's shard (threads take shards in turn, once).
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % shards();
    }
    SHARD.with(|s| *s)
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Usage {
    /// Fresh counts for `policy`'s entries, carried over from `previous`
    /// (the tenant's snapshot before) for each entry still present.
    pub fn new(policy: &Policy, previous: Option<&Arc<Usage>>, previous_policy: Option<&Policy>) -> Self {
        let entries = policy.entries().len();
        let stride = entries.div_ceil(SLOTS_PER_LINE) * SLOTS_PER_LINE + SLOTS_PER_LINE;
        let slots = (0..stride * shards()).map(|_| Slot::default()).collect();
        let mut carried = Carried {
            base: vec![Hits::default(); entries],
            from: None,
        };
        if let (Some(previous), Some(previous_policy)) = (previous, previous_policy) {
            previous.settle();
            let mut index: HashMap<&str, usize> = HashMap::new();
            for (i, entry) in previous_policy.entries().iter().enumerate() {
                index.entry(entry.pattern.as_str()).or_insert(i);
            }
            let mapped: Mapping = policy
                .entries()
                .iter()
                .map(|entry| index.get(entry.pattern.as_str()).map(|&i| (i, previous.own(i))))
                .collect();
            for (base, map) in carried.base.iter_mut().zip(&mapped) {
                if let Some((i, _)) = map {
                    *base = previous.total(*i);
                }
            }
            carried.from = Some((Arc::clone(previous), mapped));
        }
        Usage {
            entries,
            stride,
            slots,
            carried: Mutex::new(carried),
        }
    }

    /// Counts a decision `entry` allowed; `entries` is the slice it is in
    /// (the snapshot's policy's). No lock, and only this thread's shard.
    pub fn hit(&self, entries: &[Entry], entry: &Entry) {
        let size = std::mem::size_of::<Entry>().max(1);
        let offset = (entry as *const Entry as usize).wrapping_sub(entries.as_ptr() as usize);
        let index = offset / size;
        if !offset.is_multiple_of(size) || index >= self.entries {
            return;
        }
        if let Some(slot) = self.slots.get(shard() * self.stride + index) {
            slot.hits.fetch_add(1, Ordering::Relaxed);
            slot.last_hit_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        }
    }

    /// What this snapshot's shards hold for entry `index`.
    fn own(&self, index: usize) -> Hits {
        (0..shards())
            .filter_map(|s| self.slots.get(s * self.stride + index))
            .fold(Hits::default(), |sum, slot| {
                sum.add(Hits {
                    hits: slot.hits.load(Ordering::Relaxed),
                    last_hit_unix_ms: slot.last_hit_unix_ms.load(Ordering::Relaxed),
                })
            })
    }

    /// Entry `index`'s usage since counting began.
    pub fn total(&self, index: usize) -> Hits {
        let own = self.own(index);
        let carried = self.carried.lock().unwrap_or_else(PoisonError::into_inner);
        let base = carried.base.get(index).copied().unwrap_or_default();
        let late = match &carried.from {
            Some((previous, mapped)) => match mapped.get(index).copied().flatten() {
                Some((i, at_copy)) => {
                    let now = previous.own(i);
                    Hits {
                        hits: now.hits.saturating_sub(at_copy.hits),
                        last_hit_unix_ms: now.last_hit_unix_ms,
                    }
                }
                None => Hits::default(),
            },
            None => Hits::default(),
        };
        base.add(late).add(own)
    }

    /// Folds the predecessor's late hits into the counts carried, and lets
    /// it go, once no call can count into it any more (this is the last
    /// hold on it).
    pub fn settle(&self) {
        let mut carried = self.carried.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((previous, mapped)) = carried.from.take() else {
            return;
        };
        if Arc::strong_count(&previous) > 1 {
            carried.from = Some((previous, mapped));
            return;
        }
        for (base, map) in carried.base.iter_mut().zip(&mapped) {
            if let Some((i, at_copy)) = map {
                let now = previous.own(*i);
                *base = base.add(Hits {
                    hits: now.hits.saturating_sub(at_copy.hits),
                    last_hit_unix_ms: now.last_hit_unix_ms,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str]) -> Policy {
        let text: String = origins
            .iter()
            .map(|o| format!("[[entries]]\norigin = \"{o}\"\n"))
            .collect();
        match Policy::compile("t.toml", text.as_bytes()) {
            Ok(c) => c.policy,
            Err(e) => unreachable!("{}", e.display("t.toml")),
        }
    }

    #[test]
    fn hits_carry_over_for_entries_still_present_late_ones_too() {
        let first = policy(&["https://a.example.com", "https://b.example.com"]);
        let usage = Arc::new(Usage::new(&first, None, None));
        let entries = first.entries();
        for _ in 0..3 {
            usage.hit(entries, &entries[0]);
        }
        usage.hit(entries, &entries[1]);
        assert_eq!(usage.total(0).hits, 3);
        assert!(usage.total(0).last_hit_unix_ms > 0);

        // b removed, c added, a moved: a keeps its count.
        let second = policy(&["https://c.example.com", "https://a.example.com"]);
        let next = Usage::new(&second, Some(&usage), Some(&first));
        assert_eq!(next.total(1).hits, 3);
        assert_eq!(next.total(0), Hits::default());
        // A call still deciding with the first snapshot counts late.
        usage.hit(entries, &entries[0]);
        assert_eq!(next.total(1).hits, 4);
        next.hit(second.entries(), &second.entries()[1]);
        assert_eq!(next.total(1).hits, 5);
        // Still held: nothing folds; once let go, the count stays.
        next.settle();
        assert_eq!(next.total(1).hits, 5);
        drop(usage);
        next.settle();
        assert_eq!(next.total(1).hits, 5);
        assert!(next.carried.lock().unwrap().from.is_none());
    }

    #[test]
    fn an_entry_of_another_slice_counts_nothing() {
        let p = policy(&["https://a.example.com"]);
        let other = policy(&["https://b.example.com"]);
        let usage = Usage::new(&p, None, None);
        usage.hit(p.entries(), &other.entries()[0]);
        assert_eq!(usage.total(0).hits, 0);
    }
}
