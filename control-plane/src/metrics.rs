//! The control plane's Prometheus metrics, registered in one place.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Outcome of one reconcile (or one file reload).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileResult {
    /// A new version is served.
    Accepted,
    /// The version failed validation; the previous one is still served.
    Rejected,
    /// Nothing new.
    Unchanged,
    /// The reconcile failed (for example a status write) and is retried.
    Error,
}

impl ReconcileResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Unchanged => "unchanged",
            Self::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// All metrics, plus the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    /// Versions rejected by validation.
    pub validation_failures: Counter,
    /// Time to validate and build one snapshot.
    pub snapshot_build: Histogram,
    /// Status subresource writes.
    pub status_writes: Counter,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Data planes with an open session on this replica.
    pub connected_data_planes: Gauge,
    /// Snapshots sent to data planes.
    pub pushes: Counter,
    /// ACKs received.
    pub acks: Counter,
    /// NACKs received.
    pub nacks: Counter,
    /// From a version's acceptance to each data plane's ACK of it.
    pub convergence: Histogram,
    /// Time to encode one snapshot message (once per version, shared by all subscribers).
    pub snapshot_encode: Histogram,
    /// Time to compute and encode one version's delta from the version before (once per version).
    pub delta_encode: Histogram,
    /// Size of the last encoded snapshot message.
    pub snapshot_bytes: Gauge,
    /// Size of the same message gzip-compressed (what data planes with `gzip` receive).
    pub snapshot_compressed_bytes: Gauge,
    /// Size of the last delta message (the changes from the version before).
    pub delta_bytes: Gauge,
    /// Versions sent as deltas (each also counts in `pushes`).
    pub delta_pushes: Counter,
    /// Deltas a data plane could not apply and answered asking for the full snapshot.
    pub delta_resyncs: Counter,
    refused: Family<ReasonLabels, Counter>,
    /// Data-plane sessions that panicked (caught at the session boundary).
    pub session_panics: Counter,
    protocol_errors: Family<KindLabels, Counter>,
    token_reviews: Family<ResultLabels, Counter>,
    /// Data-plane connections authenticated from the TokenReview cache (no apiserver call).
    pub token_review_cache_hits: Counter,
    /// Snapshots not sent because they exceed the limit a data plane announced.
    pub too_large: Counter,
    /// Data planes known to this replica, by sync state (refreshed at scrape time).
    pub data_planes: Family<StateLabels, Gauge>,
    injections: Family<ResultLabels, Counter>,
    /// When the injector's serving certificate expires (Unix seconds).
    pub inject_certificate_expiry: Gauge,
    /// Serving certificates this replica made for the injector.
    pub inject_certificate_renewals: Counter,
    untrusted_status: Family<ReasonLabels, Counter>,
    rollout_phase: Family<RolloutPhaseLabels, Gauge>,
    rollout_step: Family<ObjectLabels, Gauge>,
    rollout_percent: Family<ObjectLabels, Gauge>,
    rollout_halts: Family<HaltLabels, Counter>,
    /// Leases of dead replicas deleted by this replica while it led.
    pub replica_leases_deleted: Counter,
    /// `/debug/*` requests refused (a non-loopback peer without the debug token).
    pub debug_refused: Counter,
}

/// Labels of `cellroute_data_planes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `synced`, `stale`, `rejected`, `orphaned` or `disconnected`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    routing_config: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutPhaseLabels {
    routing_config: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HaltLabels {
    routing_config: String,
    reason: String,
}

