//! Prometheus metrics (DESIGN.md section 9), through the `prometheus` crate,
//! which writes the classic text format that Prometheus scrapes and
//! `promtool check metrics` lints, and collects the process metrics.
//!
//! The decision path counts without a lock or a hash: every counter and
//! histogram handle (atomics inside) is resolved when the server starts, one
//! per API and reason. Gauges about the policies are set from the store at
//! each scrape.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::Api;
use crate::core::{Change, Reason};
use crate::store::{BATCH_BUCKETS, BatchResult, DecisionCounts, PolicyStore, Prepare, ReloadResult};
use crate::tls::TlsConfig;

/// Upper bounds of the duration buckets, in seconds: 1 us to 10 ms.
const BUCKETS: [f64; 13] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
];

/// The handles the decision path counts with, resolved once.
#[derive(Debug)]
pub struct DecisionMetrics {
    /// By API, then in [`Reason::ALL`] order; `None` with a tenant label,
    /// when each tenant's snapshot counts its own.
    decisions: Option<[[IntCounter; Reason::ALL.len()]; 2]>,
    /// With a tenant label: decisions no tenant's policy made.
    unselected: DecisionCounts,
    /// Shadow decisions by API, then in [`Change::ALL`] order; `None` with
    /// a tenant label.
    shadow: Option<[[IntCounter; Change::ALL.len()]; 2]>,
    durations: [Histogram; 2],
}

