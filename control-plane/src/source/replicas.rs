//! Data-plane counts across control-plane replicas.
//!
//! A data plane holds a session with one replica, so each replica knows only its own data
//! planes. Every replica therefore writes its own entry in `status.dataPlanes.replicas`, with its
//! own server-side-apply field manager (so it can never overwrite another replica's entry), and
//! only when its counts change. Each replica also holds a Lease of its own; the status writer
//! sums the entries of replicas whose Lease is live and removes the entries of replicas whose
//! Lease expired (a crashed replica's data planes reconnect elsewhere and are counted there).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use routing_model::crd::{DataPlaneRejection, ReplicaReport, RoutingConfig};
use routing_model::manifest::{API_VERSION, KIND};
use tokio_util::sync::CancellationToken;

use crate::push::registry::{Counts, Registry};
use crate::snapshot::{ObjectKey, SnapshotStore};

/// Who this replica is and where replica Leases live.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// This replica's identity (pod name).
    pub identity: String,
    /// Namespace of the Leases.
    pub lease_namespace: String,
    /// The leader Lease's name; replica Leases are `<name>-<identity>`.
    pub lease_name: String,
    /// Seconds a Lease stays valid without renewal.
    pub lease_duration: u64,
}

impl ReplicaSettings {
    /// The field manager of this replica's status entries.
    pub fn field_manager(&self) -> String {
        let mut m = format!("cellroute-control-plane-replica/{}", self.identity);
        m.truncate(128);
        m
    }

    /// The name of `replica`'s own Lease.
    pub fn lease_of(&self, replica: &str) -> String {
        let raw = format!("{}-{}", self.lease_name, replica).to_ascii_lowercase();
        let mut name: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        name.truncate(253);
        name.trim_end_matches(['-', '.']).to_owned()
    }
}

fn report(identity: &str, counts: &Counts) -> ReplicaReport {
    ReplicaReport {
        replica: identity.to_owned(),
        connected: counts.connected,
        synced: counts.synced,
        rejected: counts.rejected,
        last_rejection: counts
            .last_rejection
            .as_ref()
            .map(|(data_plane, version, error)| DataPlaneRejection {
                data_plane: data_plane.clone(),
                version: *version,
                error: crate::status::truncate(error, 1024),
            }),
    }
}

/// This replica's counts for one object.
pub fn local_counts(store: &SnapshotStore, registry: &Registry, key: &ObjectKey) -> Counts {
    registry.counts(&key.to_string(), store.served_ref(key).as_ref())
}

/// Writes this replica's entry of every object whose counts changed, until shutdown; then
/// removes its entries.
pub async fn report_loop(
    client: Client,
    reader: Store<RoutingConfig>,
    store: Arc<SnapshotStore>,
    registry: Arc<Registry>,
    settings: ReplicaSettings,
    shutdown: CancellationToken,
) {
    let mut changes = registry.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(settings.lease_duration.max(2) / 2));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = changes.changed() => {
                if changed.is_err() { break; }
                // Coalesce a burst of ACKs into one write per object.
                tokio::time::sleep(Duration::from_millis(250)).await;
                changes.borrow_and_update();
            }
            _ = tick.tick() => {}
        }
        for obj in reader.state() {
            let Some(key) = ObjectKey::of(&obj) else { continue };
            let counts = local_counts(&store, &registry, &key);
            let mine = obj
                .status
                .as_ref()
                .and_then(|s| s.data_planes.as_ref())
                .and_then(|d| d.replicas.iter().find(|r| r.replica == settings.identity));
            let desired = report(&settings.identity, &counts);
            let entries = match (mine, counts.connected) {
                (None, 0) => continue,
                (Some(current), _) if *current == desired => continue,
                (_, 0) => vec![],
                _ => vec![desired],
            };
            write_entries(&client, &key, &settings, entries).await;
        }
    }
    // Leaving: take this replica's entries out, so nobody counts its data planes twice while
    // they reconnect elsewhere.
    for obj in reader.state() {
        let Some(key) = ObjectKey::of(&obj) else { continue };
        let has_entry = obj
            .status
            .as_ref()
            .and_then(|s| s.data_planes.as_ref())
            .is_some_and(|d| d.replicas.iter().any(|r| r.replica == settings.identity));
        if has_entry {
            write_entries(&client, &key, &settings, vec![]).await;
        }
    }
}