/// Every phase a rollout can be in, as `cellroute_rollout_phase` labels them.
const ROLLOUT_PHASES: [routing_model::crd::RolloutPhase; 5] = [
    routing_model::crd::RolloutPhase::Progressing,
    routing_model::crd::RolloutPhase::Paused,
    routing_model::crd::RolloutPhase::Halted,
    routing_model::crd::RolloutPhase::Aborted,
    routing_model::crd::RolloutPhase::Complete,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        let validation_failures = Counter::default();
        let snapshot_build = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let status_writes = Counter::default();
        let leader = Gauge::default();
        let connected_data_planes = Gauge::default();
        let pushes = Counter::default();
        let delta_bytes = Gauge::default();
        let delta_pushes = Counter::default();
        let delta_resyncs = Counter::default();
        let acks = Counter::default();
        let nacks = Counter::default();
        let convergence = Histogram::new(exponential_buckets(0.0005, 2.0, 18));
        let snapshot_encode = Histogram::new(exponential_buckets(0.00005, 2.0, 18));
        let delta_encode = Histogram::new(exponential_buckets(0.00005, 2.0, 18));
        let snapshot_bytes = Gauge::default();
        let snapshot_compressed_bytes = Gauge::default();
        let refused = Family::<ReasonLabels, Counter>::default();
        let data_planes = Family::<StateLabels, Gauge>::default();
        let untrusted_status = Family::<ReasonLabels, Counter>::default();
        let replica_leases_deleted = Counter::default();
        let rollout_phase = Family::<RolloutPhaseLabels, Gauge>::default();
        let rollout_step = Family::<ObjectLabels, Gauge>::default();
        let rollout_percent = Family::<ObjectLabels, Gauge>::default();
        let rollout_halts = Family::<HaltLabels, Counter>::default();
        registry.register(
            "cellroute_rollout_phase",
            "1 for the phase the staged rollout of a RoutingConfig's newest table is in (Progressing, Paused, Halted, Aborted, Complete), 0 for the others",
            rollout_phase.clone(),
        );
        registry.register(
            "cellroute_rollout_step",
            "The step a RoutingConfig's staged rollout runs (1 for the first; steps + 1 once complete)",
            rollout_step.clone(),
        );
        registry.register(
            "cellroute_rollout_percent",
            "Share of data planes a RoutingConfig's staged rollout serves the new table to",
            rollout_percent.clone(),
        );
        registry.register(
            "cellroute_rollout_halts",
            "Staged rollouts stopped by the leader, by reason: nacks, errors (the error ratio of a placement), aborted (by the user)",
            rollout_halts.clone(),
        );
        registry.register(
            "cellroute_untrusted_status",
            "Served specs recorded in a RoutingConfig status that were refused (not signed by this control plane, or not an earlier generation), by reason",
            untrusted_status.clone(),
        );
        registry.register(
            "cellroute_replica_leases_deleted",
            "Leases of dead control-plane replicas deleted by the leader",
            replica_leases_deleted.clone(),
        );
        let session_panics = Counter::default();
        let protocol_errors = Family::<KindLabels, Counter>::default();
        let token_reviews = Family::<ResultLabels, Counter>::default();
        let token_review_cache_hits = Counter::default();
        let too_large = Counter::default();
        let debug_refused = Counter::default();
        registry.register(
            "cellroute_debug_requests_refused",
            "Requests for /debug/* refused: a peer not on loopback without the --debug-token-file token",
            debug_refused.clone(),
        );
        registry.register(
            "cellroute_session_panics",
            "Data-plane sessions that panicked; each was closed and its record marked disconnected",
            session_panics.clone(),
        );
        registry.register(
            "cellroute_protocol_errors",
            "Messages from data planes that break the protocol, by kind (unreadable, binary, oversized, ack-not-sent, ack-replayed, nack-not-sent, nack-replayed, ...)",
            protocol_errors.clone(),
        );
        registry.register(
            "cellroute_token_reviews",
            "TokenReviews sent to the apiserver, by result (authenticated, unauthenticated, wrong-audience, not-a-service-account, error)",
            token_reviews.clone(),
        );
        registry.register(
            "cellroute_token_review_cache_hits",
            "Data-plane tokens authenticated from the TokenReview cache, without asking the apiserver",
            token_review_cache_hits.clone(),
        );
        registry.register(
            "cellroute_snapshots_too_large",
            "Snapshots not sent to a data plane because they exceed the limit it announced (a too-large notice went instead)",
            too_large.clone(),
        );
        registry.register(
            "cellroute_data_planes",
            "Data planes known to this replica by state against the served snapshot (synced, stale, rejected, orphaned, disconnected)",
            data_planes.clone(),
        );
        registry.register(
            "cellroute_connected_data_planes",
            "Data planes with an open session on this replica",
            connected_data_planes.clone(),
        );
        registry.register(
            "cellroute_snapshot_pushes",
            "Snapshots sent to data planes, whole or as deltas",
            pushes.clone(),
        );
        registry.register(
            "cellroute_delta_pushes",
            "Versions sent to data planes as deltas (the changes from a version they have)",
            delta_pushes.clone(),
        );
        registry.register(
            "cellroute_delta_resyncs",
            "Deltas a data plane could not apply, answered with the full snapshot",
            delta_resyncs.clone(),
        );
        registry.register(
            "cellroute_delta_bytes",
            "Size of the last delta message",
            delta_bytes.clone(),
        );
        registry.register(
            "cellroute_snapshot_acks",
            "Snapshot ACKs received from data planes",
            acks.clone(),
        );
        registry.register(
            "cellroute_snapshot_nacks",
            "Snapshot NACKs received from data planes",
            nacks.clone(),
        );
        registry.register(
            "cellroute_convergence_seconds",
            "From a version's acceptance to a data plane's ACK of it",
            convergence.clone(),
        );
        registry.register(
            "cellroute_snapshot_encode_seconds",
            "Time to encode one snapshot message, JSON and gzip (once per version, when a data plane needs the whole table)",
            snapshot_encode.clone(),
        );
        registry.register(
            "cellroute_delta_encode_seconds",
            "Time to compute and encode the delta of a version from the one before (once per version)",
            delta_encode.clone(),
        );
        registry.register(
            "cellroute_snapshot_bytes",
            "Size of the last encoded snapshot message",
            snapshot_bytes.clone(),
        );
        registry.register(
            "cellroute_snapshot_compressed_bytes",
            "Size of the last snapshot message gzip-compressed (sent to data planes that negotiated gzip)",
            snapshot_compressed_bytes.clone(),
        );
        registry.register(
            "cellroute_refused_connections",
            "Data-plane connections refused, by reason",
            refused.clone(),
        );
        registry.register(
            "cellroute_reconciles",
            "RoutingConfig versions processed, by result (accepted, rejected, unchanged, error)",
            reconciles.clone(),
        );
        registry.register(
            "cellroute_validation_failures",
            "RoutingConfig versions rejected by validation",
            validation_failures.clone(),
        );
        registry.register(
            "cellroute_snapshot_build_seconds",
            "Time to validate and build one snapshot",
            snapshot_build.clone(),
        );
        registry.register(
            "cellroute_status_writes",
            "RoutingConfig status writes (skipped when nothing changed)",
            status_writes.clone(),
        );
        let injections = Family::<ResultLabels, Counter>::default();
        let inject_certificate_expiry = Gauge::default();
        let inject_certificate_renewals = Counter::default();
        registry.register(
            "cellroute_injections",
            "Pods seen by the sidecar injector, by result (injected, not_requested, opted_out, already_injected, host_network, out_of_scope, denied, error)",
            injections.clone(),
        );
        registry.register(
            "cellroute_inject_certificate_expiry_timestamp_seconds",
            "When the injector's serving certificate expires (Unix time)",
            inject_certificate_expiry.clone(),
        );
        registry.register(
            "cellroute_inject_certificate_renewals",
            "Serving certificates this replica made for the injector",
            inject_certificate_renewals.clone(),
        );
        registry.register(
            "cellroute_leader",
            "1 while this replica holds the leader lease and writes status",
            leader.clone(),
        );
        Arc::new(Self {
            registry,
            reconciles,
            validation_failures,
            snapshot_build,
            status_writes,
            leader,
            connected_data_planes,
            pushes,
            delta_bytes,
            delta_pushes,
            delta_resyncs,
            acks,
            nacks,
            convergence,
            snapshot_encode,
            delta_encode,
            snapshot_bytes,
            snapshot_compressed_bytes,
            refused,
            session_panics,
            protocol_errors,
            token_reviews,
            token_review_cache_hits,
            too_large,
            data_planes,
            injections,
            inject_certificate_expiry,
            inject_certificate_renewals,
            untrusted_status,
            rollout_phase,
            rollout_step,
            rollout_percent,
            rollout_halts,
            replica_leases_deleted,
            debug_refused,
        })
    }

    /// Reports where the rollout of `routing_config` stands (`None`: it has none).
    pub fn rollout(&self, routing_config: &str, rollout: Option<&routing_model::crd::RolloutStatus>) {
        let object = ObjectLabels {
            routing_config: routing_config.to_owned(),
        };
        let Some(r) = rollout else {
            self.forget_rollout(routing_config);
            return;
        };
        for phase in ROLLOUT_PHASES {
            let labels = RolloutPhaseLabels {
                routing_config: routing_config.to_owned(),
                phase: format!("{phase:?}"),
            };
            self.rollout_phase
                .get_or_create(&labels)
                .set(i64::from(phase == r.phase));
        }
        self.rollout_step.get_or_create(&object).set(r.step);
        self.rollout_percent.get_or_create(&object).set(r.percent);
    }

    /// Drops the rollout series of a RoutingConfig that is gone.
    pub fn forget_rollout(&self, routing_config: &str) {
        let object = ObjectLabels {
            routing_config: routing_config.to_owned(),
        };
        for phase in ROLLOUT_PHASES {
            self.rollout_phase.remove(&RolloutPhaseLabels {
                routing_config: routing_config.to_owned(),
                phase: format!("{phase:?}"),
            });
        }
        self.rollout_step.remove(&object);
        self.rollout_percent.remove(&object);
    }

    /// Counts a rollout the leader stopped, for `reason`: `nacks`, `errors` or `aborted`.
    pub fn rollout_halted(&self, routing_config: &str, reason: &str) {
        self.rollout_halts
            .get_or_create(&HaltLabels {
                routing_config: routing_config.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one processed version.
    pub fn reconciled(&self, result: ReconcileResult) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts one pod seen by the injector.
    pub fn injected(&self, result: &str) {
        self.injections
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a refused data-plane connection.
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a refused served-spec record, by [`crate::served_spec::Untrusted::metric_label`].
    pub fn untrusted_status(&self, reason: &str) {
        self.untrusted_status
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a message from a data plane that breaks the protocol.
    pub fn protocol_error(&self, kind: &str) {
        self.protocol_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts one TokenReview sent to the apiserver.
    pub fn token_reviewed(&self, result: &str) {
        self.token_reviews
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode metrics");
        out
    }
}
