//! Data-plane counts across control-plane replicas.
//!
//! A data plane holds a session with one replica, so each replica knows only its own data
//! planes. Every replica therefore writes its own entry in `status.dataPlanes.replicas`, a map
//! keyed by its identity, with a merge patch of that key alone under its own field manager (so it
//! can never overwrite another replica's entry), and only when its counts change. Each replica also holds a Lease of its own; the status writer
//! sums the entries of replicas whose Lease is live and removes the entries of replicas whose
//! Lease expired (a crashed replica's data planes reconnect elsewhere and are counted there).
//! Each entry names the version its counts are against, so a replica that has not caught up
//! with a new version yet is never counted as synced on it.
//!
//! Replica Leases carry the label [`REPLICA_LEASE_LABEL`]; the leader deletes those that stayed
//! dead (released, or expired) for a whole Lease duration ([`LeaseSweeper`]), so a Deployment's
//! ever-new pod names do not leave one Lease per pod ever started.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use routing_model::crd::{DataPlaneRejection, ReplicaReport, RoutingConfig};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::push::registry::{Counts, Registry};
use crate::snapshot::{ObjectKey, SnapshotStore};

/// Label of every replica Lease; its value is the leader Lease's name (cut to a label value).
pub const REPLICA_LEASE_LABEL: &str = "cellroute.dev/replica-lease-of";

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

    /// The labels of this replica's own Lease.
    pub fn lease_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (REPLICA_LEASE_LABEL.to_owned(), self.label_value()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                super::FIELD_MANAGER.to_owned(),
            ),
        ])
    }

    /// The leader Lease's name as a label value (at most 63 characters, alphanumeric at both
    /// ends); names that collide once cut are told apart by [`Self::is_replica_lease`].
    fn label_value(&self) -> String {
        let cut: String = self.lease_name.chars().take(63).collect();
        cut.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
    }

    /// True for the name of a replica Lease of these replicas (not the leader Lease itself).
    fn is_replica_lease(&self, name: &str) -> bool {
        let prefix = self.lease_of("");
        name != self.lease_name && name.len() > prefix.len() + 1 && name.starts_with(&format!("{prefix}-"))
    }
}

fn report(
    counts: &Counts,
    version: Option<i64>,
    rollout: Option<routing_model::crd::ReplicaRollout>,
) -> ReplicaReport {
    ReplicaReport {
        rollout,
        version,
        connected: counts.connected,
        synced: counts.synced,
        rejected: counts.rejected,
        last_rejection: counts
            .last_rejection
            .as_ref()
            .map(|(data_plane, version, error)| DataPlaneRejection {
                data_plane: data_plane.clone(),
                version: *version,
                error: crate::report::status::truncate(error, 1024),
            }),
    }
}

/// This replica's data planes in the staged rollout of `key`, if one runs here.
pub fn local_rollout(
    store: &SnapshotStore,
    registry: &Registry,
    key: &ObjectKey,
) -> Option<routing_model::crd::ReplicaRollout> {
    let state = store.get(key)?;
    let canary = state.canary?;
    let target = canary.target.reference();
    let records = registry.list();
    let observed = crate::rollout::observe::Observed::count(
        &records,
        &key.to_string(),
        &target,
        state.served.map(|s| s.reference()).as_ref(),
        canary.percent,
    );
    Some(observed.to_replica(target.version, canary.percent))
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
    // Health reports wake no one (they arrive every second from every data plane): while a
    // rollout runs here, what they add is written this often, for the leader to judge.
    let mut rollout_tick = tokio::time::interval(ROLLOUT_REPORT_EVERY);
    rollout_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = rollout_tick.tick() => {
                if !store.list().iter().any(|(_, s)| s.canary.is_some()) {
                    continue;
                }
            }
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
            if obj.status.as_ref().and_then(|s| s.data_planes.as_ref()).is_none() {
                // The status writer has not written the totals yet, and an entry alone is not a
                // valid `dataPlanes`: the next tick writes it.
                continue;
            }
            let counts = local_counts(&store, &registry, &key);
            let version = store.served_ref(&key).map(|r| r.version);
            let mine = obj
                .status
                .as_ref()
                .and_then(|s| s.data_planes.as_ref())
                .and_then(|d| d.replicas.get(&settings.identity));
            let desired = report(&counts, version, local_rollout(&store, &registry, &key));
            let entry = match (mine, counts.connected) {
                (None, 0) => continue,
                (Some(current), _) if *current == desired => continue,
                (_, 0) => None,
                _ => Some(desired),
            };
            write_entry(&client, &key, &settings, entry).await;
        }
    }
    // Leaving: take this replica's entries out, so nobody counts its data planes twice while
    // they reconnect elsewhere. Bounded: with the apiserver gone the entries stay, and the status
    // writer drops them once this replica's Lease has expired.
    let leave = async {
        for obj in reader.state() {
            let Some(key) = ObjectKey::of(&obj) else { continue };
            let has_entry = obj
                .status
                .as_ref()
                .and_then(|s| s.data_planes.as_ref())
                .is_some_and(|d| d.replicas.contains_key(&settings.identity));
            if has_entry {
                write_entry(&client, &key, &settings, None).await;
            }
        }
    };
    if tokio::time::timeout(LEAVE_TIMEOUT, leave).await.is_err() {
        tracing::warn!(
            "could not remove this replica's data-plane counts within {LEAVE_TIMEOUT:?}; the status writer drops them when its Lease expires"
        );
    }
}

