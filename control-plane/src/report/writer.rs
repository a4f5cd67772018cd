//! What the leader writes: the status of a RoutingConfig and of its shards, as merge patches of
//! what changed (see [`crate::merge_patch`] for why not server-side apply), the Events of their
//! decisions, and reports of records in the status it does not trust.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use routing_model::crd::{
    RoutingConfig, RoutingConfigStatus, RoutingShard, RoutingShardStatus, SnapshotStatus,
};
use routing_model::protocol::SnapshotRef;
use sha2::{Digest, Sha256};

use super::replicas::{self, ReplicaSettings};
use super::status::{self, Decision};
use super::{FIELD_MANAGER, shard_status};
use crate::merge_patch;
use crate::metrics::Metrics;
use crate::push::registry::Registry;
use crate::served_spec::Untrusted;
use crate::snapshot::ObjectKey;
use crate::status_key::StatusKey;

/// A status write the API server refused; the reconcile that asked is retried.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the status of {object}: {source}")]
pub struct WriteError {
    /// The object, `namespace/name`.
    pub object: String,
    /// What the API server said.
    #[source]
    pub source: kube::Error,
}

/// What writing statuses and Events needs, shared by every reconcile.
pub struct Writer {
    client: Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    replica: ReplicaSettings,
    status_key: Arc<StatusKey>,
    /// The fingerprint of the last refused record reported per table, so each forgery is
    /// reported once rather than on every resync.
    refused: Mutex<HashMap<ObjectKey, [u8; 32]>>,
}

impl Writer {
    /// A writer reporting Events as `reporter`, signing records with `status_key`.
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        replica: ReplicaSettings,
        status_key: Arc<StatusKey>,
    ) -> Self {
        Self {
            client,
            reporter,
            metrics,
            registry,
            replica,
            status_key,
            refused: Mutex::default(),
        }
    }

    /// Forgets what was reported of a deleted table.
    pub fn forget(&self, key: &ObjectKey) {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

/// Events are cut to this many bytes (the API allows 1 kB).
const MAX_EVENT_NOTE: usize = 1000;

/// The inputs of a RoutingConfig's status that the reconcile decided.
pub struct Report<'a> {
    /// The object as reconciled.
    pub obj: &'a RoutingConfig,
    /// Its key.
    pub key: &'a ObjectKey,
    /// Its uid.
    pub uid: &'a str,
    /// Its generation.
    pub generation: i64,
    /// What its current table is.
    pub current_table: &'a status::Current,
    /// The table served, if any.
    pub served: Option<status::Served<'a>>,
    /// RoutingShards labelled for it now.
    pub shards: usize,
    /// The status to compare with: what is stored, or what this reconcile just wrote.
    pub current: Option<&'a RoutingConfigStatus>,
    /// The staged rollout of the newest table, as decided.
    pub rollout: Option<&'a routing_model::crd::RolloutStatus>,
}

