//! The one path every decision takes, whichever API asked: the handlers build
//! a core [`Request`] from their own wire form and hand it here. This selects
//! the policy, decides with it, observes the decision, and lets the handler
//! encode the answer, all while one snapshot of the store is held.

use std::sync::Arc;
use std::time::Instant;

use super::{Snapshot, Store};
use crate::core::Verdict;
use crate::core::{Decision, Request, TenantDecision, decide_for};
use crate::observe::denials::DenialLog;
use crate::observe::metrics::DecisionMetrics;
use crate::observe::{self, Api};

/// Decides requests with the policy in force.
#[derive(Debug, Clone)]
pub struct DecisionPath {
    store: Arc<Store>,
    metrics: Option<Arc<DecisionMetrics>>,
    denials: Option<Arc<DenialLog>>,
}

impl DecisionPath {
    /// A path deciding with `store`, counting nothing.
    pub fn new(store: Arc<Store>) -> Self {
        DecisionPath {
            store,
            metrics: None,
            denials: None,
        }
    }

    /// A path deciding with `store` and counting into `metrics`.
    pub fn with_metrics(store: Arc<Store>, metrics: Option<Arc<DecisionMetrics>>) -> Self {
        DecisionPath {
            store,
            metrics,
            denials: None,
        }
    }

    /// The same path, writing every denial to `log`.
    pub fn logging_denials(mut self, log: Option<Arc<DenialLog>>) -> Self {
        self.denials = log;
        self
    }

    /// The store decided with.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Decides `request`, asked through `api` for the tenant `named` (empty:
    /// by the target host), and returns what `answer` makes of the tenant,
    /// the decision and the snapshot that decided, if one did. Never waits:
    /// one lock-free load of the store.
    pub fn decide<R>(
        &self,
        api: Api,
        named: &str,
        request: &Request<'_>,
        answer: impl FnOnce(&str, &Decision<'_>, Option<&Snapshot>) -> R,
    ) -> R {
        let started = self.metrics.as_ref().map(|_| Instant::now());
        let tenants = self.store.tenants();
        let TenantDecision {
            tenant,
            decision,
            selected,
        } = decide_for(&tenants, named, request);
        observe::decision(api, tenant, request, &decision);
        let answered = answer(tenant, &decision, selected);
        if let (Some(metrics), Some(started)) = (&self.metrics, started) {
            metrics.record(api, decision.reason, selected.map(|s| &*s.counts), started.elapsed());
        }
        if let Some(log) = &self.denials
            && decision.verdict == Verdict::Deny
        {
            log.deny(api, tenant, request, &decision);
        }
        answered
    }
}
