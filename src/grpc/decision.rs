//! The one path every decision takes, whichever API asked: the handlers build
//! a core [`Request`] from their own wire form and hand it here. This selects
//! the policy, decides with it, observes the decision, and lets the handler
//! encode the answer, all while one snapshot of the store is held.

use std::sync::Arc;
use std::time::Instant;

use crate::store::PolicyStore;

use super::{Snapshot, Store};
use crate::core::shadow::{Shadowed, compare};
use crate::core::{Change, Decision, Parsed, Request, TenantDecision, Verdict, decide_for_parsed, decide_parsed};
use crate::observe::denials::{DenialLog, ShadowLog};
use crate::observe::metrics::DecisionMetrics;
use crate::observe::{self, Api};

/// Decides requests with the policy in force.
#[derive(Debug, Clone)]
pub struct DecisionPath {
    store: Arc<Store>,
    metrics: Option<Arc<DecisionMetrics>>,
    denials: Option<Arc<DenialLog>>,
    /// The candidates (`--shadow-policy`), by tenant.
    shadow: Option<Arc<PolicyStore>>,
    shadow_log: Option<Arc<ShadowLog>>,
    /// Count each entry's allowed decisions (`--entry-usage`).
    usage: bool,
}

impl DecisionPath {
    /// A path deciding with `store`, counting nothing.
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_metrics(store, None)
    }

    /// A path deciding with `store` and counting into `metrics`.
    pub fn with_metrics(store: Arc<Store>, metrics: Option<Arc<DecisionMetrics>>) -> Self {
        DecisionPath {
            store,
            metrics,
            denials: None,
            shadow: None,
            shadow_log: None,
            usage: true,
        }
    }

    /// The same path, writing every denial to `log`.
    pub fn logging_denials(mut self, log: Option<Arc<DenialLog>>) -> Self {
        self.denials = log;
        self
    }

    /// The same path, deciding each request of a tenant that has a
    /// candidate in `shadow` again with it, and writing each change to `log`.
    pub fn shadowing(mut self, shadow: Option<Arc<PolicyStore>>, log: Option<Arc<ShadowLog>>) -> Self {
        self.shadow = shadow;
        self.shadow_log = log;
        self
    }

    /// The same path, counting each entry's allowed decisions or not.
    pub fn counting_usage(mut self, usage: bool) -> Self {
        self.usage = usage;
        self
    }

    /// The candidates, when there are any.
    pub fn shadow(&self) -> Option<&Arc<PolicyStore>> {
        self.shadow.as_ref()
    }

    /// The store decided with.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Decides `request`, asked through `api` for the tenant `named` (empty:
    /// by the target host), and returns what `answer` makes of the tenant,
    /// the decision, the snapshot that decided, if one did, and the tenant's
    /// candidate's decision, if it has one. Never waits: one lock-free load
    /// of the store (and one of the candidates).
    pub fn decide<R>(
        &self,
        api: Api,
        named: &str,
        request: &Request<'_>,
        answer: impl FnOnce(&str, &Decision<'_>, Option<&Snapshot>, Option<&Shadowed<'_>>) -> R,
    ) -> R {
        let started = self.metrics.as_ref().map(|_| Instant::now());
        let tenants = self.store.tenants();
        // Read once for the live policy and the candidate.
        let parsed = Parsed::of(request);
        let TenantDecision {
            tenant,
            decision,
            selected,
        } = decide_for_parsed(&tenants, named, request, &parsed);
        observe::decision(api, tenant, request, &decision);
        if let (Some(entry), Some(snapshot)) = (decision.matched, selected)
            && decision.verdict == Verdict::Allow
            && self.usage
        {
            snapshot.usage.hit(snapshot.policy.entries(), entry);
        }
        // Only what a live policy decided is shadowed.
        let candidates = self.shadow.as_ref().filter(|_| selected.is_some()).map(|s| s.tenants());
        let shadowed = candidates.as_ref().and_then(|c| c.get(tenant)).map(|candidate| {
            let shadow = decide_parsed(&candidate.policy, request, &parsed);
            Shadowed {
                change: compare(&decision, &shadow),
                decision: shadow,
            }
        });
        let answered = answer(tenant, &decision, selected, shadowed.as_ref());
        if let (Some(metrics), Some(started)) = (&self.metrics, started) {
            let counts = selected.map(|s| &*s.counts);
            metrics.record(api, decision.reason, counts, started.elapsed());
            if let Some(shadowed) = &shadowed {
                metrics.record_shadow(api, shadowed.change, counts);
            }
        }
        if let (Some(log), Some(shadowed)) = (&self.shadow_log, &shadowed)
            && shadowed.change != Change::Same
        {
            log.change(api, tenant, request, &decision, shadowed);
        }
        if let Some(log) = &self.denials
            && decision.verdict == Verdict::Deny
        {
            log.deny(api, tenant, request, &decision);
        }
        answered
    }
}
