//! The denial log (`--log-denials`): one JSON line per denied decision on
//! stderr, at most `--log-denials-rate` lines a second, and a line each
//! second that counts the ones dropped, so that lines logged plus dropped
//! equal the denials. The shadow log (`--log-shadow`, target
//! `corsd::shadow`) is the same kind of log, of each decision a candidate
//! would change (DESIGN.md section 15), rate-limited by `--log-shadow-rate`. Lines are JSON whatever `--log-format` is; every value
//! is escaped by `serde_json`, so a hostile `Origin` cannot forge a line and
//! parses back to itself.
//!
//! A worker never waits on stderr: lines go to a writer thread through
//! `tracing-appender`'s non-blocking writer, and a line that finds its queue
//! full is counted as dropped. Values are capped ([`MAX_ORIGIN`],
//! [`MAX_AUTHORITY`], [`MAX_PATH`], [`MAX_TENANT`], [`MAX_METHOD`] bytes): a
//! longer one is cut at a character boundary and ends with `...`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

use serde::Serialize;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use super::Api;
use crate::core::shadow::Shadowed;
use crate::core::{Decision, Request};

/// The denial log's target, named in every line.
pub const TARGET: &str = "corsd::denial";

/// The shadow log's target.
pub const SHADOW_TARGET: &str = "corsd::shadow";

/// Default lines a second.
pub const DEFAULT_RATE: u64 = 100;

/// Longest origin logged whole: longer than any origin corsd can allow.
pub const MAX_ORIGIN: usize = 330;
/// Longest authority logged whole.
pub const MAX_AUTHORITY: usize = 256;
/// Longest path logged whole.
pub const MAX_PATH: usize = 1024;
/// Longest tenant name logged whole (a tenant name has at most 63 bytes).
pub const MAX_TENANT: usize = 64;
/// Longest method logged whole.
pub const MAX_METHOD: usize = 32;
/// Lines queued for the writer thread before more are dropped.
const QUEUE: usize = 16_384;

/// `value`, or its first `max` bytes (at a character boundary) and `...`.
fn capped(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if value.len() <= max {
        return value.into();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value
        .get(..end)
        .map_or_else(|| "...".into(), |head| format!("{head}...").into())
}

/// Rate-limited JSON lines: denials, or a candidate's changes.
#[derive(Debug)]
pub struct DenialLog {
    target: &'static str,
    rate: u64,
    started: Instant,
    /// The second (since `started`) the count below is for, in the high 32
    /// bits, and the lines logged in it, in the low 32: one atomic, so a
    /// new second and its first line are taken together.
    window: AtomicU64,
    dropped: AtomicU64,
    writer: NonBlocking,
    /// Lines the writer's queue refused, counted as dropped at each report.
    refused: ErrorCounter,
    refused_reported: AtomicU64,
    /// Flushes the writer thread when dropped ([`DenialLog::close`]).
    guard: Mutex<Option<WorkerGuard>>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    target: &'static str,
    api: &'static str,
    tenant: std::borrow::Cow<'a, str>,
    origin: Option<std::borrow::Cow<'a, str>>,
    method: std::borrow::Cow<'a, str>,
    preflight: bool,
    reason: &'static str,
    matched: &'a str,
    policy_version: &'a str,
    authority: std::borrow::Cow<'a, str>,
    path: std::borrow::Cow<'a, str>,
}

/// One policy's side of a shadow line.
#[derive(Serialize)]
struct Side<'a> {
    verdict: &'static str,
    reason: &'static str,
    matched: &'a str,
    policy_version: &'a str,
}

impl<'a> Side<'a> {
    fn of(decision: &'a Decision<'a>) -> Self {
        Side {
            verdict: decision.verdict.as_str(),
            reason: decision.reason.as_str(),
            matched: decision.matched_pattern(),
            policy_version: decision.policy_version,
        }
    }
}

#[derive(Serialize)]
struct ShadowLine<'a> {
    time: String,
    target: &'static str,
    api: &'static str,
    tenant: std::borrow::Cow<'a, str>,
    origin: Option<std::borrow::Cow<'a, str>>,
    method: std::borrow::Cow<'a, str>,
    preflight: bool,
    authority: std::borrow::Cow<'a, str>,
    path: std::borrow::Cow<'a, str>,
    change: &'static str,
    live: Side<'a>,
    candidate: Side<'a>,
}

/// The shadow log: the same writer, rate limit and dropped count.
pub type ShadowLog = DenialLog;

#[derive(Serialize)]
struct Dropped<'a> {
    time: &'a str,
    target: &'static str,
    dropped: u64,
}

impl DenialLog {
    /// A log of at most `rate` lines a second (0: none, every denial counted
    /// as dropped).
    pub fn new(rate: u64) -> Arc<Self> {
        Self::for_target(TARGET, rate)
    }

    /// The shadow log: at most `rate` lines a second.
    pub fn shadow(rate: u64) -> Arc<Self> {
        Self::for_target(SHADOW_TARGET, rate)
    }

