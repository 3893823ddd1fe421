//! The one watcher of every file corsd follows (DESIGN.md section 14): the
//! policy file or directory, the TLS files, the admin token file. It owns
//! the inotify watches (through `notify`), knows which paths changed,
//! settles a burst of events once, falls back to polling metadata, and
//! yields [`Change`]s; callers read with [`read_stable`] and apply.
//!
//! What it watches, and why:
//! - a followed file: its directory, so rename-over saves, editors'
//!   temp-file dance and a Kubernetes `..data` swap are seen (a name starting
//!   with `..` is the volume's own bookkeeping: every file there may have
//!   changed);
//! - a followed directory: the directory (its `NAME.toml` entries) and its
//!   parent, because git-sync renames a new link over the path corsd was
//!   given, which makes it another directory. Names that cannot be tenant
//!   files (`FILE.lock`, temp files, dotfiles) are not passed on.
//!
//! An event queue that overflowed, a watch that failed, or a directory that
//! was replaced make the next change a full rescan, never a missed change.
//! A metadata poll backs the events up: a file's identity, size and mtime
//! every [`FILE_POLL`]; a directory's own identity, target and `..data` link
//! every [`DIR_POLL`], and a rescan of its entries' metadata every
//! [`DIR_SWEEP`] (a rescan reads only files whose metadata changed).
//!
//! Must not touch: policies, the store, TLS configurations. This module only
//! says what changed and reads bytes.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

mod read;
pub use read::{Fingerprint, agrees, not_a_file, read_file, read_stable, settle_read, settled_before};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Quiet time after the last relevant event before a change is yielded.
pub const DEBOUNCE: Duration = Duration::from_millis(30);
/// Longest a burst of events may put a change off.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(300);
/// Pause between two reads that must agree.
pub const SETTLE: Duration = Duration::from_millis(25);
/// Longest [`Layout::settled`] waits for a directory to stay still.
pub const SETTLE_MAX: Duration = Duration::from_secs(2);
/// Reads tried before a file that keeps changing is given up on, for now.
pub const MAX_READS: usize = 20;
/// How often followed files' metadata is compared, in case an event was missed.
pub const FILE_POLL: Duration = Duration::from_millis(500);
/// How often a followed directory's identity and layout links are compared.
pub const DIR_POLL: Duration = Duration::from_secs(1);
/// How often a followed directory's entries are all compared by metadata.
pub const DIR_SWEEP: Duration = Duration::from_secs(10);
/// Events queued between the watcher's thread and its reader; past that the
/// watcher notes an overflow and the next change is a rescan.
const QUEUE: usize = 4096;

/// What is followed.
#[derive(Debug, Clone)]
enum Followed {
    /// Files, each by its name in its directory.
    Files(Vec<PathBuf>),
    /// A directory's entries.
    Dir(PathBuf),
}

/// A settled change.
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// What changed: followed files (file mode), or entries of the directory
    /// that may be tenant files (directory mode), by path.
    pub paths: BTreeSet<PathBuf>,
    /// Anything may have changed: compare every file (by metadata).
    pub rescan: bool,
    /// Read every file, whatever its metadata says (SIGHUP).
    pub forced: bool,
    /// The rescan is routine (the periodic sweep, or a reloader's first
    /// look), not a sign that events were missed or the layout moved.
    pub routine: bool,
    /// When the first event of the change arrived.
    pub since: Option<Instant>,
}

