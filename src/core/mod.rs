//! The pure core of corsd: origin grammar, allowlist index, policy file and
//! decisions, and their compilation into Envoy's own filters. Synchronous and free of I/O: no files, sockets, runtimes or
//! logging here; the service and the command line are shells around it.

pub mod allowlist;
pub mod decide;
pub mod fetch;
pub mod native;
pub mod origin;
pub mod pattern;
pub mod policy;
mod request_headers;
pub mod shadow;
pub mod tenants;

pub use decide::{
    Answer, Decision, HeaderName, Parsed, Reason, Request, ResponseHeader, Verdict, decide, decide_parsed,
};
pub use pattern::{OriginPattern, PatternError};
pub use policy::{Compiled, Diagnostic, Entry, Policy, PolicyError, Severity};
pub use shadow::Change;
pub use tenants::{Selection, TenantDecision, TenantSet, decide_for, decide_for_parsed, is_tenant_name};
