//! The audit log of admin writes (DESIGN.md section 17): one JSON line on
//! stderr (target `corsd::audit`) for every `PolicyAdmin` call that writes
//! or is refused, whatever `--log-format` says, and
//! `corsd_admin_writes_total{call, result}`. Writes are rare and every line
//! matters, so lines are written whole and at once, never dropped.

use std::io::Write;

use prometheus::{IntCounterVec, Opts};
use serde::Serialize;
use tonic::Code;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// The log's target, named in every line.
pub const TARGET: &str = "corsd::audit";

/// The audit log and its counter.
#[derive(Debug, Clone)]
pub struct AuditLog {
    writes: IntCounterVec,
}

/// One audited call.
#[derive(Debug, Serialize)]
pub struct Audited<'a> {
    /// `none`, `admin-token`, `admin-san:NAME` or `tenant-token:NAME`.
    pub caller: &'a str,
    /// The tenant the call is about.
    pub tenant: &'a str,
    /// `PutPolicy`, `AddEntry`...
    pub call: &'static str,
    /// The entry calls' origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<&'a str>,
    /// The version before; empty where none.
    pub old_version: &'a str,
    /// The version after; empty where none.
    pub new_version: &'a str,
    /// `ok`, or the gRPC code in lower snake case.
    pub result: &'static str,
}

#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    target: &'static str,
    #[serde(flatten)]
    audited: &'a Audited<'a>,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditLog {
    /// A log whose counter is not registered yet ([`AuditLog::counter`]).
    pub fn new() -> Self {
        let writes = IntCounterVec::new(
            Opts::new(
                "corsd_admin_writes_total",
                "PolicyAdmin calls that wrote or were refused, by call and result",
            ),
            &["call", "result"],
        )
        .unwrap_or_else(|e| unreachable!("a fixed metric name and labels: {e}"));
        AuditLog { writes }
    }

    /// The counter, for a metrics registry.
    pub fn counter(&self) -> IntCounterVec {
        self.writes.clone()
    }

    /// Writes `audited`'s line and counts it.
    pub fn record(&self, audited: &Audited<'_>) {
        self.writes.with_label_values(&[audited.call, audited.result]).inc();
        let mut time = String::with_capacity(32);
        let _ = SystemTime.format_time(&mut Writer::new(&mut time));
        let line = Line {
            time: &time,
            target: TARGET,
            audited,
        };
        if let Ok(mut bytes) = serde_json::to_vec(&line) {
            bytes.push(b'\n');
            let _ = std::io::stderr().lock().write_all(&bytes);
        }
    }
}

/// A result as the audit log and the metric write it.
pub fn result_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