impl Change {
    fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.rescan && !self.forced
    }

    fn merge(&mut self, other: Change) {
        self.paths.extend(other.paths);
        self.rescan |= other.rescan;
        self.forced |= other.forced;
        self.routine &= other.routine;
        self.since = match (self.since, other.since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// What the watcher's thread sends.
#[derive(Debug)]
enum Signal {
    Paths(Vec<PathBuf>),
    Rescan,
}

/// A running watch. Dropping it stops the watching.
#[derive(Debug)]
pub struct Watch {
    followed: Followed,
    watcher: RecommendedWatcher,
    signals: mpsc::Receiver<Signal>,
    overflowed: Arc<AtomicBool>,
    now: Arc<Notify>,
    /// Directories watched, as given to the watcher (events name paths in them).
    dirs: Vec<PathBuf>,
    /// File mode: each file's fingerprint at the last poll or change.
    prints: Vec<Fingerprint>,
    /// Directory mode: the directory's identity, target and `..data` link.
    layout: Layout,
    poll: Interval,
    sweep: Interval,
}

impl Watch {
    /// Follows `paths` (each a file, maybe a symlink). `now` yields a forced
    /// change when notified (SIGHUP).
    pub fn files(paths: Vec<PathBuf>, now: Arc<Notify>) -> io::Result<Watch> {
        let mut dirs: Vec<PathBuf> = paths.iter().map(|p| parent_of(p)).collect();
        dirs.sort();
        dirs.dedup();
        let prints = paths.iter().map(|p| Fingerprint::of(p)).collect();
        Watch::start(Followed::Files(paths), dirs, prints, now, FILE_POLL)
    }

    /// Follows the entries of the directory `dir` (maybe a symlink that is
    /// renamed over). `now` yields a forced change when notified.
    pub fn dir(dir: PathBuf, now: Arc<Notify>) -> io::Result<Watch> {
        let dirs = vec![dir.clone(), parent_of(&dir)];
        Watch::start(Followed::Dir(dir), dirs, Vec::new(), now, DIR_POLL)
    }

    fn start(
        followed: Followed,
        dirs: Vec<PathBuf>,
        prints: Vec<Fingerprint>,
        now: Arc<Notify>,
        every: Duration,
    ) -> io::Result<Watch> {
        let (sender, signals) = mpsc::channel(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let full = Arc::clone(&overflowed);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let signal = match event {
                Ok(event) if event.need_rescan() => Signal::Rescan,
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => return,
                Ok(event) if event.paths.is_empty() => Signal::Rescan,
                Ok(event) => Signal::Paths(event.paths),
                Err(_) => Signal::Rescan,
            };
            if sender.try_send(signal).is_err() {
                full.store(true, Ordering::Relaxed);
            }
        })
        .map_err(io::Error::other)?;
        let layout = match &followed {
            Followed::Dir(dir) => Layout::of(dir),
            Followed::Files(_) => Layout::default(),
        };
        let mut watch = Watch {
            followed,
            watcher,
            signals,
            overflowed,
            now,
            dirs: Vec::new(),
            prints,
            layout,
            poll: interval(every),
            sweep: interval(DIR_SWEEP),
        };
        for dir in dirs {
            watch
                .watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(io::Error::other)?;
            watch.dirs.push(dir);
        }
        Ok(watch)
    }

    /// The directory followed (directory mode).
    pub fn followed_dir(&self) -> Option<&Path> {
        match &self.followed {
            Followed::Dir(dir) => Some(dir),
            Followed::Files(_) => None,
        }
    }

    /// Waits for the next settled change.
    pub async fn next(&mut self) -> Change {
        loop {
            let first = tokio::select! {
                biased;
                () = self.now.notified() => return Change { forced: true, rescan: true, since: Some(Instant::now()), ..Change::default() },
                signal = self.signals.recv() => match signal {
                    Some(signal) => self.absorb(signal),
                    // The watcher is gone: only the poll is left.
                    None => {
                        self.poll.tick().await;
                        self.polled()
                    }
                },
                _ = self.poll.tick() => self.polled(),
                _ = self.sweep.tick(), if self.followed_dir().is_some() => Change { rescan: true, routine: true, ..Change::default() },
            };
            let mut change = self.overflow_check(first);
            if change.is_empty() {
                continue;
            }
            if change.since.is_none() {
                // From a poll: the files have long settled.
                change.since = Some(Instant::now());
                return self.rewatch_if_needed(change);
            }
            self.settle(&mut change).await;
            return self.rewatch_if_needed(change);
        }
    }

    /// Collects events until none relevant came for [`DEBOUNCE`], or for
    /// [`DEBOUNCE_MAX`] at most.
    async fn settle(&mut self, change: &mut Change) {
        let deadline = Instant::now() + DEBOUNCE_MAX;
        let mut quiet = Instant::now() + DEBOUNCE;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(quiet.min(deadline)) => break,
                () = self.now.notified() => {
                    change.forced = true;
                    change.rescan = true;
                    break;
                }
                signal = self.signals.recv() => match signal {
                    Some(signal) => {
                        let more = self.absorb(signal);
                        if !more.is_empty() {
                            change.merge(more);
                            quiet = Instant::now() + DEBOUNCE;
                        }
                    }
                    None => break,
                },
            }
        }
        let settled = self.overflow_check(std::mem::take(change));
        *change = settled;
    }

    /// An overflow seen since the last look turns `change` into a rescan.
    fn overflow_check(&self, mut change: Change) -> Change {
        if self.overflowed.swap(false, Ordering::Relaxed) {
            change.rescan = true;
            change.since.get_or_insert_with(Instant::now);
        }
        change
    }

    /// What one signal means for the followed files.
    fn absorb(&mut self, signal: Signal) -> Change {
        let mut change = Change {
            since: Some(Instant::now()),
            ..Change::default()
        };
        let paths = match signal {
            Signal::Rescan => {
                change.rescan = true;
                return change;
            }
            Signal::Paths(paths) => paths,
        };
        for path in paths {
            match &self.followed {
                Followed::Files(files) => {
                    for file in files {
                        if affects_file(&path, file) {
                            change.paths.insert(file.clone());
                        }
                    }
                }
                Followed::Dir(dir) => {
                    if path == *dir || self.dirs.first().is_some_and(|d| path == *d) {
                        // The directory itself was replaced, moved or removed.
                        change.rescan = true;
                    } else if path.parent() == Some(dir.as_path()) {
                        match entry_kind(path.file_name()) {
                            Entry::Layout => change.rescan = true,
                            Entry::Candidate => {
                                change.paths.insert(path);
                            }
                            Entry::Other => {}
                        }
                    }
                }
            }
        }
        if change.paths.is_empty() && !change.rescan {
            change.since = None;
        }
        change
    }

    /// What the metadata poll found.
    fn polled(&mut self) -> Change {
        let mut change = Change::default();
        match &self.followed {
            Followed::Files(files) => {
                for (file, print) in files.iter().zip(self.prints.iter_mut()) {
                    let now = Fingerprint::of(file);
                    if now != *print {
                        *print = now;
                        change.paths.insert(file.clone());
                    }
                }
            }
            Followed::Dir(dir) => {
                let now = Layout::of(dir);
                if now != self.layout {
                    change.rescan = true;
                }
            }
        }
        change
    }

    /// Directory mode: when the directory is another one than the one
    /// watched (git-sync renamed a new link over it, or it was replaced),
    /// watch the new one. File mode: note each file's fingerprint, so the
    /// poll does not report the change again.
    fn rewatch_if_needed(&mut self, change: Change) -> Change {
        match &self.followed {
            Followed::Files(files) => {
                for (file, print) in files.iter().zip(self.prints.iter_mut()) {
                    if change.rescan || change.paths.contains(file) {
                        *print = Fingerprint::of(file);
                    }
                }
            }
            Followed::Dir(dir) => {
                let now = Layout::of(dir);
                if now.target != self.layout.target || now.identity != self.layout.identity {
                    // inotify watched the directory the path led to; lead it
                    // to the new one. A failure leaves the poll and sweep.
                    let _ = self.watcher.unwatch(dir);
                    if self.watcher.watch(dir, RecursiveMode::NonRecursive).is_err() {
                        self.overflowed.store(true, Ordering::Relaxed);
                    }
                }
                self.layout = now;
            }
        }
        change
    }
}

