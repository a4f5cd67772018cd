//! Where RoutingConfigs come from. A source validates each version with the shared rules and
//! offers it to the [`SnapshotStore`]; the rest of the control plane only reads the store.
//!
//! - [`kubernetes`]: RoutingConfig custom resources and their RoutingShards, through
//!   kube-runtime's `Controller` (what it decides, it reports through [`crate::report`]);
//! - [`file`]: one RoutingConfig manifest from a watched file, for running without a cluster,
//!   with [`versions`]: its snapshot identities, kept across restarts in a state file.

pub mod file;
pub mod kubernetes;
pub mod versions;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ReconcileResult};
use crate::snapshot::{ObjectKey, Offered, SnapshotStore};

/// Latch that opens once a source has loaded its initial state.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the source ready.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once the source is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What every source gets to work with.
#[derive(Clone)]
pub struct SourceContext {
    /// Where validated versions go.
    pub store: Arc<SnapshotStore>,
    /// Opened when the initial state is loaded.
    pub ready: Readiness,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Fires on shutdown.
    pub shutdown: CancellationToken,
}

/// A source of RoutingConfigs.
pub trait ConfigSource: Send {
    /// Runs until shutdown, offering every version it sees to the store.
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// Counts and logs (as an `audit` line) what the store did with one version.
pub(crate) fn record(
    metrics: &Metrics,
    store: &SnapshotStore,
    key: &ObjectKey,
    version: i64,
    offered: &Offered,
) {
    let result = match offered {
        Offered::Accepted => ReconcileResult::Accepted,
        Offered::Rejected => ReconcileResult::Rejected,
        Offered::Unchanged => ReconcileResult::Unchanged,
    };
    metrics.reconciled(result);
    let state = store.get(key).unwrap_or_default();
    match offered {
        Offered::Accepted => {
            let hash = state.newest().map(|s| s.hash.to_string()).unwrap_or_default();
            tracing::info!(target: "audit", object = %key, version, %hash, "RoutingConfig accepted");
        }
        Offered::Rejected => {
            metrics.validation_failures.inc();
            let error = state.rejection.map(|r| r.error).unwrap_or_default();
            let serving = state.served.map(|s| s.version);
            tracing::warn!(target: "audit", object = %key, version, serving_version = serving, %error, "RoutingConfig rejected");
        }
        Offered::Unchanged => {}
    }
}
