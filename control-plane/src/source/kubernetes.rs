//! RoutingConfig custom resources, reconciled with kube-runtime's `Controller`.
//!
//! Every replica watches and validates every object, so every replica can serve snapshots.
//! Only the replica holding the leader lease writes status and Events, so replicas never fight
//! over the status (see [`crate::leader`]). A status write happens only when the computed status
//! differs from the stored one, which makes restarts and resyncs write nothing.
//!
//! A replica that starts while an object's current generation is rejected serves the last valid
//! version recorded in the status, but only a record signed with the control plane's status key
//! (see [`crate::served_spec`]); any other is refused and reported, by whichever replica finds it,
//! with an audit log line, `cellroute_untrusted_status_total{reason}` and a Warning Event. The
//! leader also removes (and reports the same way) a `status.snapshot` that another field manager
//! wrote, then writes what it serves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use routing_model::crd::SnapshotStatus;
use routing_model::crd::{RoutingConfig, RoutingConfigStatus};
use routing_model::manifest::{API_VERSION, KIND, ObjectMeta, RoutingConfigManifest};
use routing_model::validate::validate;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::replicas::{self, LeaseSweeper, ReplicaSettings};
use super::{ConfigSource, SourceContext};
use crate::merge_patch;
use crate::metrics::{Metrics, ReconcileResult};
use crate::push::registry::Registry;
use crate::served_spec::{self, Owner, Untrusted};
use crate::snapshot::{ObjectKey, SnapshotStore};
use crate::status::{self, Decision};
use crate::status_key::StatusKey;

/// Field manager of the status this control plane writes.
pub const FIELD_MANAGER: &str = "cellroute-control-plane";
/// Events are cut to this many bytes (the API allows 1 kB).
const MAX_EVENT_NOTE: usize = 1000;

/// Why a reconcile failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The object lacks a field every stored object has.
    #[error("RoutingConfig {0} has no {1}")]
    MissingField(String, &'static str),
    /// Writing the status failed.
    #[error("cannot write the status of {0}: {1}")]
    Status(String, #[source] kube::Error),
}

/// The Kubernetes source.
pub struct KubernetesSource {
    /// API client.
    pub client: Client,
    /// Watch one namespace only; `None` watches all.
    pub namespace: Option<String>,
    /// True while this replica holds the leader lease.
    pub leader: watch::Receiver<bool>,
    /// Name this control plane reports Events as.
    pub reporter: String,
    /// What data planes report, for `status.dataPlanes` and the `Synced` condition.
    pub registry: Arc<Registry>,
    /// This replica's identity and the replica Leases.
    pub replica: ReplicaSettings,
    /// Signs the served spec recorded in the status, and authenticates it on recovery.
    pub status_key: Arc<StatusKey>,
}

struct Ctx {
    client: Client,
    store: Arc<SnapshotStore>,
    reporter: Reporter,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    replica: ReplicaSettings,
    status_key: Arc<StatusKey>,
    /// Per object, the fingerprint of the last refused record reported, so each forgery is
    /// reported once rather than on every resync.
    refused: Mutex<HashMap<ObjectKey, [u8; 32]>>,
}

impl ConfigSource for KubernetesSource {
    fn run(self: Box<Self>, sctx: SourceContext) -> BoxFuture<'static, anyhow::Result<()>> {
        async move {
            let api: Api<RoutingConfig> = match &self.namespace {
                Some(ns) => Api::namespaced(self.client.clone(), ns),
                None => Api::all(self.client.clone()),
            };
            let (reader, writer) = reflector::store();
            let on_event = event_hook(reader.clone(), sctx.store.clone(), sctx.ready.clone());
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .inspect_ok(on_event)
                .applied_objects();
            let ctx = Arc::new(Ctx {
                client: self.client.clone(),
                store: sctx.store.clone(),
                reporter: Reporter::from(self.reporter.clone()),
                leader: self.leader.clone(),
                metrics: sctx.metrics.clone(),
                registry: self.registry.clone(),
                replica: self.replica.clone(),
                status_key: self.status_key.clone(),
                refused: Mutex::default(),
            });
            let sweeper = tokio::spawn(sweep_loop(
                self.client.clone(),
                self.replica.clone(),
                self.leader.clone(),
                sctx.metrics.clone(),
                sctx.shutdown.clone(),
            ));
            let reporter = tokio::spawn(replicas::report_loop(
                self.client.clone(),
                reader.clone(),
                sctx.store.clone(),
                self.registry.clone(),
                self.replica.clone(),
                sctx.shutdown.clone(),
            ));
            let lease_check = Duration::from_secs(self.replica.lease_duration.max(2) / 2);
            let shutdown = sctx.shutdown.clone();
            Controller::for_stream(stream, reader)
                .reconcile_all_on(became_leader(self.leader.clone()))
                .reconcile_all_on(data_planes_changed(self.registry.clone()))
                // Other replicas' entries change without a new generation, and a crashed
                // replica's entry must be pruned when its Lease expires.
                .reconcile_all_on(every(lease_check))
                .graceful_shutdown_on(async move { shutdown.cancelled().await })
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "reconcile did not complete");
                    }
                })
                .await;
            // Its last act removes this replica's entries (bounded); let it finish.
            let _ = reporter.await;
            sweeper.abort();
            Ok(())
        }
        .boxed()
    }
}

