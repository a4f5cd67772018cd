//! One table: a RoutingConfig and the RoutingShards labelled for it.
//!
//! Each reconcile composes the table from the current objects (reusing the last composition
//! while none of them changed) and decides what to serve:
//! - the table is valid and already served: nothing new;
//! - valid, and the signed record in the RoutingConfig's status names its hash: serve it under
//!   the recorded version (a replica following the leader, or a leader restarted);
//! - valid and new, on the leader: give it the next version, record that (signed) in the status,
//!   and only then serve it, so no replica or successor ever serves another table under that
//!   version;
//! - valid and new, on another replica: keep serving what it serves until the leader's record
//!   names the new table;
//! - refused (an object breaks a rule, a customer is in two objects, or it is too large to
//!   deliver): the last valid table keeps being served. A replica that has none (it started
//!   meanwhile) rebuilds the recorded one from the copies in the statuses
//!   ([`crate::served_spec::recover`]).
//!
//! The next version is one above both the recorded version and the served one, and at least the
//! sum of the generations of the table's objects. A table without shards therefore has its
//! RoutingConfig's generation as version, as before tables had shards; and should the record be
//! lost or forged, versions still rise with every edit of an object, so data planes (which refuse
//! an older version of the same lineage) are only held back after shards were deleted.

use futures::StreamExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kube::ResourceExt;
use kube::runtime::controller::Action;
use routing_model::ValidatedConfig;
use routing_model::compose::{CompositionErrors, Member, Members, Shard, compose, recompose};
use routing_model::crd::{RolloutPhase, RoutingConfig, RoutingShard};
use routing_model::protocol::SnapshotRef;

use super::{Ctx, ReconcileError, shards, staged};
use crate::metrics::ReconcileResult;
use crate::report::shard_status::{self, Refusal, ServedTable, Table};
use crate::report::status::{Current, Served};
use crate::report::writer::{self as report, Report};
use crate::served_spec::{self, NotRecovered, Owner, Trusted};
use crate::snapshot::{ObjectKey, Offered, ServedMembers, ServedShard, Snapshot};

/// How long a table's objects must have stayed unchanged before the leader gives it a new
/// version: `kubectl apply -f DIR` writes a RoutingConfig and its shards one by one, and the
/// watches deliver them a moment apart; one version for the lot, never one with some of them.
pub const QUIET: Duration = Duration::from_millis(200);
/// Longest a steady stream of changes can delay a new version.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// A table's composition, and what it was composed of.
pub struct Composed {
    /// Which objects, at which generations (a change of any is a new composition).
    fingerprint: Vec<(String, String, i64)>,
    /// When this composition was first made (its objects last changed).
    first_seen: Instant,
    /// The table, or every error naming its object.
    pub result: Result<ValidatedConfig, CompositionErrors>,
    /// The sum of the objects' generations: the lowest version a new table may have.
    pub floor: i64,
    /// The last valid composition (this one, or the one before it when this one is refused),
    /// which the next composition starts from ([`recompose`]).
    base: Option<Arc<Base>>,
}

/// A valid table and the objects it was composed of.
struct Base {
    obj: Arc<RoutingConfig>,
    shards: Vec<Arc<RoutingShard>>,
    table: ValidatedConfig,
}

/// The members of the table `key` in the objects `obj` and `shards`.
fn members_of<'a>(
    key: &'a ObjectKey,
    obj: &'a RoutingConfig,
    shards: &'a [Arc<RoutingShard>],
) -> Members<'a> {
    Members {
        namespace: &key.namespace,
        name: &key.name,
        config: &obj.spec,
        shards: shards
            .iter()
            .map(|s| Shard {
                name: s.metadata.name.as_deref().unwrap_or_default(),
                customers: &s.spec.customer_to_placement,
            })
            .collect(),
    }
}

fn fingerprint(obj: &RoutingConfig, shards: &[Arc<RoutingShard>]) -> Vec<(String, String, i64)> {
    let id = |name: String, uid: Option<String>, generation: Option<i64>| {
        (name, uid.unwrap_or_default(), generation.unwrap_or(0))
    };
    std::iter::once(id(String::new(), obj.uid(), obj.metadata.generation))
        .chain(
            shards
                .iter()
                .map(|s| id(s.name_any(), s.uid(), s.metadata.generation)),
        )
        .collect()
}

