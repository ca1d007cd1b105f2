//! The operator's Prometheus metrics (`/metrics`) and probes (`/healthz`,
//! `/readyz`).

use std::sync::Mutex;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `topic` (a Topic's status) or `cluster` (the node cluster's objects).
    pub kind: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<KindLabels, Counter>,
    pub reconcile_seconds: Family<KindLabels, Histogram>,
    pub partitions_without_leader: Gauge,
    pub under_replicated_partitions: Gauge,
    /// 1 while this replica holds the controller lock.
    pub leading: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("sluice_operator");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            partitions_without_leader: Gauge::default(),
            under_replicated_partitions: Gauge::default(),
            leading: Gauge::default(),
        };
        r.register("reconciles", "Reconciles, by kind", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconciles that failed, by kind",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "How long reconciles took, by kind",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "partitions_without_leader",
            "Partitions of Topics that have no leader",
            m.partitions_without_leader.clone(),
        );
        r.register(
            "under_replicated_partitions",
            "Partitions of Topics whose ISR is not every replica",
            m.under_replicated_partitions.clone(),
        );
        r.register(
            "leading",
            "1 while this replica is the active controller",
            m.leading.clone(),
        );
        *m.registry.lock().expect("registry") = r;
        m
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &str, took: Duration, ok: bool) {
        let l = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&l).inc();
        if !ok {
            self.reconcile_errors.get_or_create(&l).inc();
        }
        self.reconcile_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("registry"),
        )
        .expect("metrics encode");
        out
    }
}

/// `/metrics`, `/healthz` (the process runs) and `/readyz` (it reached the
/// API server and reads the cluster's metadata: a standby is ready too).
pub fn router(metrics: std::sync::Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
}