/// Keeps the snapshot store in step with deletions, and opens readiness after the first list.
fn event_hook(
    reader: Store<RoutingConfig>,
    store: Arc<SnapshotStore>,
    ready: super::Readiness,
) -> impl FnMut(&watcher::Event<RoutingConfig>) {
    move |event| match event {
        watcher::Event::Delete(obj) => {
            if let Some(key) = ObjectKey::of(obj)
                && store.remove(&key)
            {
                tracing::info!(target: "audit", object = %key, "RoutingConfig deleted; no longer served (data planes keep their last-known-good table)");
            }
        }
        watcher::Event::InitDone => {
            // Objects deleted while the watch was down produce no Delete event; a fresh list
            // is the moment to forget them.
            let present: std::collections::BTreeSet<ObjectKey> =
                reader.state().iter().filter_map(|o| ObjectKey::of(o)).collect();
            for (key, _) in store.list() {
                if !present.contains(&key) && store.remove(&key) {
                    tracing::info!(target: "audit", object = %key, "RoutingConfig gone after re-list; no longer served");
                }
            }
            ready.set();
        }
        _ => {}
    }
}

/// While this replica leads, deletes the Leases of replicas that are gone, once per Lease
/// duration.
async fn sweep_loop(
    client: Client,
    settings: ReplicaSettings,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut sweeper = LeaseSweeper::default();
    let period = Duration::from_secs(settings.lease_duration.max(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        if *leader.borrow() {
            sweeper.sweep(&client, &settings, &metrics).await;
        } else {
            sweeper.reset();
        }
    }
}

/// Yields once every time this replica becomes the leader, so it writes every status it owes.
fn became_leader(rx: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    })
}

fn every(period: Duration) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(period).await;
        Some(((), ()))
    })
}

/// Yields after data-plane reports change, at most every 250 ms, so `status.dataPlanes` follows
/// ACKs and NACKs without a write per message.
fn data_planes_changed(registry: Arc<Registry>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(registry.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        rx.borrow_and_update();
        Some(((), rx))
    })
}