impl DecisionMetrics {
    /// Counts one decision and its handler time; `counts` are the deciding
    /// tenant's own (used with `--metrics-per-tenant`).
    pub fn record(&self, api: Api, reason: Reason, counts: Option<&DecisionCounts>, elapsed: Duration) {
        let api = api as usize;
        match &self.decisions {
            Some(decisions) => {
                if let Some(counter) = decisions.get(api).and_then(|by_reason| by_reason.get(reason as usize)) {
                    counter.inc();
                }
            }
            None => counts.unwrap_or(&self.unselected).count(api, reason as usize),
        }
        if let Some(histogram) = self.durations.get(api) {
            histogram.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts one shadow decision; `counts` as for [`record`](Self::record).
    pub fn record_shadow(&self, api: Api, change: Change, counts: Option<&DecisionCounts>) {
        let api = api as usize;
        match &self.shadow {
            Some(shadow) => {
                if let Some(counter) = shadow.get(api).and_then(|by_change| by_change.get(change as usize)) {
                    counter.inc();
                }
            }
            None => counts.unwrap_or(&self.unselected).count_shadow(api, change),
        }
    }
}

/// Every metric corsd serves, and the registry that gathers them.
#[derive(Debug)]
pub struct Metrics<P = ()> {
    registry: Registry,
    store: Arc<PolicyStore<P>>,
    decisions: Arc<DecisionMetrics>,
    tenants: IntGauge,
    entries: IntGauge,
    stale: IntGauge,
    last_reload: prometheus::Gauge,
    reloads: [IntCounter; 4],
    batches: [IntCounter; 3],
    rescans: IntCounter,
    restarts: IntCounter,
    ready: IntGauge,
    source_up: IntGauge,
    /// The serving certificate's notAfter, with TLS.
    certificate: Option<(Arc<TlsConfig>, prometheus::Gauge)>,
    /// With `--metrics-per-tenant`: the families the tenants' counts are
    /// copied into (decisions, shadow decisions).
    per_tenant: Option<(IntCounterVec, IntCounterVec)>,
    /// One scrape at a time copies counts, so two cannot both add the same
    /// difference. Scrapes only: the decision path never takes it. It holds
    /// the tenants in force at the last scrape, so the series of one that is
    /// gone since are removed.
    scraping: std::sync::Mutex<HashSet<String>>,
}

/// Why the metrics could not be set up: a name or label the registry refused.
pub type MetricsError = prometheus::Error;

impl<P: Prepare> Metrics<P> {
    /// Registers every metric; `store` is read at each scrape. With
    /// `per_tenant`, decisions carry a `tenant` label (`""` when no tenant's
    /// policy decided); mind the cardinality: one series per tenant, API and
    /// reason that occurred.
    pub fn new(store: Arc<PolicyStore<P>>, per_tenant: bool) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let labels: &[&str] = if per_tenant {
            &["api", "verdict", "reason", "tenant"]
        } else {
            &["api", "verdict", "reason"]
        };
        let decisions_vec = IntCounterVec::new(
            Opts::new("corsd_decisions_total", "Decisions made, by API, verdict and reason"),
            labels,
        )?;
        let durations_vec = HistogramVec::new(
            HistogramOpts::new(
                "corsd_decision_duration_seconds",
                "Time a handler took, from the request's bytes to the answer's",
            )
            .buckets(BUCKETS.to_vec()),
            &["api"],
        )?;
        let shadow_labels: &[&str] = if per_tenant {
            &["api", "change", "tenant"]
        } else {
            &["api", "change"]
        };
        let shadow_vec = IntCounterVec::new(
            Opts::new(
                "corsd_shadow_decisions_total",
                "Decisions made again by a tenant's candidate policy, by API and how the answer would change",
            ),
            shadow_labels,
        )?;
        let resolve = |api: Api| {
            Reason::ALL.map(|reason| {
                decisions_vec.with_label_values(&[api.as_str(), reason.verdict().as_str(), reason.as_str()])
            })
        };
        let decisions = Arc::new(DecisionMetrics {
            decisions: (!per_tenant).then(|| [resolve(Api::Corsd), resolve(Api::ExtAuthz)]),
            unselected: DecisionCounts::default(),
            shadow: (!per_tenant).then(|| {
                [Api::Corsd, Api::ExtAuthz]
                    .map(|api| Change::ALL.map(|change| shadow_vec.with_label_values(&[api.as_str(), change.as_str()])))
            }),
            durations: [Api::Corsd, Api::ExtAuthz].map(|api| durations_vec.with_label_values(&[api.as_str()])),
        });
        let reloads_vec = IntCounterVec::new(
            Opts::new("corsd_policy_reloads_total", "Policy reloads, by result"),
            &["result"],
        )?;
        let reloads = ReloadResult::ALL.map(|result| reloads_vec.with_label_values(&[result.as_str()]));
        let batches_vec = IntCounterVec::new(
            Opts::new(
                "corsd_policy_reload_batches_total",
                "Settled changes of a policy directory, each applied with one swap, by result",
            ),
            &["result"],
        )?;
        let batches = BatchResult::ALL.map(|result| batches_vec.with_label_values(&[result.as_str()]));
        let rescans = IntCounter::new(
            "corsd_policy_watch_rescans_total",
            "Full rescans of a policy directory (an event queue overflow, a replaced directory, the periodic sweep)",
        )?;
        let restarts = IntCounter::new(
            "corsd_policy_watch_restarts_total",
            "Reloaders that ended or panicked and were started again",
        )?;
        let ready = IntGauge::new("corsd_ready", "1 while gRPC health is SERVING, else 0")?;
        let source_up = IntGauge::new(
            "corsd_policy_source_up",
            "1 while the policy source answers (policy files always; etcd while a member does), else 0",
        )?;
        let tenants = IntGauge::new("corsd_tenants", "Tenants with a policy in force")?;
        let entries = IntGauge::new("corsd_policy_entries", "Allowlist entries in force, all tenants")?;
        let stale = IntGauge::new(
            "corsd_tenants_stale",
            "Tenants whose file on disk is not the policy in force",
        )?;
        let last_reload = prometheus::Gauge::new(
            "corsd_policy_last_reload_timestamp_seconds",
            "When a policy was last swapped in, as a Unix time",
        )?;
        let build = IntGaugeVec::new(
            Opts::new("corsd_build_info", "The running corsd's version"),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let per_tenant = per_tenant.then(|| (decisions_vec.clone(), shadow_vec.clone()));
        registry.register(Box::new(decisions_vec))?;
        registry.register(Box::new(shadow_vec))?;
        registry.register(Box::new(durations_vec))?;
        registry.register(Box::new(reloads_vec))?;
        registry.register(Box::new(batches_vec))?;
        registry.register(Box::new(rescans.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(source_up.clone()))?;
        registry.register(Box::new(tenants.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(last_reload.clone()))?;
        registry.register(Box::new(build))?;
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics {
            registry,
            store,
            decisions,
            tenants,
            entries,
            stale,
            last_reload,
            reloads,
            batches,
            rescans,
            restarts,
            ready,
            source_up,
            certificate: None,
            per_tenant,
            scraping: std::sync::Mutex::new(HashSet::new()),
        })
    }

    /// Also serves `counter`, counted by its owner (the audit log's
    /// `corsd_admin_writes_total`).
    pub fn with_counter(self, counter: IntCounterVec) -> Result<Self, MetricsError> {
        self.registry.register(Box::new(counter))?;
        Ok(self)
    }

    /// Also serves `corsd_tls_certificate_not_after_timestamp_seconds`, the
    /// notAfter of the certificate `tls` serves now.
    pub fn with_tls(mut self, tls: Arc<TlsConfig>) -> Result<Self, MetricsError> {
        let gauge = prometheus::Gauge::new(
            "corsd_tls_certificate_not_after_timestamp_seconds",
            "When the serving TLS certificate expires (its notAfter), as a Unix time",
        )?;
        self.registry.register(Box::new(gauge.clone()))?;
        self.certificate = Some((tls, gauge));
        Ok(self)
    }

    /// The handles the decision path counts with.
    pub fn decisions(&self) -> Arc<DecisionMetrics> {
        Arc::clone(&self.decisions)
    }

    /// The exposition in Prometheus' text format, with the policies' gauges
    /// read from the store now; `ready` is whether health is SERVING.
    pub fn encode(&self, ready: bool) -> Result<String, MetricsError> {
        self.ready.set(i64::from(ready));
        if let Some((tls, gauge)) = &self.certificate {
            gauge.set(tls.not_after_unix() as f64);
        }
        let mut exported = self.scraping.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tenants = self.store.tenants_full();
        let sorted = tenants.sorted();
        let entries: usize = sorted.iter().map(|(_, t)| t.policy.entries().len()).sum();
        self.tenants.set(i64::try_from(tenants.len()).unwrap_or(i64::MAX));
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.stale
            .set(i64::try_from(self.store.stale_count()).unwrap_or(i64::MAX));
        self.last_reload.set(self.store.last_swap_unix_ms() as f64 / 1000.0);
        if let Some((family, shadow_family)) = &self.per_tenant {
            let copy = |tenant: &str, counts: &DecisionCounts, more: Option<&DecisionCounts>| {
                for (api_index, api) in [Api::Corsd, Api::ExtAuthz].into_iter().enumerate() {
                    for change in Change::ALL {
                        let n = counts.shadow(api_index, change) + more.map_or(0, |m| m.shadow(api_index, change));
                        if n > 0 {
                            let counter = shadow_family.with_label_values(&[api.as_str(), change.as_str(), tenant]);
                            counter.inc_by(n.saturating_sub(counter.get()));
                        }
                    }
                    for (reason_index, reason) in Reason::ALL.into_iter().enumerate() {
                        let n =
                            counts.get(api_index, reason_index) + more.map_or(0, |m| m.get(api_index, reason_index));
                        if n == 0 {
                            continue;
                        }
                        let labels = [api.as_str(), reason.verdict().as_str(), reason.as_str(), tenant];
                        let counter = family.with_label_values(&labels);
                        counter.inc_by(n.saturating_sub(counter.get()));
                    }
                }
            };
            for (name, snapshot) in &sorted {
                if !name.is_empty() {
                    copy(name, &snapshot.counts, None);
                }
            }
            // A removed tenant's series go with it. The store keeps its
            // counts, so if it comes back its series does too, counting on.
            exported.retain(|name| {
                let present = tenants.get(name).is_some();
                if !present {
                    for api in [Api::Corsd, Api::ExtAuthz] {
                        for reason in Reason::ALL {
                            let labels = [api.as_str(), reason.verdict().as_str(), reason.as_str(), name.as_str()];
                            let _ = family.remove_label_values(&labels);
                        }
                        for change in Change::ALL {
                            let _ = shadow_family.remove_label_values(&[api.as_str(), change.as_str(), name.as_str()]);
                        }
                    }
                }
                present
            });
            exported.extend(
                sorted
                    .iter()
                    .map(|(name, _)| (*name).to_owned())
                    .filter(|n| !n.is_empty()),
            );
            // Tenant "" is single mode's policy and the decisions no tenant's
            // policy made: one series, both counts.
            let single = tenants.get("").map(|s| Arc::clone(&s.counts));
            copy("", &self.decisions.unselected, single.as_deref());
        }
        for (counter, result) in self.reloads.iter().zip(ReloadResult::ALL) {
            let behind = self.store.reload_count(result).saturating_sub(counter.get());
            counter.inc_by(behind);
        }
        let stats = self.store.reload_stats();
        self.source_up.set(i64::from(stats.source_up()));
        for (counter, result) in self.batches.iter().zip(BatchResult::ALL) {
            counter.inc_by(stats.batches(result).saturating_sub(counter.get()));
        }
        self.rescans.inc_by(stats.rescans().saturating_sub(self.rescans.get()));
        self.restarts
            .inc_by(stats.restarts().saturating_sub(self.restarts.get()));
        let mut families = self.registry.gather();
        families.push(batch_seconds(&self.store));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = Vec::new();
        prometheus::TextEncoder::new().encode(&families, &mut text)?;
        String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// `corsd_policy_reload_batch_seconds`, from the reloaders' bucket counts.
fn batch_seconds<P: Prepare>(store: &PolicyStore<P>) -> prometheus::proto::MetricFamily {
    use prometheus::proto::{Bucket, Histogram as Proto, Metric, MetricFamily, MetricType};
    let (counts, sum) = store.reload_stats().batch_times();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(BATCH_BUCKETS.len());
    for (&le, &count) in BATCH_BUCKETS.iter().zip(&counts) {
        cumulative += count;
        let mut bucket = Bucket::default();
        bucket.set_upper_bound(le);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    let total: u64 = counts.iter().sum();
    let mut histogram = Proto::default();
    histogram.set_bucket(buckets);
    histogram.set_sample_count(total);
    histogram.set_sample_sum(sum);
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    let mut family = MetricFamily::default();
    family.set_name("corsd_policy_reload_batch_seconds".to_owned());
    family.set_help("Time from a policy directory change's first event to its swap".to_owned());
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(vec![metric]);
    family
}

/// The Content-Type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;