async fn write_entries(
    client: &Client,
    key: &ObjectKey,
    settings: &ReplicaSettings,
    entries: Vec<ReplicaReport>,
) {
    let api: Api<RoutingConfig> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "status": {"dataPlanes": {"replicas": entries}},
    });
    let params = PatchParams::apply(&settings.field_manager()).force();
    if let Err(e) = api.patch_status(&key.name, &params, &Patch::Apply(&patch)).await {
        tracing::warn!(object = %key, error = %e, "cannot write this replica's data-plane counts");
    }
}

/// Whether `replica` still holds its own Lease.
pub async fn is_live(client: &Client, settings: &ReplicaSettings, replica: &str) -> bool {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.lease_namespace);
    let Ok(Some(lease)) = api.get_opt(&settings.lease_of(replica)).await else {
        return false;
    };
    let Some(spec) = lease.spec else { return false };
    if spec.holder_identity.as_deref() != Some(replica) {
        return false;
    }
    let (Some(renewed), Some(duration)) = (spec.renew_time, spec.lease_duration_seconds) else {
        return false;
    };
    let expires = renewed.0.as_second() + i64::from(duration);
    expires >= Timestamp::now().as_second()
}

/// The totals over this replica's own counts and the live entries of other replicas, and the
/// names of replicas whose entries are stale.
pub async fn totals(
    client: &Client,
    settings: &ReplicaSettings,
    obj: &RoutingConfig,
    own: Counts,
) -> (Counts, Vec<String>) {
    let mut total = own;
    let mut dead = Vec::new();
    let others = obj
        .status
        .as_ref()
        .and_then(|s| s.data_planes.as_ref())
        .map(|d| d.replicas.clone())
        .unwrap_or_default();
    for entry in others.iter().filter(|r| r.replica != settings.identity) {
        if !is_live(client, settings, &entry.replica).await {
            dead.push(entry.replica.clone());
            continue;
        }
        total.connected += entry.connected;
        total.synced += entry.synced;
        total.rejected += entry.rejected;
        if total.last_rejection.is_none()
            && let Some(r) = &entry.last_rejection
        {
            total.last_rejection = Some((r.data_plane.clone(), r.version, r.error.clone()));
        }
    }
    (total, dead)
}

/// Removes the entries of replicas that are gone (their Lease expired).
pub async fn prune(client: &Client, obj: &RoutingConfig, dead: &[String]) {
    let Some(key) = ObjectKey::of(obj) else { return };
    let replicas = obj
        .status
        .as_ref()
        .and_then(|s| s.data_planes.as_ref())
        .map(|d| d.replicas.clone())
        .unwrap_or_default();
    let mut ops = Vec::new();
    for (i, entry) in replicas.iter().enumerate().rev() {
        if dead.contains(&entry.replica) {
            let path = format!("/status/dataPlanes/replicas/{i}");
            ops.push(
                serde_json::json!({"op": "test", "path": format!("{path}/replica"), "value": entry.replica}),
            );
            ops.push(serde_json::json!({"op": "remove", "path": path}));
        }
    }
    if ops.is_empty() {
        return;
    }
    let patch: json_patch::Patch = match serde_json::from_value(serde_json::Value::Array(ops)) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(object = %key, error = %e, "cannot build the prune patch");
            return;
        }
    };
    let api: Api<RoutingConfig> = Api::namespaced(client.clone(), &key.namespace);
    match api
        .patch_status(&key.name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => {
            tracing::info!(object = %key, replicas = ?dead, "removed the data-plane counts of replicas that are gone")
        }
        Err(e) => {
            tracing::warn!(object = %key, error = %e, "cannot remove the counts of replicas that are gone")
        }
    }
}