async fn reconcile(obj: Arc<RoutingConfig>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let name = obj.name_any();
    let key = ObjectKey::of(&obj).ok_or_else(|| ReconcileError::MissingField(name.clone(), "namespace"))?;
    let uid = obj
        .uid()
        .ok_or_else(|| ReconcileError::MissingField(key.to_string(), "uid"))?;
    let generation = obj.metadata.generation.unwrap_or(0);

    let started = Instant::now();
    let manifest = RoutingConfigManifest {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        metadata: ObjectMeta {
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
        },
        spec: obj.spec.clone(),
        status: None,
    };
    let candidate = validate(manifest).map_err(|e| e.to_string());
    ctx.metrics
        .snapshot_build
        .observe(started.elapsed().as_secs_f64());
    if candidate.is_err() {
        recover_served(&obj, &key, &uid, generation, &ctx).await;
    }
    let offered = ctx.store.offer(&key, &uid, generation, candidate);
    super::record(&ctx.metrics, &ctx.store, &key, generation, &offered);

    if *ctx.leader.borrow() {
        write_status(&obj, &key, &uid, generation, &ctx).await?;
    }
    Ok(Action::await_change())
}

/// Re-serves the last valid version recorded in the status when this process has none for the
/// object (it started while the current generation was already rejected), if the record is one
/// this control plane signed for an earlier generation of this object; reports it otherwise.
async fn recover_served(obj: &RoutingConfig, key: &ObjectKey, uid: &str, generation: i64, ctx: &Ctx) {
    let has_served = ctx
        .store
        .get(key)
        .and_then(|s| s.served)
        .is_some_and(|s| s.lineage == uid);
    let Some(recorded) = obj.status.as_ref().and_then(|s| s.snapshot.as_ref()) else {
        return;
    };
    if has_served {
        return;
    }
    let owner = Owner {
        namespace: &key.namespace,
        name: &key.name,
        uid,
        generation,
    };
    let max = routing_model::parse::DEFAULT_MAX_CONFIG_BYTES;
    match served_spec::recover(&ctx.status_key, owner, recorded, max) {
        Ok(None) => {}
        Ok(Some(recovered)) => {
            ctx.store.offer(key, uid, recovered.version, Ok(recovered.config));
            tracing::info!(target: "audit", object = %key, version = recovered.version, "recovered the last valid version from the status (signature verified); serving it while the current generation is rejected");
        }
        Err(untrusted) => report_untrusted(obj, key, recorded, &untrusted, ctx).await,
    }
}

/// Reports a refused record once per distinct record: audit log, metric, Warning Event.
async fn report_untrusted(
    obj: &RoutingConfig,
    key: &ObjectKey,
    recorded: &SnapshotStatus,
    untrusted: &Untrusted,
    ctx: &Ctx,
) {
    let fingerprint: [u8; 32] = Sha256::digest(serde_json::to_vec(recorded).unwrap_or_default()).into();
    {
        let mut refused = ctx
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if refused.get(key) == Some(&fingerprint) {
            return;
        }
        refused.insert(key.clone(), fingerprint);
    }
    emit_untrusted(obj, key, recorded, untrusted, ctx).await;
}

/// Audit log, metric and Warning Event for one untrusted record.
async fn emit_untrusted(
    obj: &RoutingConfig,
    key: &ObjectKey,
    recorded: &SnapshotStatus,
    untrusted: &Untrusted,
    ctx: &Ctx,
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
    publish_event(ctx, obj, EventType::Warning, "UntrustedStatus", action, note).await;
}

