//! Leader election for status writes.
//!
//! Every replica watches RoutingConfigs and serves data planes; exactly one, the holder of a
//! `coordination.k8s.io` Lease, writes status and Events. Two writers of the same status fields
//! would keep taking ownership from each other under server-side apply, bumping the
//! resourceVersion on every write; one writer makes every write intentional. On shutdown the
//! lease is released so another replica takes over at once instead of after it expires.

use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Where the lease lives and who this replica is.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease object.
    pub namespace: String,
    /// Name of the Lease object.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub duration_secs: u64,
}

/// Starts competing for the lease; the receiver says whether this replica leads right now.
pub async fn elect(
    client: Client,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(watch::Receiver<bool>, tokio::task::JoinHandle<()>), kube_lease_manager::LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_secs)
        .with_grace(settings.duration_secs.div_ceil(3).max(1))
        .build()
        .await?;
    let (mut lease, task) = manager.watch().await;
    let (tx, rx) = watch::channel(*lease.borrow());
    let handle = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = lease.changed() => {
                    if changed.is_err() {
                        tracing::error!("leader election stopped; this replica no longer writes status");
                        let _ = tx.send(false);
                        metrics.leader.set(0);
                        return;
                    }
                    let leading = *lease.borrow_and_update();
                    metrics.leader.set(i64::from(leading));
                    tracing::info!(identity = %settings.identity, leading, "leadership changed");
                    let _ = tx.send(leading);
                }
            }
        }
        let _ = tx.send(false);
        // Closing the channel makes the manager release the lease and return.
        drop(lease);
        match task.await {
            Ok(Ok(_)) => tracing::info!("leader lease released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the leader lease"),
            Err(e) => tracing::warn!(error = %e, "leader election task failed"),
        }
    });
    Ok((rx, handle))
}

/// Holds a Lease of this replica's own until shutdown, as proof of life for the status writer
/// (see `source::replicas`). Nobody competes for it, so this replica always holds it while it
/// runs; after a crash it expires within `duration_secs`.
pub async fn hold_own(
    client: Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, kube_lease_manager::LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_secs)
        .with_grace(settings.duration_secs.div_ceil(3).max(1))
        .build()
        .await?;
    let (held, task) = manager.watch().await;
    Ok(tokio::spawn(async move {
        shutdown.cancelled().await;
        drop(held);
        let _ = task.await;
    }))
}
