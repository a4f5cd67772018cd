//! Every Prometheus metric of the data plane, registered in one place.
//!
//! The reload metrics keep the exact names existing alert rules use (`config_reload_success_total`,
//! `config_reload_failure_total`, `config_generation`). Request metrics are resolved into
//! per-placement handles when a table is built, so serving a request only bumps atomics and
//! never hashes a label set.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::Source;

/// Labels of `config_active_source`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `file`, `control-plane`, `cache` or `rollback`.
    pub source: String,
}

/// Labels of `cellroute_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Placement the request was routed to.
    pub placement: String,
    /// `1xx` .. `5xx`.
    pub status_class: String,
}

/// Labels of per-placement metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    /// Placement name.
    pub placement: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// All metrics, plus the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Successful reloads that changed the table.
    pub reload_success: Counter,
    /// Reloads rejected (unreadable, unparsable or invalid input, or a failed build).
    pub reload_failure: Counter,
    /// Generation of the active table; rises on every applied change.
    pub generation: Gauge,
    /// Unix time of the last applied change.
    pub last_success: Gauge<f64, AtomicU64>,
    /// Unix time of the last rejected change.
    pub last_failure: Gauge<f64, AtomicU64>,
    /// 1 for the source of the active table, 0 for the others.
    pub active_source: Family<SourceLabels, Gauge>,
    /// Customers in the active table.
    pub customers: Gauge,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: Family<PlacementLabels, Histogram, fn() -> Histogram>,
    /// Requests answered 503 because no table was active.
    pub no_table: Counter,
}

/// Request metric handles of one placement, resolved once per table build.
#[derive(Debug, Clone)]
pub struct PlacementMetrics {
    by_class: [Counter; 5],
    latency: Histogram,
}

impl PlacementMetrics {
    /// Records one finished request.
    #[inline]
    pub fn record(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.latency.observe(seconds);
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let reload_success = Counter::default();
        let reload_failure = Counter::default();
        let generation = Gauge::default();
        let last_success = Gauge::<f64, AtomicU64>::default();
        let last_failure = Gauge::<f64, AtomicU64>::default();
        let active_source = Family::<SourceLabels, Gauge>::default();
        let customers = Gauge::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_latency = Family::<PlacementLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let no_table = Counter::default();
        registry.register(
            "config_reload_success",
            "Config changes applied (identical content is not counted)",
            reload_success.clone(),
        );
        registry.register(
            "config_reload_failure",
            "Config changes rejected; the previous table stayed active",
            reload_failure.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the active routing table; rises on every applied change",
            generation.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last applied change",
            last_success.clone(),
        );
        registry.register(
            "config_last_reload_failure_timestamp_seconds",
            "Unix time of the last rejected change",
            last_failure.clone(),
        );
        registry.register(
            "config_active_source",
            "1 for the source of the active routing table",
            active_source.clone(),
        );
        registry.register(
            "config_customers",
            "Customers with an explicit placement in the active table",
            customers.clone(),
        );
        registry.register(
            "cellroute_requests",
            "Proxied requests by placement and response status class",
            requests.clone(),
        );
        registry.register(
            "cellroute_upstream_request_duration_seconds",
            "Time from forwarding a request to receiving the upstream's response headers",
            upstream_latency.clone(),
        );
        registry.register(
            "cellroute_no_table_requests",
            "Requests answered 503 because no routing table was active",
            no_table.clone(),
        );
        Arc::new(Self {
            registry,
            reload_success,
            reload_failure,
            generation,
            last_success,
            last_failure,
            active_source,
            customers,
            requests,
            upstream_latency,
            no_table,
        })
    }

    /// Resolves the request metric handles of one placement.
    pub fn placement(&self, placement: &str) -> PlacementMetrics {
        let class = |c: &str| {
            self.requests
                .get_or_create(&RequestLabels {
                    placement: placement.to_owned(),
                    status_class: c.to_owned(),
                })
                .clone()
        };
        PlacementMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            latency: self
                .upstream_latency
                .get_or_create(&PlacementLabels {
                    placement: placement.to_owned(),
                })
                .clone(),
        }
    }

    /// Marks `source` as the active one.
    pub fn set_active_source(&self, active: Source) {
        for s in Source::ALL {
            let value = i64::from(s == active);
            self.active_source
                .get_or_create(&SourceLabels {
                    source: s.as_str().to_owned(),
                })
                .set(value);
        }
    }

    /// Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode metrics");
        out
    }
}
