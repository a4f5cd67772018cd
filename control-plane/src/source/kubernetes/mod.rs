//! RoutingConfigs and their RoutingShards, reconciled with kube-runtime's `Controller`.
//!
//! Every replica watches both kinds and composes every table (a RoutingConfig with the shards
//! labelled for it, [`routing_model::compose`]), so every replica can serve snapshots. One
//! replica, the holder of the leader lease, writes status and Events, so replicas never fight
//! over them (see [`crate::leader`]), and it alone gives a table a new version: it records the
//! version, signed, in the RoutingConfig's status before it serves it, and the other replicas
//! serve a table under a version only once that record names it ([`reconcile`]). A status write
//! happens only when the computed status differs from the stored one, which makes restarts and
//! resyncs write nothing.
//!
//! - [`reconcile`]: one table: compose, decide what to serve and under which version, recover
//!   the recorded table when nothing valid is at hand;
//! - [`staged`]: the leader's side of a staged rollout (`spec.rollout`): begin it, look at it,
//!   carry out what [`crate::rollout`] decides;
//! - [`shards`]: the RoutingShard watch: which shards belong to which table, and the status of
//!   shards that belong to none.
//!
//! Nothing is composed before both watches have listed once: a table composed before its shards
//! are known would be served without their customers.

mod reconcile;
mod shards;
mod staged;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use routing_model::crd::{RoutingConfig, RoutingShard};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ConfigSource, Readiness, SourceContext};
use crate::metrics::{Metrics, ReconcileResult};
use crate::push::registry::Registry;
use crate::report::replicas::{self, LeaseSweeper, ReplicaSettings};
use crate::report::writer::{WriteError, Writer};
use crate::snapshot::{ObjectKey, SnapshotStore};
use crate::status_key::StatusKey;