    fn for_target(target: &'static str, rate: u64) -> Arc<Self> {
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUE)
            .thread_name(if target == TARGET {
                "corsd-denial-log"
            } else {
                "corsd-shadow-log"
            })
            .finish(std::io::stderr());
        Arc::new(DenialLog {
            target,
            // The count shares one atomic with the second: 32 bits each.
            rate: rate.min(u64::from(u32::MAX)),
            started: Instant::now(),
            window: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: writer.error_counter(),
            refused_reported: AtomicU64::new(0),
            writer,
            guard: Mutex::new(Some(guard)),
        })
    }

    /// Logs one denial, unless this second's lines are spent; then counts it
    /// as dropped.
    pub fn deny(&self, api: Api, tenant: &str, request: &Request<'_>, decision: &Decision<'_>) {
        self.log(|time| Line {
            time,
            target: self.target,
            api: api.as_str(),
            tenant: capped(tenant, MAX_TENANT),
            origin: request.origin.map(|o| capped(o, MAX_ORIGIN)),
            method: capped(request.method, MAX_METHOD),
            preflight: decision.preflight,
            reason: decision.reason.as_str(),
            matched: decision.matched_pattern(),
            policy_version: decision.policy_version,
            authority: capped(request.authority, MAX_AUTHORITY),
            path: capped(request.path, MAX_PATH),
        });
    }

    /// Logs one decision a candidate changes, unless this second's lines
    /// are spent; then counts it as dropped.
    pub fn change(&self, api: Api, tenant: &str, request: &Request<'_>, live: &Decision<'_>, shadow: &Shadowed<'_>) {
        self.log(|time| ShadowLine {
            time,
            target: self.target,
            api: api.as_str(),
            tenant: capped(tenant, MAX_TENANT),
            origin: request.origin.map(|o| capped(o, MAX_ORIGIN)),
            method: capped(request.method, MAX_METHOD),
            preflight: live.preflight,
            authority: capped(request.authority, MAX_AUTHORITY),
            path: capped(request.path, MAX_PATH),
            change: shadow.change.as_str(),
            live: Side::of(live),
            candidate: Side::of(&shadow.decision),
        });
    }

    /// Writes the line `line` makes of the time, unless this second's
    /// lines are spent; then counts it as dropped.
    fn log<L: Serialize>(&self, line: impl FnOnce(String) -> L) {
        if !self.take() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.write_line(&line(now()));
    }

    /// Whether a line may be written in this second.
    fn take(&self) -> bool {
        if self.rate == 0 {
            return false;
        }
        let second = self.started.elapsed().as_secs() & 0xffff_ffff;
        let mut seen = self.window.load(Ordering::Relaxed);
        loop {
            let (window, count) = (seen >> 32, seen & 0xffff_ffff);
            // A caller that read the clock just before another moved the
            // window on counts in the newer window: it never moves back.
            let next = if window >= second {
                if count >= self.rate {
                    return false;
                }
                seen + 1
            } else {
                (second << 32) | 1
            };
            match self
                .window
                .compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => seen = actual,
            }
        }
    }

    /// Writes, each second, how many lines were dropped since the last one
    /// (when any were). Runs until the process ends.
    pub async fn report_dropped(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The count is written past the queue: off the async workers.
            let log = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || log.flush_dropped()).await;
        }
    }

    /// Writes the dropped count now, if there is one: lines over the rate,
    /// and lines the writer's queue refused.
    pub fn flush_dropped(&self) {
        let refused = u64::try_from(self.refused.dropped_lines()).unwrap_or(u64::MAX);
        let newly_refused = refused.saturating_sub(self.refused_reported.swap(refused, Ordering::Relaxed));
        let dropped = self.dropped.swap(0, Ordering::Relaxed) + newly_refused;
        if dropped > 0 {
            let time = now();
            // Written past the queue: this count must not be lost itself.
            if let Ok(mut bytes) = serde_json::to_vec(&Dropped {
                time: &time,
                target: self.target,
                dropped,
            }) {
                bytes.push(b'\n');
                let _ = std::io::stderr().lock().write_all(&bytes);
            }
        }
    }

    /// At exit: writes out every queued line, then the last dropped count.
    pub fn close(&self) {
        drop(self.guard.lock().unwrap_or_else(PoisonError::into_inner).take());
        self.flush_dropped();
    }

    /// One line, handed whole to the writer thread in a single write, so
    /// lines never interleave; never waits.
    fn write_line(&self, line: &impl Serialize) {
        let Ok(mut bytes) = serde_json::to_vec(line) else {
            return;
        };
        bytes.push(b'\n');
        let _ = self.writer.clone().write_all(&bytes);
    }
}

fn now() -> String {
    let mut time = String::with_capacity(32);
    let _ = SystemTime.format_time(&mut Writer::new(&mut time));
    time
}