/// Writes the RoutingConfig's status if it differs from `report.current`, publishes the Events
/// of its decisions, and returns the status it should now have.
pub async fn write_status(ctx: &Writer, report: &Report<'_>) -> Result<RoutingConfigStatus, WriteError> {
    let (obj, key) = (report.obj, report.key);
    let current = report.current;
    // Counted against the table this status reports as served, which the leader writes before
    // it serves it: data planes on the previous one are not synced on it.
    let served_ref = report.served.map(|s| SnapshotRef {
        lineage: report.uid.to_owned(),
        version: s.version,
        hash: s.hash,
    });
    let own = ctx.registry.counts(&key.to_string(), served_ref.as_ref());
    let served_version = report.served.map(|s| s.version);
    let (counts, dead) = replicas::totals(&ctx.client, &ctx.replica, obj, own, served_version).await;
    if !dead.is_empty() {
        replicas::prune(&ctx.client, obj, &dead).await;
    }
    // Only needed (and a serialization of a possibly large spec) while the served table does
    // not hold the current generation.
    let served_generation = report
        .served
        .and_then(|s| s.members.map(crate::snapshot::ServedMembers::config_generation));
    let spec_bytes = if served_generation.is_some_and(|g| g != report.generation) {
        serde_json::to_vec(&obj.spec).map_or(0, |v| v.len())
    } else {
        0
    };
    let desired = status::desired(&status::Input {
        generation: report.generation,
        namespace: &key.namespace,
        name: &key.name,
        uid: report.uid,
        current_table: report.current_table,
        served: report.served,
        current,
        data_planes: &counts,
        shards: report.shards,
        now: SystemTime::now(),
        key: &ctx.status_key,
        spec_bytes,
        rollout: report.rollout,
    });
    if current.is_some_and(|c| same_status(c, &desired)) {
        return Ok(desired);
    }
    let api: Api<RoutingConfig> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let others = snapshot_writers_besides_us(obj);
    if !others.is_empty() {
        // A snapshot someone else wrote (a forged record) must not outlive this write, nor
        // leave fields this write would not name. The snapshot is this control plane's to say:
        // clear it first, then write what it serves.
        remove_snapshot(&api, key).await?;
        let untrusted = Untrusted::WrittenByOthers {
            managers: status::truncate(&others.join(", "), 200),
        };
        if let Some(recorded) = obj.status.as_ref().and_then(|c| c.snapshot.as_ref()) {
            emit_untrusted(ctx, obj, key, recorded, &untrusted).await;
        }
    }
    // A merge patch of what changed, leaving the replicas' own entries alone.
    let replicas = ["dataPlanes", "replicas"];
    let stored = match current {
        Some(c) if others.is_empty() => to_json(c),
        // The snapshot was just removed.
        Some(c) => merge_patch::without(to_json(c), &["snapshot"]),
        None => serde_json::Value::Null,
    };
    let Some(change) = merge_patch::diff(
        &merge_patch::without(stored, &replicas),
        &merge_patch::without(to_json(&desired), &replicas),
    ) else {
        return Ok(desired);
    };
    api.patch_status(
        &key.name,
        &params(),
        &Patch::Merge(&serde_json::json!({ "status": change })),
    )
    .await
    .map_err(|source| WriteError {
        object: key.to_string(),
        source,
    })?;
    ctx.metrics.status_writes.inc();
    for decision in status::decisions(current, &desired) {
        publish(ctx, obj, decision).await;
    }
    Ok(desired)
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

fn to_json<T: serde::Serialize>(status: &T) -> serde_json::Value {
    serde_json::to_value(status).expect("a status serializes to JSON")
}

/// Equal up to the order of conditions (the apiserver keeps list-map entries keyed, not ordered).
fn same_status(a: &RoutingConfigStatus, b: &RoutingConfigStatus) -> bool {
    let sorted = |s: &RoutingConfigStatus| {
        let mut s = s.clone();
        s.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
        // Replica entries belong to the replicas, not to this write.
        if let Some(d) = s.data_planes.as_mut() {
            d.replicas.clear();
        }
        s
    };
    sorted(a) == sorted(b)
}

/// Writes a shard's status if it differs from the stored one, and publishes the Event of its
/// decision. A failure is logged (the next reconcile tries again), never fatal to the table.
pub async fn write_shard_status(ctx: &Writer, shard: &RoutingShard, desired: RoutingShardStatus) {
    let current = shard.status.as_ref();
    if current == Some(&desired) {
        return;
    }
    let Some(namespace) = shard.namespace() else {
        return;
    };
    let name = shard.name_any();
    let stored = current.map_or(serde_json::Value::Null, to_json);
    let Some(change) = merge_patch::diff(&stored, &to_json(&desired)) else {
        return;
    };
    let api: Api<RoutingShard> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(e) = api
        .patch_status(
            &name,
            &params(),
            &Patch::Merge(&serde_json::json!({ "status": change })),
        )
        .await
    {
        tracing::warn!(shard = %format!("{namespace}/{name}"), error = %e, "cannot write the status of a RoutingShard");
        return;
    }
    ctx.metrics.status_writes.inc();
    if let Some(decision) = shard_status::decision(current, &desired) {
        let type_ = if decision.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish_event(
            ctx,
            &shard.object_ref(&()),
            type_,
            &decision.reason,
            "Compose",
            decision.message,
        )
        .await;
    }
}

/// The field managers other than the status writer that own part of `status.snapshot`.
fn snapshot_writers_besides_us(obj: &RoutingConfig) -> Vec<String> {
    obj.managed_fields()
        .iter()
        .filter(|m| {
            m.manager.as_deref() != Some(FIELD_MANAGER)
                && m.fields_v1
                    .as_ref()
                    .and_then(|f| f.0.get("f:status"))
                    .and_then(|s| s.get("f:snapshot"))
                    .is_some()
        })
        .map(|m| {
            m.manager
                .clone()
                .unwrap_or_else(|| "an unnamed manager".to_owned())
        })
        .collect()
}

/// Removes `status.snapshot`, whoever wrote it.
async fn remove_snapshot(api: &Api<RoutingConfig>, key: &ObjectKey) -> Result<(), WriteError> {
    let ops = serde_json::json!([{"op": "remove", "path": "/status/snapshot"}]);
    let patch: json_patch::Patch = serde_json::from_value(ops).expect("a JSON patch");
    match api
        .patch_status(&key.name, &params(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        // Already gone (the remove op fails on a missing path): nothing to do.
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(()),
        Err(source) => Err(WriteError {
            object: key.to_string(),
            source,
        }),
    }
}

/// Reports a refused record once per distinct record: audit log, metric, Warning Event.
pub async fn report_untrusted(
    ctx: &Writer,
    obj: &RoutingConfig,
    key: &ObjectKey,
    recorded: &SnapshotStatus,
    untrusted: &Untrusted,
) {
    if first_report(ctx, key, recorded) {
        emit_untrusted(ctx, obj, key, recorded, untrusted).await;
    }
}

/// True the first time `recorded` is reported for `key`.
fn first_report(ctx: &Writer, key: &ObjectKey, recorded: &SnapshotStatus) -> bool {
    let fingerprint: [u8; 32] = Sha256::digest(serde_json::to_vec(recorded).unwrap_or_default()).into();
    let mut refused = ctx
        .refused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if refused.get(key) == Some(&fingerprint) {
        return false;
    }
    refused.insert(key.clone(), fingerprint);
    true
}

/// Reports, once per record, that the recorded table cannot be rebuilt though nothing in it is
/// forged (a copy was left out, or an object was deleted while the table was refused).
pub async fn report_incomplete(
    ctx: &Writer,
    obj: &RoutingConfig,
    key: &ObjectKey,
    recorded: &SnapshotStatus,
    why: &crate::served_spec::Incomplete,
) {
    if !first_report(ctx, key, recorded) {
        return;
    }
    tracing::warn!(target: "audit", object = %key, recorded_version = recorded.version, error = %why, "cannot rebuild the served table from the status; serving nothing for it until its current table is valid (data planes keep their table)");
    publish_event(
        ctx,
        &obj.object_ref(&()),
        EventType::Warning,
        "NotRecovered",
        "Recover",
        format!("{why}; this replica serves nothing for this table until it is valid again (data planes keep their table)"),
    )
    .await;
}

/// Audit log, metric and Warning Event for one untrusted record.
async fn emit_untrusted(
    ctx: &Writer,
    obj: &RoutingConfig,
    key: &ObjectKey,
    recorded: &SnapshotStatus,
    untrusted: &Untrusted,
) {
    let reason = untrusted.metric_label();
    ctx.metrics.untrusted_status(reason);
    let (message, action, note) = match untrusted {
        Untrusted::WrittenByOthers { .. } => (
            "removed a status.snapshot that another field manager wrote",
            "WriteStatus",
            format!(
                "{untrusted}. Only the control plane writes status.snapshot; someone who may patch routingconfigs/status may have forged it"
            ),
        ),
        _ => (
            "refused the served spec recorded in the status; not serving it",
            "Recover",
            format!(
                "refused status.snapshot as the version to serve: {untrusted}. This control plane did not record it; someone who may patch routingconfigs/status may have forged it"
            ),
        ),
    };
    tracing::warn!(
        target: "audit",
        object = %key,
        reason,
        recorded_version = recorded.version,
        error = %untrusted,
        "{message}"
    );
    publish_event(
        ctx,
        &obj.object_ref(&()),
        EventType::Warning,
        "UntrustedStatus",
        action,
        note,
    )
    .await;
}

async fn publish(ctx: &Writer, obj: &RoutingConfig, decision: Decision) {
    let (type_, reason, note) = match decision {
        Decision::Accepted { message } => (EventType::Normal, "Accepted", message),
        Decision::Rejected { message } => (EventType::Warning, "Rejected", message),
        Decision::Synced { message } => (EventType::Normal, "Synced", message),
        Decision::RejectedByDataPlane { message } => (EventType::Warning, "RejectedByDataPlane", message),
        Decision::Rollout {
            reason,
            message,
            warning,
        } => {
            let type_ = if warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            return publish_event(ctx, &obj.object_ref(&()), type_, reason, "Rollout", message).await;
        }
    };
    publish_event(ctx, &obj.object_ref(&()), type_, reason, "Validate", note).await;
}

async fn publish_event(
    ctx: &Writer,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(status::truncate(&note, MAX_EVENT_NOTE)),
        action: action.to_owned(),
        secondary: None,
    };
    // A fresh Recorder per Event: the shared one folds a later Event with the same reason into
    // the first (bumping its count, keeping its note), and each decision here has its own note.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, regarding).await {
        // An Event is a notification; failing to send one must not fail the reconcile.
        tracing::warn!(object = ?regarding.name, error = %e, "cannot publish Event");
    }
}
