//! Leader election for status writes, and each replica's own Lease.
//!
//! Every replica watches RoutingConfigs and serves data planes; exactly one, the holder of a
//! `coordination.k8s.io` Lease, writes status and Events. Two writers of the same status fields
//! would keep taking ownership from each other under server-side apply, bumping the
//! resourceVersion on every write; one writer makes every write intentional.
//!
//! On shutdown a replica tries to release its Leases, so another replica takes over at once, but
//! never waits longer than [`LeaseSettings::release_timeout`] for it: with the apiserver gone a
//! release cannot succeed, and an unreleased Lease expires on its own after its duration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
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
    /// Longest wait for the release on shutdown; after it the Lease is left to expire.
    pub release_timeout: Duration,
    /// Labels the Lease is created with (and given, if it exists without them).
    pub labels: BTreeMap<String, String>,
}

/// Starts competing for the lease; the receiver says whether this replica leads right now.
pub async fn elect(
    client: Client,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(watch::Receiver<bool>, JoinHandle<()>), LeaseManagerError> {
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
        metrics.leader.set(0);
        // Closing the channel makes the manager release the lease and return.
        drop(lease);
        release(task, "leader lease", &settings).await;
    });
    Ok((rx, handle))
}

/// Holds a Lease of this replica's own until shutdown, as proof of life for the status writer
/// (see `source::replicas`). Nobody competes for it, so this replica always holds it while it
/// runs; after a crash it expires within `duration_secs`, and the leader deletes it later. It is
/// created with `settings.labels`, by which the leader knows it for a replica Lease.
pub async fn hold_own(
    client: Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, LeaseManagerError> {
    ensure_labelled(&client, &settings).await?;
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
        release(task, "replica lease", &settings).await;
    }))
}

/// Waits for a lease manager to release its Lease on shutdown, at most
/// `settings.release_timeout`; on timeout it stops the manager and leaves the Lease to expire.
async fn release(
    mut task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    what: &str,
    settings: &LeaseSettings,
) {
    match tokio::time::timeout(settings.release_timeout, &mut task).await {
        Ok(Ok(Ok(_))) => tracing::info!(lease = %settings.name, "{what} released"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(lease = %settings.name, error = %e, "cannot release the {what}; it expires on its own within {}s", settings.duration_secs)
        }
        Ok(Err(e)) => tracing::warn!(lease = %settings.name, error = %e, "the {what} task failed"),
        Err(_) => {
            task.abort();
            tracing::warn!(
                lease = %settings.name,
                "the {what} was not released within {:?} (is the apiserver reachable?); it expires on its own within {}s",
                settings.release_timeout,
                settings.duration_secs
            );
        }
    }
}

/// Creates the Lease with `settings.labels`, or adds them to an existing one that lacks them.
async fn ensure_labelled(client: &Client, settings: &LeaseSettings) -> Result<(), kube::Error> {
    if settings.labels.is_empty() {
        return Ok(());
    }
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(settings.labels.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    };
    match api.create(&PostParams::default(), &lease).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(e),
    }
    let existing = api.get(&settings.name).await?;
    let has_labels = settings
        .labels
        .iter()
        .all(|(k, v)| existing.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    if !has_labels {
        let patch = serde_json::json!({"metadata": {"labels": settings.labels}});
        api.patch(&settings.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}