/// Why a reconcile failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The object lacks a field every stored object has.
    #[error("RoutingConfig {0} has no {1}")]
    MissingField(String, &'static str),
    /// Writing the status failed.
    #[error(transparent)]
    Status(#[from] WriteError),
    /// Listing the shards of a table failed.
    #[error("cannot list the RoutingShards of {0}: {1}")]
    List(String, #[source] kube::Error),
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
    /// Signs the record of the served table in the status, and authenticates it on recovery.
    pub status_key: Arc<StatusKey>,
}

/// What reconciles share.
struct Ctx {
    client: Client,
    store: Arc<SnapshotStore>,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    status_key: Arc<StatusKey>,
    /// Writes statuses and Events.
    report: Arc<Writer>,
    /// What data planes report, for rollouts.
    registry: Arc<Registry>,
    /// This replica's identity and the replica Leases, for rollouts counted across replicas.
    replica: ReplicaSettings,
    /// The RoutingShards, as the shard watch last listed them.
    shards: Store<RoutingShard>,
    /// The RoutingConfigs.
    configs: Store<RoutingConfig>,
    /// Opened once the shard watch has listed once.
    shards_listed: Readiness,
    /// What is kept per table between reconciles.
    tables: Arc<PerTable>,
}

/// What is kept per table between reconciles; forgotten when its RoutingConfig is deleted.
#[derive(Default)]
struct PerTable {
    /// Its last composition, reused while no object of it changed.
    compositions: Mutex<HashMap<ObjectKey, Arc<reconcile::Composed>>>,
    /// Since when a new table waits for its objects to settle.
    pending: Mutex<HashMap<ObjectKey, std::time::Instant>>,
}

impl PerTable {
    fn forget(&self, key: &ObjectKey) {
        fn remove<V>(map: &Mutex<HashMap<ObjectKey, V>>, key: &ObjectKey) {
            map.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(key);
        }
        remove(&self.compositions, key);
        remove(&self.pending, key);
    }
}

impl ConfigSource for KubernetesSource {
    fn run(self: Box<Self>, sctx: SourceContext) -> BoxFuture<'static, anyhow::Result<()>> {
        async move {
            let (configs_api, shards_api): (Api<RoutingConfig>, Api<RoutingShard>) = match &self.namespace {
                Some(ns) => (
                    Api::namespaced(self.client.clone(), ns),
                    Api::namespaced(self.client.clone(), ns),
                ),
                None => (Api::all(self.client.clone()), Api::all(self.client.clone())),
            };
            let listed = Listed::new(sctx.ready.clone());
            let shards_listed = Readiness::default();
            let (reader, writer) = reflector::store();
            let tables = Arc::new(PerTable::default());
            let report = Arc::new(Writer::new(
                self.client.clone(),
                Reporter::from(self.reporter.clone()),
                sctx.metrics.clone(),
                self.registry.clone(),
                self.replica.clone(),
                self.status_key.clone(),
            ));
            let forget = {
                let (tables, report, metrics) = (tables.clone(), report.clone(), sctx.metrics.clone());
                move |key: &ObjectKey| {
                    tables.forget(key);
                    report.forget(key);
                    metrics.forget_rollout(&key.to_string());
                }
            };
            let on_event = event_hook(reader.clone(), sctx.store.clone(), forget, listed.clone());
            let stream = watcher(configs_api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .inspect_ok(on_event)
                .applied_objects();
            let (shard_reader, shard_writer) = reflector::store();
            let shard_stream = watcher(shards_api, watcher::Config::default())
                .default_backoff()
                .reflect(shard_writer)
                .inspect_ok(shards::event_hook(listed.clone(), shards_listed.clone()))
                .touched_objects();
            let ctx = Arc::new(Ctx {
                client: self.client.clone(),
                store: sctx.store.clone(),
                leader: self.leader.clone(),
                metrics: sctx.metrics.clone(),
                status_key: self.status_key.clone(),
                report: report.clone(),
                registry: self.registry.clone(),
                replica: self.replica.clone(),
                shards: shard_reader.clone(),
                configs: reader.clone(),
                shards_listed,
                tables,
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
            let orphans = tokio::spawn(shards::orphan_loop(ctx.clone(), sctx.shutdown.clone()));
            let lease_check = Duration::from_secs(self.replica.lease_duration.max(2) / 2);
            let shutdown = sctx.shutdown.clone();
            let concerned = shards::Tables::default();
            Controller::for_stream(stream, reader)
                .watches_stream(shard_stream, move |shard| concerned.of(&shard))
                .reconcile_all_on(became_leader(self.leader.clone()))
                .reconcile_all_on(data_planes_changed(self.registry.clone()))
                // Other replicas' entries change without a new generation, and a crashed
                // replica's entry must be pruned when its Lease expires.
                .reconcile_all_on(every(lease_check))
                .graceful_shutdown_on(async move { shutdown.cancelled().await })
                .run(reconcile::reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "reconcile did not complete");
                    }
                })
                .await;
            // Its last act removes this replica's entries (bounded); let it finish.
            let _ = reporter.await;
            sweeper.abort();
            orphans.abort();
            Ok(())
        }
        .boxed()
    }
}

/// Opens readiness once both watches have listed once.
#[derive(Clone)]
struct Listed {
    ready: Readiness,
    done: Arc<Mutex<BTreeSet<&'static str>>>,
}

impl Listed {
    fn new(ready: Readiness) -> Self {
        Self {
            ready,
            done: Arc::default(),
        }
    }

    fn done(&self, which: &'static str) {
        let mut done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        done.insert(which);
        if done.len() == 2 {
            self.ready.set();
        }
    }
}

/// Keeps the snapshot store in step with deletions, and notes the first list.
fn event_hook(
    reader: Store<RoutingConfig>,
    store: Arc<SnapshotStore>,
    forget: impl Fn(&ObjectKey),
    listed: Listed,
) -> impl FnMut(&watcher::Event<RoutingConfig>) {
    move |event| match event {
        watcher::Event::Delete(obj) => {
            if let Some(key) = ObjectKey::of(obj) {
                forget(&key);
                if store.remove(&key) {
                    tracing::info!(target: "audit", object = %key, "RoutingConfig deleted; no longer served (data planes keep their last-known-good table)");
                }
            }
        }
        watcher::Event::InitDone => {
            // Objects deleted while the watch was down produce no Delete event; a fresh list
            // is the moment to forget them.
            let present: BTreeSet<ObjectKey> =
                reader.state().iter().filter_map(|o| ObjectKey::of(o)).collect();
            for (key, _) in store.list() {
                if !present.contains(&key) {
                    forget(&key);
                    if store.remove(&key) {
                        tracing::info!(target: "audit", object = %key, "RoutingConfig gone after re-list; no longer served");
                    }
                }
            }
            listed.done("routingconfigs");
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

fn error_policy(obj: Arc<RoutingConfig>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconciled(ReconcileResult::Error);
    tracing::warn!(object = %obj.name_any(), error = %error, "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}