/// The composition of `obj` with `shards`, reused from the last reconcile while unchanged, and
/// made from the last valid one when only some objects changed.
fn composed(
    ctx: &Ctx,
    key: &ObjectKey,
    obj: &Arc<RoutingConfig>,
    shards: &[Arc<RoutingShard>],
) -> Arc<Composed> {
    let print = fingerprint(obj, shards);
    let cached = ctx
        .tables
        .compositions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(key)
        .cloned();
    if let Some(c) = cached.as_ref().filter(|c| c.fingerprint == print) {
        return c.clone();
    }
    let started = Instant::now();
    let members = members_of(key, obj, shards);
    let last = cached.and_then(|c| c.base.clone());
    let result = match &last {
        Some(b) => recompose(&members_of(key, &b.obj, &b.shards), &b.table, &members),
        None => compose(&members),
    };
    ctx.metrics
        .snapshot_build
        .observe(started.elapsed().as_secs_f64());
    let floor = print.iter().map(|(_, _, g)| *g).sum();
    let base = match &result {
        Ok(table) => Some(Arc::new(Base {
            obj: obj.clone(),
            shards: shards.to_vec(),
            table: table.clone(),
        })),
        Err(_) => last,
    };
    let composed = Arc::new(Composed {
        fingerprint: print,
        first_seen: started,
        result,
        floor,
        base,
    });
    ctx.tables
        .compositions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key.clone(), composed.clone());
    composed
}

/// The objects of a table about to be served as `version`: each shard keeps the version since
/// which the served table holds its generation, from the table served before or, after a
/// restart, from its status.
pub(super) fn members_for(
    obj: &Arc<RoutingConfig>,
    shards: &[Arc<RoutingShard>],
    previous: Option<&ServedMembers>,
    version: i64,
) -> ServedMembers {
    let since = |s: &RoutingShard| {
        let name = s.name_any();
        let same = |generation: Option<i64>| generation == s.metadata.generation;
        previous
            .and_then(|p| p.shard(&name, s.metadata.uid.as_deref()))
            .filter(|h| same(h.object.metadata.generation))
            .map(|h| h.since)
            .or_else(|| {
                s.status
                    .as_ref()
                    .filter(|st| same(st.served_generation))
                    .and_then(|st| st.version)
                    .filter(|v| *v <= version)
            })
            .unwrap_or(version)
    };
    ServedMembers {
        config: obj.clone(),
        shards: shards
            .iter()
            .map(|s| {
                (
                    s.name_any(),
                    ServedShard {
                        object: s.clone(),
                        since: since(s),
                    },
                )
            })
            .collect(),
    }
}

/// The next version of a table: above the recorded and the served ones, and at least `floor`.
pub fn next_version(recorded: Option<i64>, served: Option<i64>, floor: i64) -> i64 {
    let above = |v: Option<i64>| v.map_or(1, |v| v.saturating_add(1));
    above(recorded).max(above(served)).max(floor)
}