/// How often a replica with a rollout running writes what its data planes report on it.
pub const ROLLOUT_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Longest a leaving replica spends removing its entries.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Writes (or, with `None`, removes) this replica's own entry: a merge patch of its key alone,
/// so it never touches another replica's entry. A merge patch, not a server-side apply: the API
/// server stores it even for an object too large to carry its field-ownership lists.
async fn write_entry(
    client: &Client,
    key: &ObjectKey,
    settings: &ReplicaSettings,
    entry: Option<ReplicaReport>,
) {
    let api: Api<RoutingConfig> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "status": {"dataPlanes": {"replicas": {settings.identity.clone(): entry}}},
    });
    let params = PatchParams {
        field_manager: Some(settings.field_manager()),
        ..PatchParams::default()
    };
    if let Err(e) = api.patch_status(&key.name, &params, &Patch::Merge(&patch)).await {
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
/// names of replicas whose entries are stale. An entry against another version than `served`
/// (its replica has not caught up yet) counts its data planes as connected, not synced.
pub async fn totals(
    client: &Client,
    settings: &ReplicaSettings,
    obj: &RoutingConfig,
    own: Counts,
    served: Option<i64>,
) -> (Counts, Vec<String>) {
    let mut total = own;
    let mut dead = Vec::new();
    let others = obj
        .status
        .as_ref()
        .and_then(|s| s.data_planes.as_ref())
        .map(|d| d.replicas.clone())
        .unwrap_or_default();
    for (replica, entry) in others.iter().filter(|(r, _)| **r != settings.identity) {
        if !is_live(client, settings, replica).await {
            dead.push(replica.clone());
            continue;
        }
        total.connected += entry.connected;
        if entry.version != served {
            continue;
        }
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

/// Removes the entries of replicas that are gone (their Lease expired): a merge patch that
/// nulls exactly their keys.
pub async fn prune(client: &Client, obj: &RoutingConfig, dead: &[String]) {
    let Some(key) = ObjectKey::of(obj) else { return };
    if dead.is_empty() {
        return;
    }
    let gone: serde_json::Map<String, serde_json::Value> = dead
        .iter()
        .map(|replica| (replica.clone(), serde_json::Value::Null))
        .collect();
    let patch = serde_json::json!({"status": {"dataPlanes": {"replicas": gone}}});
    let params = PatchParams {
        field_manager: Some(super::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let api: Api<RoutingConfig> = Api::namespaced(client.clone(), &key.namespace);
    match api.patch_status(&key.name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => {
            tracing::info!(object = %key, replicas = ?dead, "removed the data-plane counts of replicas that are gone")
        }
        Err(e) => {
            tracing::warn!(object = %key, error = %e, "cannot remove the counts of replicas that are gone")
        }
    }
}

/// Deletes the Leases of replicas that are gone. Run by the leader only.
///
/// A replica Lease is dead when it is released (a clean shutdown) or expired (a crash). It is
/// deleted only after the leader has seen it dead, unchanged (same resourceVersion), for a whole
/// Lease duration, and the delete is conditional on that resourceVersion: a replica restarting
/// under the same name renews its Lease first, which changes the resourceVersion and saves it.
#[derive(Debug, Default)]
pub struct LeaseSweeper {
    /// Dead Leases by name: the resourceVersion seen dead, and since when.
    dead: HashMap<String, (String, Instant)>,
    /// Whether a failed list was already logged at WARN.
    warned: bool,
}

impl LeaseSweeper {
    /// Forgets what it saw (this replica stopped leading).
    pub fn reset(&mut self) {
        self.dead.clear();
    }

    /// One sweep: notes dead replica Leases, deletes those dead long enough.
    pub async fn sweep(&mut self, client: &Client, settings: &ReplicaSettings, metrics: &Metrics) {
        let api: Api<Lease> = Api::namespaced(client.clone(), &settings.lease_namespace);
        let selector = format!("{REPLICA_LEASE_LABEL}={}", settings.label_value());
        let leases = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(e) => {
                if std::mem::replace(&mut self.warned, true) {
                    tracing::debug!(error = %e, "cannot list replica Leases");
                } else {
                    tracing::warn!(error = %e, "cannot list replica Leases, so those of dead replicas stay (the control plane needs `list` and `delete` on Leases in its namespace)");
                }
                return;
            }
        };
        let own = settings.lease_of(&settings.identity);
        let hold = Duration::from_secs(settings.lease_duration);
        let now = Timestamp::now().as_second();
        let mut listed = Vec::new();
        for lease in leases {
            let (Some(name), Some(rv)) = (
                lease.metadata.name.clone(),
                lease.metadata.resource_version.clone(),
            ) else {
                continue;
            };
            if name == own || !settings.is_replica_lease(&name) {
                continue;
            }
            listed.push(name.clone());
            if !is_dead(&lease, now) {
                self.dead.remove(&name);
                continue;
            }
            match self.dead.get(&name) {
                Some((seen, since)) if *seen == rv && since.elapsed() >= hold => {}
                Some((seen, _)) if *seen == rv => continue,
                _ => {
                    self.dead.insert(name, (rv, Instant::now()));
                    continue;
                }
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(rv),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {
                    metrics.replica_leases_deleted.inc();
                    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                    tracing::info!(lease = %name, last_holder = %holder, "deleted the Lease of a replica that is gone");
                }
                // Renewed meanwhile (409), or already gone (404): nothing to do.
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "cannot delete the Lease of a replica that is gone")
                }
            }
            self.dead.remove(&name);
        }
        self.dead.retain(|name, _| listed.contains(name));
    }
}

/// Released (no holder) or not renewed within its duration.
fn is_dead(lease: &Lease, now: i64) -> bool {
    let Some(spec) = &lease.spec else { return true };
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(duration)) => renewed.0.as_second() + i64::from(duration) < now,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ReplicaSettings {
        ReplicaSettings {
            identity: "cp-0".into(),
            lease_namespace: "ns".into(),
            lease_name: "cellroute-control-plane".into(),
            lease_duration: 15,
        }
    }

    #[test]
    fn replica_leases_are_told_apart_from_the_leader_lease_and_others() {
        let s = settings();
        assert_eq!(s.lease_of("cp-1"), "cellroute-control-plane-cp-1");
        assert!(s.is_replica_lease("cellroute-control-plane-cp-1"));
        assert!(!s.is_replica_lease("cellroute-control-plane"));
        assert!(!s.is_replica_lease("cellroute-control-plane-"));
        assert!(!s.is_replica_lease("other-lease-cp-1"));
        assert_eq!(s.lease_labels()[REPLICA_LEASE_LABEL], "cellroute-control-plane");
        let long = ReplicaSettings {
            lease_name: format!("{}-x", "a".repeat(62)),
            ..settings()
        };
        let value = long.label_value();
        assert!(value.len() <= 63 && value.ends_with('a'), "{value}");
    }
}
