//! The RoutingShard watch: which shards belong to which table, which tables a shard's change
//! concerns, and the status of shards that belong to no table.
//!
//! A shard belongs to the RoutingConfig its label [`ROUTING_CONFIG_LABEL`] names, in its own
//! namespace. A change of a shard (edited, relabelled, deleted) reconciles the table it belongs
//! to, and the table it belonged to before (a relabelled shard leaves one table and joins
//! another).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use routing_model::crd::{RoutingConfig, RoutingShard};
use routing_model::manifest::ROUTING_CONFIG_LABEL;
use tokio_util::sync::CancellationToken;

use super::{Ctx, Listed, ReconcileError};
use crate::report::shard_status;
use crate::report::writer as report;
use crate::snapshot::ObjectKey;
use crate::source::Readiness;

/// Longest label value: a RoutingConfig with a longer name can have no shards.
pub const MAX_LABEL_VALUE: usize = 63;

/// The name of the RoutingConfig `shard` belongs to, if it is labelled.
pub fn config_of(shard: &RoutingShard) -> Option<&str> {
    shard.labels().get(ROUTING_CONFIG_LABEL).map(String::as_str)
}

/// The shards of the table `key`, by name.
pub fn members(ctx: &Ctx, key: &ObjectKey) -> Vec<Arc<RoutingShard>> {
    let mut shards: Vec<Arc<RoutingShard>> = ctx
        .shards
        .state()
        .into_iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(key.namespace.as_str())
                && config_of(s) == Some(key.name.as_str())
        })
        .collect();
    shards.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    shards
}

/// Whether the shard watch has delivered every shard of the table `key` that the API server
/// has now, at the generations it has: `shards` (what the watch delivered) must be exactly what
/// a list of their metadata returns. The leader asks before it gives a table a new version, so
/// no version ever misses a shard written before it (a RoutingConfig applied after its shards
/// can arrive first, the watches being separate).
pub async fn caught_up(
    ctx: &Ctx,
    key: &ObjectKey,
    shards: &[Arc<RoutingShard>],
) -> Result<bool, ReconcileError> {
    if key.name.len() > MAX_LABEL_VALUE {
        // No label can name it, so no shard can join it.
        return Ok(shards.is_empty());
    }
    let api: Api<RoutingShard> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let selector = format!("{ROUTING_CONFIG_LABEL}={}", key.name);
    let listed = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| ReconcileError::List(key.to_string(), e))?;
    let id = |m: &kube::api::ObjectMeta| (m.name.clone(), m.uid.clone(), m.generation);
    let mut now: Vec<_> = listed.items.iter().map(|o| id(&o.metadata)).collect();
    let mut seen: Vec<_> = shards.iter().map(|s| id(&s.metadata)).collect();
    now.sort();
    seen.sort();
    Ok(now == seen)
}

/// Notes the shard watch's first list.
pub fn event_hook(listed: Listed, shards_listed: Readiness) -> impl FnMut(&watcher::Event<RoutingShard>) {
    move |event| {
        if matches!(event, watcher::Event::InitDone) {
            shards_listed.set();
            listed.done("routingshards");
        }
    }
}

/// Maps a changed shard to the tables it concerns: the one it belongs to, and the one it
/// belonged to when last seen.
#[derive(Default)]
pub struct Tables {
    last: Mutex<HashMap<(String, String), String>>,
}

impl Tables {
    /// The tables to reconcile for a change of `shard`.
    pub fn of(&self, shard: &RoutingShard) -> Vec<ObjectRef<RoutingConfig>> {
        let Some(namespace) = shard.namespace() else {
            return Vec::new();
        };
        let id = (namespace.clone(), shard.name_any());
        let now = config_of(shard).map(str::to_owned);
        let deleted = shard.metadata.deletion_timestamp.is_some();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = match (&now, deleted) {
            (Some(config), false) => last.insert(id, config.clone()),
            _ => last.remove(&id),
        };
        now.into_iter()
            .chain(before)
            .map(|config| ObjectRef::new(&config).within(&namespace))
            .collect()
    }
}

/// While this replica leads, keeps the status of shards whose RoutingConfig does not exist.
pub async fn orphan_loop(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let period = Duration::from_secs(2);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        if !*ctx.leader.borrow() || !ctx.shards_listed.is_ready() {
            continue;
        }
        for shard in ctx.shards.state() {
            let Some(namespace) = shard.namespace() else {
                continue;
            };
            let has_config = config_of(&shard).is_some_and(|name| {
                ctx.configs
                    .get(&ObjectRef::new(name).within(&namespace))
                    .is_some()
            });
            if has_config {
                continue;
            }
            let desired = shard_status::desired(&shard_status::Input {
                shard: &shard,
                table: None,
                now: SystemTime::now(),
            });
            report::write_shard_status(&ctx.report, &shard, desired).await;
        }
    }
}