/// Reconciles one table.
pub(super) async fn reconcile(obj: Arc<RoutingConfig>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if !ctx.shards_listed.is_ready() {
        // A table composed before its shards are known would be served without them.
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let name = obj.name_any();
    let key = ObjectKey::of(&obj).ok_or_else(|| ReconcileError::MissingField(name.clone(), "namespace"))?;
    let uid = obj
        .uid()
        .ok_or_else(|| ReconcileError::MissingField(key.to_string(), "uid"))?;
    let generation = obj.metadata.generation.unwrap_or(0);
    let shards = shards::members(&ctx, &key);
    let table = composed(&ctx, &key, &obj, &shards);
    let leader = *ctx.leader.borrow();

    let recorded = obj.status.as_ref().and_then(|s| s.snapshot.as_ref());
    let owner = Owner {
        namespace: &key.namespace,
        name: &key.name,
        uid: &uid,
        generation,
    };
    let trusted: Option<Trusted> = match recorded.map(|r| served_spec::check(&ctx.status_key, owner, r)) {
        Some(Ok(t)) => t,
        Some(Err(untrusted)) => {
            report::report_untrusted(&ctx.report, &obj, &key, recorded.expect("recorded"), &untrusted).await;
            None
        }
        None => None,
    };
    let served_now = || served_in(&ctx, &key, &uid);
    let mut served = served_now();
    let mut written = None;
    let recorded_rollout = staged::recorded(&ctx, &obj, &key, &uid);
    // What status.rollout says after this reconcile (the recorded one unless decided otherwise),
    // and when a running rollout wants another look.
    let mut rollout = recorded_rollout.clone();
    let mut recheck = None;
    // The table as the rollout code sees it, with what this replica serves at the moment.
    let view = |served: Option<Arc<Snapshot>>| staged::Table {
        obj: &obj,
        key: &key,
        uid: &uid,
        generation,
        shards: &shards,
        composed: &table,
        served,
        trusted: trusted.as_ref(),
        recorded: recorded_rollout.as_ref(),
    };
    let current_table = match &table.result {
        Ok(config) if served.as_ref().is_some_and(|s| s.hash == config.hash()) => {
            ctx.store.clear_rejection(&key);
            settled(&ctx, &key);
            ctx.metrics.reconciled(ReconcileResult::Unchanged);
            Current::Valid { hash: config.hash() }
        }
        Ok(config) => {
            let hash = config.hash();
            let previous = served.as_ref().and_then(|s| s.members.clone());
            if let Some(t) = trusted.as_ref().filter(|t| t.hash == hash) {
                // The leader gave this table its version (or this replica did, before a
                // restart): serve it under that version; the canary of a rollout that
                // completed is that version already.
                let target = SnapshotRef {
                    lineage: uid.clone(),
                    version: t.version,
                    hash,
                };
                if ctx.store.promote(&key, &target) {
                    Current::Valid { hash }
                } else {
                    let members = members_for(&obj, &shards, previous.as_deref(), t.version);
                    serve(&ctx, &key, &uid, t.version, config.clone(), members)
                }
            } else if leader && staged::owns(recorded_rollout.as_ref(), hash) {
                // Its rollout is running (or stopped it): the rollout decides what is served.
                if served.is_none()
                    && let (Some(t), Some(r)) = (&trusted, recorded)
                {
                    // A new leader, or this one restarted: the previous table first.
                    recover(&ctx, &obj, &key, &uid, t, r, &shards).await;
                    served = served_now();
                }
                let outcome = staged::follow(&ctx, &view(served.clone()), config).await?;
                rollout = outcome.rollout;
                recheck = outcome.recheck;
                written = outcome.written;
                outcome.current
            } else if leader && let Some(wait) = settling(&ctx, &key, &table) {
                // Its objects changed a moment ago: more may be on their way.
                return Ok(Action::requeue(wait));
            } else if leader && !shards::caught_up(&ctx, &key, &shards).await? {
                // The shard watch has not delivered every shard the API server has: a version
                // now could miss some.
                return Ok(Action::requeue(QUIET));
            } else if leader && let Some(outcome) = staged::begin(&ctx, &view(served.clone()), config).await?
            {
                rollout = outcome.rollout;
                recheck = outcome.recheck;
                written = outcome.written;
                outcome.current
            } else if leader {
                let version = view(served.clone()).next_version();
                let reference = SnapshotRef {
                    lineage: uid.clone(),
                    version,
                    hash,
                };
                match ctx.store.deliverable(&key, &reference, config) {
                    Err(error) => refuse(&ctx, &key, &uid, generation, "InvalidSpec", error),
                    Ok(_) => {
                        let members = Arc::new(members_for(&obj, &shards, previous.as_deref(), version));
                        // At once, though it has a rollout: the break-glass, said in the status.
                        // A rollout this replaces (of another table) ends with it.
                        rollout = staged::immediate(
                            obj.spec.rollout.as_ref(),
                            &reference,
                            generation,
                            served.as_ref().map(|s| s.version),
                        )
                        .or_else(|| {
                            rollout.take().filter(|r| {
                                !matches!(r.phase, RolloutPhase::Progressing | RolloutPhase::Paused)
                            })
                        });
                        // Recorded before it is served: no other replica, and no successor, can
                        // serve another table under this version.
                        let pending = Served {
                            version,
                            hash,
                            accepted_at: SystemTime::now(),
                            config,
                            members: Some(&members),
                        };
                        let current_table = Current::Valid { hash };
                        let status = report::write_status(
                            &ctx.report,
                            &Report {
                                obj: &obj,
                                key: &key,
                                uid: &uid,
                                generation,
                                current_table: &current_table,
                                served: Some(pending),
                                shards: shards.len(),
                                current: obj.status.as_ref(),
                                rollout: rollout.as_ref(),
                            },
                        )
                        .await?;
                        written = Some(status);
                        serve(
                            &ctx,
                            &key,
                            &uid,
                            version,
                            config.clone(),
                            Arc::unwrap_or_clone(members),
                        )
                    }
                }
            } else {
                // Not this replica's to number: wait for the leader's record; meanwhile, with
                // nothing served, serve the recorded table.
                if served.is_none()
                    && let (Some(t), Some(r)) = (&trusted, recorded)
                {
                    recover(&ctx, &obj, &key, &uid, t, r, &shards).await;
                    served = served_now();
                }
                if let (Some(t), Some(s)) = (&trusted, &served)
                    && t.hash == s.hash
                    && t.version > s.version
                {
                    // The served table under a newer version: a halted rollout restored it.
                    let offered = ctx.store.offer_table(
                        &key,
                        &uid,
                        t.version,
                        Ok(ValidatedConfig::clone(&s.config)),
                        s.members.clone(),
                    );
                    crate::source::record(&ctx.metrics, &ctx.store, &key, t.version, &offered);
                    served = served_now();
                }
                // The leader's rollout of this table, at the step it recorded.
                staged::follow_recorded(&ctx, &view(served.clone()), config);
                ctx.metrics.reconciled(ReconcileResult::Unchanged);
                Current::Valid { hash }
            }
        }
        Err(errors) => {
            let reason = if errors.about(&Member::Config).next().is_some() {
                "InvalidSpec"
            } else {
                "InvalidShards"
            };
            let refused = refuse(&ctx, &key, &uid, generation, reason, errors.to_string());
            if served.is_none()
                && let (Some(t), Some(r)) = (&trusted, recorded)
            {
                recover(&ctx, &obj, &key, &uid, t, r, &shards).await;
            }
            refused
        }
    };

    if *ctx.leader.borrow() {
        let served = served_now();
        let served_view = served.as_deref().map(Served::of);
        report::write_status(
            &ctx.report,
            &Report {
                obj: &obj,
                key: &key,
                uid: &uid,
                generation,
                current_table: &current_table,
                served: served_view,
                shards: shards.len(),
                current: written.as_ref().or(obj.status.as_ref()),
                rollout: rollout.as_ref(),
            },
        )
        .await?;
        write_shard_statuses(&ctx, &key, &table, served.as_deref(), &shards).await;
    }
    ctx.metrics.rollout(&key.to_string(), rollout.as_ref());
    Ok(recheck.map_or_else(Action::await_change, Action::requeue))
}

/// How much longer the new table of `key` should wait before it gets a version: until its
/// objects have been unchanged for [`QUIET`], but no longer than [`MAX_WAIT`] after the first
/// change it waited for.
fn settling(ctx: &Ctx, key: &ObjectKey, table: &Composed) -> Option<Duration> {
    let now = Instant::now();
    let mut pending = ctx
        .tables
        .pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let since = *pending.entry(key.clone()).or_insert(now);
    let until = (table.first_seen + QUIET).min(since + MAX_WAIT);
    if now >= until {
        pending.remove(key);
        None
    } else {
        Some(until - now)
    }
}

/// The table of `key` is served as it is: nothing waits.
fn settled(ctx: &Ctx, key: &ObjectKey) {
    ctx.tables
        .pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(key);
}

/// The snapshot served for `key` in the lineage `uid`.
fn served_in(ctx: &Ctx, key: &ObjectKey, uid: &str) -> Option<Arc<Snapshot>> {
    ctx.store
        .get(key)
        .and_then(|s| s.served)
        .filter(|s| s.lineage == uid)
}

/// Serves `config` as `version`, and says so.
fn serve(
    ctx: &Ctx,
    key: &ObjectKey,
    uid: &str,
    version: i64,
    config: ValidatedConfig,
    members: ServedMembers,
) -> Current {
    let hash = config.hash();
    let offered = ctx
        .store
        .offer_table(key, uid, version, Ok(config), Some(Arc::new(members)));
    crate::source::record(&ctx.metrics, &ctx.store, key, version, &offered);
    match ctx.store.get(key).and_then(|s| s.rejection) {
        Some(r) if offered == Offered::Rejected => Current::Refused {
            reason: "InvalidSpec",
            error: r.error,
        },
        _ => Current::Valid { hash },
    }
}

/// Records that the current table of `key` is refused, and says so.
fn refuse(
    ctx: &Ctx,
    key: &ObjectKey,
    uid: &str,
    generation: i64,
    reason: &'static str,
    error: String,
) -> Current {
    let offered = ctx.store.offer(key, uid, generation, Err(error.clone()));
    crate::source::record(&ctx.metrics, &ctx.store, key, generation, &offered);
    Current::Refused { reason, error }
}

/// Serves the table the trusted record names, rebuilt from the copies in the statuses, when
/// this replica has none; reports what stops it otherwise.
async fn recover(
    ctx: &Ctx,
    obj: &RoutingConfig,
    key: &ObjectKey,
    uid: &str,
    trusted: &Trusted,
    recorded: &routing_model::crd::SnapshotStatus,
    shards: &[Arc<RoutingShard>],
) {
    let max = routing_model::parse::DEFAULT_MAX_CONFIG_BYTES;
    match served_spec::recover(trusted, obj, shards, max) {
        Ok(recovered) => {
            ctx.store.offer_table(
                key,
                uid,
                recovered.version,
                Ok(recovered.config),
                Some(Arc::new(recovered.members)),
            );
            tracing::info!(target: "audit", object = %key, version = recovered.version, "recovered the served table from the status (signature verified, rebuilt to its hash); serving it while the current table is refused or not yet numbered");
        }
        Err(NotRecovered::Untrusted(untrusted)) => {
            report::report_untrusted(&ctx.report, obj, key, recorded, &untrusted).await;
        }
        Err(NotRecovered::Incomplete(why)) => {
            report::report_incomplete(&ctx.report, obj, key, recorded, &why).await
        }
    }
}

/// Writes the status of every shard of the table.
async fn write_shard_statuses(
    ctx: &Ctx,
    key: &ObjectKey,
    table: &Composed,
    served: Option<&Snapshot>,
    shards: &[Arc<RoutingShard>],
) {
    let object = format!("RoutingConfig {key}");
    let too_large = ctx.store.get(key).and_then(|s| s.rejection).map(|r| r.error);
    let refused = match &table.result {
        Err(errors) => Some(Refusal::Invalid(errors)),
        Ok(config) if !served.is_some_and(|s| s.hash == config.hash()) => {
            too_large.as_deref().map(Refusal::Other)
        }
        Ok(_) => None,
    };
    let members = served.and_then(|s| s.members.as_deref().map(|m| (s.version, m)));
    let view = Table {
        object: &object,
        refused,
        served: members.map(|(version, members)| ServedTable { version, members }),
    };
    let now = SystemTime::now();
    // Only statuses that changed are written (shards unchanged since the served table took them
    // keep theirs), several at a time: each is a write of the whole shard.
    let writes: Vec<_> = shards
        .iter()
        .map(|shard| {
            let desired = shard_status::desired(&shard_status::Input {
                shard,
                table: Some(view),
                now,
            });
            (shard, desired)
        })
        .filter(|(shard, desired)| shard.status.as_ref() != Some(desired))
        .collect();
    futures::stream::iter(writes)
        .for_each_concurrent(SHARD_STATUS_WRITES, |(shard, desired)| {
            report::write_shard_status(&ctx.report, shard, desired)
        })
        .await;
}

/// Shard statuses written at once.
const SHARD_STATUS_WRITES: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_rise_above_the_record_and_what_is_served_and_follow_the_generations() {
        // A table without shards: its RoutingConfig's generation.
        assert_eq!(next_version(None, None, 1), 1);
        assert_eq!(next_version(Some(1), Some(1), 3), 3);
        // A shard edited: one more.
        assert_eq!(next_version(Some(7), Some(7), 5), 8);
        // A record lost or forged away: still above what this replica serves, and the sum of
        // generations.
        assert_eq!(next_version(None, Some(9), 4), 10);
        assert_eq!(next_version(None, None, 12), 12);
        assert_eq!(next_version(Some(i64::MAX), None, 1), i64::MAX);
    }
}