/// What a directory is, as the poll compares it: where its path leads, its
/// identity and modification time, and where its `..data` link points.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    target: Option<PathBuf>,
    identity: Fingerprint,
    data_link: Option<PathBuf>,
}

impl Layout {
    /// The directory at `dir` now.
    pub fn of(dir: &Path) -> Layout {
        Layout {
            target: std::fs::canonicalize(dir).ok(),
            identity: Fingerprint::of(dir),
            data_link: std::fs::read_link(dir.join("..data")).ok(),
        }
    }

    /// Waits until the directory at `dir` stays as it is (its target, its
    /// `..data` link and its own modification time) for [`DEBOUNCE`], for
    /// [`SETTLE_MAX`] at most: a writer that moved the revision is done
    /// adding and removing entries. Blocking.
    pub fn settled(dir: &Path) -> Layout {
        let started = std::time::Instant::now();
        let mut last = Layout::of(dir);
        loop {
            std::thread::sleep(DEBOUNCE);
            let now = Layout::of(dir);
            if now == last || started.elapsed() > SETTLE_MAX {
                return now;
            }
            last = now;
        }
    }

    /// Whether `other` is the same revision of the layout: the same
    /// directory and the same `..data` (its modification time aside, which
    /// moves with every file added or removed).
    pub fn same_revision(&self, other: &Layout) -> bool {
        self.target == other.target && self.data_link == other.data_link
    }
}