async fn write_status(
    obj: &RoutingConfig,
    key: &ObjectKey,
    uid: &str,
    generation: i64,
    ctx: &Ctx,
) -> Result<(), ReconcileError> {
    let state = ctx.store.get(key).unwrap_or_default();
    let current = obj.status.as_ref();
    let served = state.served.as_ref().map(|s| s.reference());
    let own = ctx.registry.counts(&key.to_string(), served.as_ref());
    let served_version = served.as_ref().map(|s| s.version);
    let (counts, dead) = replicas::totals(&ctx.client, &ctx.replica, obj, own, served_version).await;
    if !dead.is_empty() {
        replicas::prune(&ctx.client, obj, &dead).await;
    }
    // Only needed (and a serialization of a possibly large spec) while the served version is
    // not the current generation.
    let spec_bytes = if served_version.is_some_and(|v| v != generation) {
        serde_json::to_vec(&obj.spec).map_or(0, |v| v.len())
    } else {
        0
    };
    let desired = status::desired(&status::Input {
        generation,
        uid,
        state: &state,
        current,
        data_planes: &counts,
        now: SystemTime::now(),
        key: &ctx.status_key,
        spec_bytes,
    });
    if current.is_some_and(|c| same_status(c, &desired)) {
        return Ok(());
    }
    let api: Api<RoutingConfig> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let others = snapshot_writers_besides_us(obj);
    if !others.is_empty() {
        // Server-side apply never removes fields another manager owns, so a snapshot someone
        // else wrote (a forged record) would outlive this write, or leave a snapshot without
        // the fields this write drops. The snapshot is this control plane's to say: clear it
        // first, then apply what it serves.
        remove_snapshot(&api, key).await?;
        let untrusted = Untrusted::WrittenByOthers {
            managers: status::truncate(&others.join(", "), 200),
        };
        if let Some(recorded) = current.and_then(|c| c.snapshot.as_ref()) {
            emit_untrusted(obj, key, recorded, &untrusted, ctx).await;
        }
    }
    // A merge patch of what changed, leaving the replicas' own entries alone (see
    // `crate::merge_patch` for why not server-side apply).
    let replicas = ["dataPlanes", "replicas"];
    let stored = if others.is_empty() {
        current.map(to_json).unwrap_or(serde_json::Value::Null)
    } else {
        // The snapshot was just removed.
        current
            .map(|c| merge_patch::without(to_json(c), &["snapshot"]))
            .unwrap_or(serde_json::Value::Null)
    };
    let Some(change) = merge_patch::diff(
        &merge_patch::without(stored, &replicas),
        &merge_patch::without(to_json(&desired), &replicas),
    ) else {
        return Ok(());
    };
    api.patch_status(
        &key.name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        },
        &Patch::Merge(&serde_json::json!({ "status": change })),
    )
    .await
    .map_err(|e| ReconcileError::Status(key.to_string(), e))?;
    ctx.metrics.status_writes.inc();
    for decision in status::decisions(current, &desired) {
        publish(ctx, obj, decision).await;
    }
    Ok(())
}

fn to_json(status: &RoutingConfigStatus) -> serde_json::Value {
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
async fn remove_snapshot(api: &Api<RoutingConfig>, key: &ObjectKey) -> Result<(), ReconcileError> {
    let ops = serde_json::json!([{"op": "remove", "path": "/status/snapshot"}]);
    let patch: json_patch::Patch = serde_json::from_value(ops).expect("a JSON patch");
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api
        .patch_status(&key.name, &params, &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        // Already gone (the remove op fails on a missing path): nothing to do.
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(()),
        Err(e) => Err(ReconcileError::Status(key.to_string(), e)),
    }
}

async fn publish(ctx: &Ctx, obj: &RoutingConfig, decision: Decision) {
    let (type_, reason, note) = match decision {
        Decision::Accepted { message } => (EventType::Normal, "Accepted", message),
        Decision::Rejected { message } => (EventType::Warning, "Rejected", message),
        Decision::Synced { message } => (EventType::Normal, "Synced", message),
        Decision::RejectedByDataPlane { message } => (EventType::Warning, "RejectedByDataPlane", message),
    };
    publish_event(ctx, obj, type_, reason, "Validate", note).await;
}

async fn publish_event(
    ctx: &Ctx,
    obj: &RoutingConfig,
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
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        // An Event is a notification; failing to send one must not fail the reconcile.
        tracing::warn!(object = %obj.name_any(), error = %e, "cannot publish Event");
    }
}

fn error_policy(obj: Arc<RoutingConfig>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconciled(ReconcileResult::Error);
    tracing::warn!(object = %obj.name_any(), error = %error, "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}
