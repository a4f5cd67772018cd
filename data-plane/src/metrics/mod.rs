//! Every Prometheus metric of the data plane, registered in one place.
//!
//! The reload metrics keep the exact names existing alert rules use (`config_reload_success_total`,
//! `config_reload_failure_total`, `config_generation`). Request metrics ([`requests`]) are
//! resolved into per-placement handles when a table is built and sharded per proxy worker, so
//! serving a request adds to atomics on its own core's cache lines: no label hashing, no lock.

pub mod requests;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::provenance::Source;
pub use requests::{PlacementMetrics, ProxyError, RequestMetrics};

/// Labels of `config_active_source`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `file`, `control-plane`, `cache` or `rollback`.
    pub source: String,
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
    requests: Arc<RequestMetrics>,
    /// Requests answered 503 because no table was active.
    pub no_table: Counter,
    /// Snapshots written to the last-known-good cache.
    pub cache_writes: Counter,
    /// Failed cache writes (disk full, I/O errors); the data plane kept serving from memory.
    pub cache_write_failures: Counter,
    /// Cache files refused at startup (damaged, invalid).
    pub cache_load_failures: Counter,
    /// 1 while a control-plane session is open.
    pub control_plane_connected: Gauge,
    /// Unix time of the last message from the control plane.
    pub control_plane_last_contact: Gauge<f64, AtomicU64>,
    /// Seconds since the last message from the control plane (updated at scrape time).
    pub control_plane_contact_age: Gauge<f64, AtomicU64>,
    /// 1 when the control plane reported the subscribed RoutingConfig deleted or unknown.
    pub orphaned: Gauge,
    /// Snapshots received from the control plane.
    pub snapshots_received: Counter,
    /// Deltas received from the control plane (each also counts as a snapshot received).
    pub deltas_received: Counter,
    /// Deltas applied: versions that arrived as changes, not as a whole table.
    pub deltas_applied: Counter,
    /// Deltas applied by patching the active table (shared customer map, hash and routing index
    /// updated for the changed customers) rather than rebuilding it.
    pub deltas_patched: Counter,
    /// Snapshots acknowledged (applied or already active).
    pub snapshot_acks: Counter,
    /// Snapshots refused (NACK).
    pub snapshot_nacks: Counter,
    /// Snapshots a newer one replaced before they could be applied (answered with a NACK that
    /// says so; not counted in `snapshot_nacks`).
    pub snapshots_superseded: Counter,
    /// Sessions opened with the control plane (the first and every reconnect).
    pub control_plane_sessions: Counter,
}

impl Metrics {
    /// Registers every metric, with request metrics for one proxy worker.
    pub fn new() -> Arc<Self> {
        Self::with_workers(1)
    }

    /// Registers every metric, with request metrics sharded for `workers` proxy workers.
    pub fn with_workers(workers: usize) -> Arc<Self> {
        let mut registry = Registry::default();
        let reload_success = Counter::default();
        let reload_failure = Counter::default();
        let generation = Gauge::default();
        let last_success = Gauge::<f64, AtomicU64>::default();
        let last_failure = Gauge::<f64, AtomicU64>::default();
        let active_source = Family::<SourceLabels, Gauge>::default();
        let customers = Gauge::default();
        let no_table = Counter::default();
        let requests = Arc::new(RequestMetrics::new(workers, no_table.clone()));
        let cache_writes = Counter::default();
        let cache_write_failures = Counter::default();
        let cache_load_failures = Counter::default();
        let control_plane_connected = Gauge::default();
        let control_plane_last_contact = Gauge::<f64, AtomicU64>::default();
        let control_plane_contact_age = Gauge::<f64, AtomicU64>::default();
        let orphaned = Gauge::default();
        let snapshots_received = Counter::default();
        let snapshot_acks = Counter::default();
        let deltas_received = Counter::default();
        let deltas_applied = Counter::default();
        let deltas_patched = Counter::default();
        let snapshot_nacks = Counter::default();
        let snapshots_superseded = Counter::default();
        let control_plane_sessions = Counter::default();
        registry.register(
            "cellroute_cache_writes",
            "Snapshots written to the last-known-good cache",
            cache_writes.clone(),
        );
        registry.register(
            "cellroute_cache_write_failures",
            "Failed last-known-good cache writes; the data plane kept serving from memory",
            cache_write_failures.clone(),
        );
        registry.register(
            "cellroute_cache_load_failures",
            "Last-known-good cache files refused at startup (damaged or invalid)",
            cache_load_failures.clone(),
        );
        registry.register(
            "control_plane_connected",
            "1 while a session with the control plane is open",
            control_plane_connected.clone(),
        );
        registry.register(
            "control_plane_last_contact_timestamp_seconds",
            "Unix time of the last message from the control plane",
            control_plane_last_contact.clone(),
        );
        registry.register(
            "control_plane_seconds_since_contact",
            "Seconds since the last message from the control plane",
            control_plane_contact_age.clone(),
        );
        registry.register(
            "routing_config_orphaned",
            "1 when the control plane reports the subscribed RoutingConfig deleted or unknown; the last-known-good table keeps serving",
            orphaned.clone(),
        );
        registry.register(
            "cellroute_snapshots_received",
            "Snapshots received from the control plane",
            snapshots_received.clone(),
        );
        registry.register(
            "cellroute_deltas_received",
            "Versions received from the control plane as deltas (the changes from a version this data plane has)",
            deltas_received.clone(),
        );
        registry.register(
            "cellroute_deltas_applied",
            "Deltas applied; the others were answered with a NACK asking for the full snapshot",
            deltas_applied.clone(),
        );
        registry.register(
            "cellroute_deltas_patched",
            "Deltas applied by patching the active table; the other applied deltas (a placement changed, or many customers since the last rebuild) rebuilt it",
            deltas_patched.clone(),
        );
        registry.register(
            "cellroute_snapshot_acks",
            "Snapshots acknowledged to the control plane",
            snapshot_acks.clone(),
        );
        registry.register(
            "cellroute_snapshot_nacks",
            "Snapshots refused (NACK) to the control plane",
            snapshot_nacks.clone(),
        );
        registry.register(
            "cellroute_snapshots_superseded",
            "Snapshots a newer one replaced before they could be applied (NACKed as superseded)",
            snapshots_superseded.clone(),
        );
        registry.register(
            "control_plane_sessions",
            "Sessions opened with the control plane (first connect and reconnects)",
            control_plane_sessions.clone(),
        );
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
        // cellroute_requests_total, cellroute_proxy_errors_total and
        // cellroute_upstream_request_duration_seconds: summed over the workers' shards.
        registry.register_collector(Box::new(requests.clone()));
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
            no_table,
            cache_writes,
            cache_write_failures,
            cache_load_failures,
            control_plane_connected,
            control_plane_last_contact,
            control_plane_contact_age,
            orphaned,
            snapshots_received,
            snapshot_acks,
            deltas_received,
            deltas_applied,
            deltas_patched,
            snapshot_nacks,
            snapshots_superseded,
            control_plane_sessions,
        })
    }

    /// Resolves the request metric handles of one placement.
    pub fn placement(&self, placement: &str) -> PlacementMetrics {
        self.requests.placement(placement)
    }

    /// Requests and 5xx answers so far, per placement, for health reports.
    pub fn request_health(
        &self,
    ) -> std::collections::BTreeMap<String, routing_model::protocol::PlacementHealth> {
        self.requests.health()
    }

    /// Proxy workers the request metrics are sharded for.
    pub fn workers(&self) -> usize {
        self.requests.workers()
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