/// What a name in a followed directory is.
enum Entry {
    /// The volume's own bookkeeping (`..data`, `..2026_12_02...`): every
    /// file there may have changed.
    Layout,
    /// A `.toml` file that is not a dotfile: maybe a tenant's.
    Candidate,
    /// Anything else (`FILE.lock`, temp files, dotfiles): never read.
    Other,
}

fn entry_kind(name: Option<&std::ffi::OsStr>) -> Entry {
    let Some(name) = name.and_then(|n| n.to_str()) else {
        return Entry::Other;
    };
    if name.starts_with("..") {
        Entry::Layout
    } else if !name.starts_with('.') && name.ends_with(".toml") {
        Entry::Candidate
    } else {
        Entry::Other
    }
}

/// Whether an event on `path` may change the followed `file`: the file's own
/// name in its directory, the volume's bookkeeping there, or the directory.
fn affects_file(path: &Path, file: &Path) -> bool {
    let dir = parent_of(file);
    if path == dir {
        return true;
    }
    path.parent() == Some(dir.as_path())
        && (path.file_name() == file.file_name()
            || path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("..")))
}

/// The directory a path is in (`.` for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn interval(every: Duration) -> Interval {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// A name in a directory as an owned string, when it is UTF-8.
pub fn name_of(path: &Path) -> Option<String> {
    path.file_name().and_then(|n| n.to_str()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_matter_in_a_policy_directory() {
        let kind = |n: &str| entry_kind(Some(std::ffi::OsStr::new(n)));
        assert!(matches!(kind("acme.toml"), Entry::Candidate));
        assert!(matches!(kind("..data"), Entry::Layout));
        assert!(matches!(kind("..2026_12_02_10_00_00.123"), Entry::Layout));
        assert!(matches!(kind("acme.toml.lock"), Entry::Other));
        assert!(matches!(kind(".acme.toml.tmp"), Entry::Other));
        assert!(matches!(kind(".hidden.toml"), Entry::Other));
    }

    #[test]
    fn events_that_affect_a_followed_file() {
        let file = Path::new("/etc/corsd/policy.toml");
        assert!(affects_file(Path::new("/etc/corsd/policy.toml"), file));
        assert!(affects_file(Path::new("/etc/corsd/..data"), file));
        assert!(affects_file(Path::new("/etc/corsd"), file));
        assert!(!affects_file(Path::new("/etc/corsd/policy.toml.lock"), file));
        assert!(!affects_file(Path::new("/etc/corsd/other.toml"), file));
        assert!(affects_file(Path::new("./p.toml"), Path::new("p.toml")));
    }
}
