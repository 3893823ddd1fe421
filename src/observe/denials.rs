//! The denial log (`--log-denials`): one JSON line per denied decision on
//! stderr, at most `--log-denials-rate` lines a second, and a line each
//! second that counts the ones dropped, so that lines logged plus dropped
//! equal the denials. Lines are JSON whatever `--log-format` is; every value
//! is escaped by `serde_json`, so a hostile `Origin` cannot forge a line and
//! parses back to itself.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use super::Api;
use crate::core::{Decision, Request};

/// The log's target, named in every line.
pub const TARGET: &str = "corsd::denial";

/// Default lines a second.
pub const DEFAULT_RATE: u64 = 100;

/// Rate-limited denial lines.
#[derive(Debug)]
pub struct DenialLog {
    rate: u64,
    started: Instant,
    /// The second (since `started`) the count below is for, in the high 32
    /// bits, and the lines logged in it, in the low 32: one atomic, so a
    /// new second and its first line are taken together.
    window: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    target: &'static str,
    api: &'static str,
    tenant: &'a str,
    origin: Option<&'a str>,
    method: &'a str,
    preflight: bool,
    reason: &'static str,
    matched: &'a str,
    policy_version: &'a str,
    authority: &'a str,
    path: &'a str,
}

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
        Arc::new(DenialLog {
            // The count shares one atomic with the second: 32 bits each.
            rate: rate.min(u64::from(u32::MAX)),
            started: Instant::now(),
            window: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Logs one denial, unless this second's lines are spent; then counts it
    /// as dropped.
    pub fn deny(&self, api: Api, tenant: &str, request: &Request<'_>, decision: &Decision<'_>) {
        if !self.take() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let time = now();
        let line = Line {
            time: &time,
            target: TARGET,
            api: api.as_str(),
            tenant,
            origin: request.origin,
            method: request.method,
            preflight: decision.preflight,
            reason: decision.reason.as_str(),
            matched: decision.matched_pattern(),
            policy_version: decision.policy_version,
            authority: request.authority,
            path: request.path,
        };
        write_line(&line);
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
            self.flush_dropped();
        }
    }

    /// Writes the dropped count now, if there is one.
    pub fn flush_dropped(&self) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let time = now();
            write_line(&Dropped {
                time: &time,
                target: TARGET,
                dropped,
            });
        }
    }
}

fn now() -> String {
    let mut time = String::with_capacity(32);
    let _ = SystemTime.format_time(&mut Writer::new(&mut time));
    time
}

/// One line, written whole with a single call, so lines from several
/// threads never interleave.
fn write_line(line: &impl Serialize) {
    let Ok(mut bytes) = serde_json::to_vec(line) else {
        return;
    };
    bytes.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&bytes);
}
