//! The one path every decision takes, whichever API asked: the handlers build
//! a core [`Request`] from their own wire form and hand it here. This selects
//! the policy, decides with it, observes the decision, and lets the handler
//! encode the answer, all while one snapshot of the store is held.

use std::sync::Arc;

use crate::core::{Decision, Request, decide};
use crate::observe::{self, Api};
use crate::store::PolicyStore;

/// Decides requests with the policy in force.
#[derive(Debug, Clone)]
pub struct DecisionPath {
    store: Arc<PolicyStore>,
}

impl DecisionPath {
    /// A path deciding with `store`.
    pub fn new(store: Arc<PolicyStore>) -> Self {
        DecisionPath { store }
    }

    /// The store decided with.
    pub fn store(&self) -> &Arc<PolicyStore> {
        &self.store
    }

    /// Decides `request`, asked through `api`, and returns what `answer`
    /// makes of the decision. Never waits: one lock-free load of the store.
    pub fn decide<R>(&self, api: Api, request: &Request<'_>, answer: impl FnOnce(&Decision<'_>) -> R) -> R {
        let snapshot = self.store.load();
        let decision = decide(&snapshot.policy, request);
        observe::decision(api, request, &decision);
        answer(&decision)
    }
}
