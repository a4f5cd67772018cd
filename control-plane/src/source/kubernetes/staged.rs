//! The leader's side of a staged rollout in a cluster: begin one for a new table, look at the
//! running one, and carry out what [`crate::rollout::judge`] decides. Every decision that
//! changes what is served is recorded in the status first (signed), then served, as a new
//! version is: a successor finds the step in the status and resumes it, neither skipping nor
//! repeating it.
//!
//! While a rollout runs, `status.snapshot` keeps naming the previous table (which the data
//! planes outside the share keep, and which any replica can rebuild from the status), and
//! `status.rollout` names the new one and the share. A halt or an abort serves the previous
//! table again as a new version, so the data planes that had the new one take it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::ResourceExt;
use routing_model::ValidatedConfig;
use routing_model::crd::{RolloutPhase, RolloutStatus, RoutingConfig, RoutingConfigStatus, RoutingShard};
use routing_model::protocol::SnapshotRef;
use routing_model::rollout::RolloutSpec;

use super::reconcile::{Composed, members_for, next_version};
use super::{Ctx, ReconcileError};
use crate::report::replicas;
use crate::report::status::{Current, Served};
use crate::report::writer::{self as report, Report};
use crate::rollout::judge::{Controls, Next, RECHECK, judge};
use crate::rollout::observe::Observed;
use crate::rollout::record::{self, Owner};
use crate::rollout::{ABORT_ANNOTATION, PAUSE_ANNOTATION, PROMOTE_ANNOTATION};
use crate::served_spec::Trusted;
use crate::snapshot::{Delivery, ObjectKey, Snapshot};

/// The immediate record: a table served to every data plane at once although the RoutingConfig
/// has a `spec.rollout` (`strategy: Immediate`, the break-glass), visible in the status and an
/// Event.
pub(super) fn immediate(
    spec: Option<&RolloutSpec>,
    target: &SnapshotRef,
    generation: i64,
    previous: Option<i64>,
) -> Option<RolloutStatus> {
    // A staged table served at once is the first of its lineage: nothing to roll out against.
    let spec = spec.filter(|s| !s.is_staged())?;
    let mut r = record::begin(spec, target, generation, previous, SystemTime::now());
    r.phase = RolloutPhase::Complete;
    r.step = r.steps + 1;
    r.percent = 100;
    r.summary = record::summary(r.phase, r.step, r.steps, r.percent);
    r.message = Some("spec.rollout.strategy is Immediate: every data plane at once".to_owned());
    r.step_started_at = None;
    Some(r)
}

/// Longest a running rollout goes unlooked at (NACKs and step changes wake it sooner).
const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(5);

/// What a reconcile of a table with a rollout decided.
pub(super) struct Outcome {
    /// The current table, for the status.
    pub current: Current,
    /// `status.rollout`.
    pub rollout: Option<RolloutStatus>,
    /// The status written on the way, if any.
    pub written: Option<RoutingConfigStatus>,
    /// When to look again.
    pub recheck: Option<Duration>,
}

/// The object and the table being reconciled.
pub(super) struct Table<'a> {
    /// The RoutingConfig.
    pub obj: &'a Arc<RoutingConfig>,
    /// Its key.
    pub key: &'a ObjectKey,
    /// Its uid (the lineage).
    pub uid: &'a str,
    /// Its generation.
    pub generation: i64,
    /// Its shards now.
    pub shards: &'a [Arc<RoutingShard>],
    /// Its composition.
    pub composed: &'a Composed,
    /// The table served (the previous one, during a rollout).
    pub served: Option<Arc<Snapshot>>,
    /// The signed record of the served table.
    pub trusted: Option<&'a Trusted>,
    /// The signed record of the rollout.
    pub recorded: Option<&'a RolloutStatus>,
}

impl Table<'_> {
    /// The next version: above the served one, the recorded one, and any rollout's versions.
    pub(super) fn next_version(&self) -> i64 {
        let recorded = [
            self.trusted.map(|t| t.version),
            self.recorded.map(|r| r.target_version),
            self.recorded.and_then(|r| r.revert_version),
        ]
        .into_iter()
        .flatten()
        .max();
        next_version(
            recorded,
            self.served.as_ref().map(|s| s.version),
            self.composed.floor,
        )
    }
}

/// `status.rollout` as stored, when this control plane signed it for this object.
pub(super) fn recorded(ctx: &Ctx, obj: &RoutingConfig, key: &ObjectKey, uid: &str) -> Option<RolloutStatus> {
    let stored = obj.status.as_ref()?.rollout.as_ref()?;
    let owner = Owner {
        namespace: &key.namespace,
        name: &key.name,
        uid,
    };
    match record::verify(owner, stored, &ctx.status_key) {
        Ok(()) => Some(stored.clone()),
        Err(e) => {
            tracing::warn!(target: "audit", object = %key, error = %e, "status.rollout is not signed by this control plane; ignoring it");
            None
        }
    }
}

/// What the annotations of `obj` ask of the rollout of `version`.
fn controls(obj: &RoutingConfig, version: i64) -> Controls {
    let annotations = obj.annotations();
    let names = |a: &str| {
        annotations
            .get(a)
            .is_some_and(|v| v.trim() == version.to_string())
    };
    Controls {
        paused: annotations
            .get(PAUSE_ANNOTATION)
            .is_some_and(|v| v.trim() == "paused"),
        promote: names(PROMOTE_ANNOTATION),
        abort: names(ABORT_ANNOTATION),
    }
}

/// Whether the recorded rollout is of the table `hash` and not complete: the table is the
/// rollout's to serve (or, once it halted, not to serve), not a new one.
pub(super) fn owns(recorded: Option<&RolloutStatus>, hash: routing_model::ContentHash) -> bool {
    recorded.is_some_and(|r| r.target_hash == hash.to_string() && r.phase != RolloutPhase::Complete)
}

/// The leader's look at the recorded rollout of `config` (see [`owns`]).
pub(super) async fn follow(
    ctx: &Ctx,
    t: &Table<'_>,
    config: &ValidatedConfig,
) -> Result<Outcome, ReconcileError> {
    let hash = config.hash();
    let spec = t.obj.spec.rollout.clone().unwrap_or_default();
    let r = t.recorded.expect("owns() checked");
    match r.phase {
        RolloutPhase::Progressing | RolloutPhase::Paused => step(ctx, t, config, r, &spec).await,
        // Not rolled out again: the table stays stopped by its rollout until it changes.
        _ => Ok(Outcome {
            current: Current::Valid { hash },
            rollout: Some(r.clone()),
            written: None,
            recheck: None,
        }),
    }
}

/// Begins the rollout of `config`, a new table; `None` when it is not staged (no staged
/// `spec.rollout`, or nothing served to stage it against): it is served to every data plane at
/// once.
pub(super) async fn begin(
    ctx: &Ctx,
    t: &Table<'_>,
    config: &ValidatedConfig,
) -> Result<Option<Outcome>, ReconcileError> {
    let hash = config.hash();
    let spec = t.obj.spec.rollout.clone().unwrap_or_default();
    let Some(stable) = t.served.as_ref().filter(|_| spec.is_staged()) else {
        return Ok(None);
    };
    let version = t.next_version();
    let reference = SnapshotRef {
        lineage: t.uid.to_owned(),
        version,
        hash,
    };
    if ctx.store.deliverable(t.key, &reference, config).is_err() {
        // Refused as any table that cannot be delivered is, by the caller.
        return Ok(None);
    }
    let begun = record::begin(
        &spec,
        &reference,
        t.generation,
        Some(stable.version),
        SystemTime::now(),
    );
    let written = write(ctx, t, hash, Some(Served::of(stable)), &begun).await?;
    let members = members_for(t.obj, t.shards, stable.members.as_deref(), version);
    let offered = ctx.store.offer_delivered(
        t.key,
        t.uid,
        version,
        Ok(config.clone()),
        Some(Arc::new(members)),
        Delivery::Staged {
            percent: begun.percent as i32,
        },
    );
    crate::source::record(&ctx.metrics, &ctx.store, t.key, version, &offered);
    tracing::info!(target: "audit", object = %t.key, version, previous = stable.version, percent = begun.percent, "rollout begun");
    Ok(Some(Outcome {
        current: Current::Valid { hash },
        rollout: Some(begun),
        written: Some(written),
        recheck: Some(RECHECK),
    }))
}

/// On a replica that does not lead: serves the leader's recorded rollout of `config` at the
/// recorded share (the store's canary), so every replica serves each data plane the version
/// its cohort should have. Only a record the leader signed is followed.
pub(super) fn follow_recorded(ctx: &Ctx, t: &Table<'_>, config: &ValidatedConfig) {
    let hash = config.hash();
    let Some(r) = t
        .recorded
        .filter(|r| matches!(r.phase, RolloutPhase::Progressing | RolloutPhase::Paused))
        .filter(|r| r.target_hash == hash.to_string())
    else {
        return;
    };
    // Without the previous table, the new one would reach every data plane.
    let Some(stable) = t.served.as_ref().filter(|s| s.version < r.target_version) else {
        return;
    };
    serve_step(ctx, t, config, stable, r);
}

/// Serves the recorded step `r` of `config` (against the served `stable`): the store's canary at
/// the recorded share, staged anew when this replica has none (it started, or became leader,
/// mid-rollout). Returns the canary's identity.
fn serve_step(
    ctx: &Ctx,
    t: &Table<'_>,
    config: &ValidatedConfig,
    stable: &Snapshot,
    r: &RolloutStatus,
) -> SnapshotRef {
    let target = SnapshotRef {
        lineage: t.uid.to_owned(),
        version: r.target_version,
        hash: config.hash(),
    };
    let staged = ctx
        .store
        .get(t.key)
        .and_then(|s| s.canary)
        .filter(|c| c.target.reference() == target);
    if staged.is_some() {
        ctx.store.set_share(t.key, &target, r.percent as i32);
        return target;
    }
    let members = members_for(t.obj, t.shards, stable.members.as_deref(), r.target_version);
    let offered = ctx.store.offer_delivered(
        t.key,
        t.uid,
        r.target_version,
        Ok(config.clone()),
        Some(Arc::new(members)),
        Delivery::Staged {
            percent: r.percent as i32,
        },
    );
    crate::source::record(&ctx.metrics, &ctx.store, t.key, r.target_version, &offered);
    target
}

/// Looks at the running rollout `r` of `config` and carries out the decision.
async fn step(
    ctx: &Ctx,
    t: &Table<'_>,
    config: &ValidatedConfig,
    r: &RolloutStatus,
    spec: &RolloutSpec,
) -> Result<Outcome, ReconcileError> {
    let hash = config.hash();
    let waiting = |rollout: RolloutStatus| Outcome {
        current: Current::Valid { hash },
        rollout: Some(rollout),
        written: None,
        recheck: Some(RECHECK),
    };
    let Some(stable) = t.served.as_ref() else {
        // The previous table is not rebuilt yet (the caller recovers it from the status):
        // nothing is served for the rollout until it is, or the new table would reach all.
        return Ok(waiting(r.clone()));
    };
    let target = serve_step(ctx, t, config, stable, r);
    let records = ctx.registry.list();
    let mut observed = Observed::count(
        &records,
        &t.key.to_string(),
        &target,
        Some(&stable.reference()),
        r.percent as i32,
    );
    // The data planes of the other live replicas, as their entries say.
    let entries = t
        .obj
        .status
        .as_ref()
        .and_then(|s| s.data_planes.as_ref())
        .map(|d| d.replicas.clone())
        .unwrap_or_default();
    for (replica, entry) in entries.iter().filter(|(r, _)| **r != ctx.replica.identity) {
        if replicas::is_live(&ctx.client, &ctx.replica, replica).await {
            observed.add_replica(entry, r.target_version, r.percent as i32);
        }
    }
    let mut controls = controls(t.obj, r.target_version);
    // Break-glass: a rollout whose spec turned `Immediate` (or lost its steps) goes everywhere.
    controls.promote |= !spec.is_staged();
    let now = SystemTime::now();
    let next = judge(spec, r, &observed, controls, now);
    let mut decided = match &next {
        Next::Halt { .. } | Next::Abort { .. } => record::apply(r, spec, &next, Some(t.next_version()), now),
        _ => record::apply(r, spec, &next, None, now),
    };
    decided.data_planes = Some(observed.to_status());
    let outcome =
        |rollout: RolloutStatus, written: Option<RoutingConfigStatus>, recheck: Option<Duration>| Outcome {
            current: Current::Valid { hash },
            rollout: Some(rollout),
            written,
            recheck,
        };
    match next {
        Next::Wait { recheck, .. } => Ok(outcome(decided, None, Some(recheck.min(LOOK_AT_LEAST_EVERY)))),
        Next::Pause | Next::Resume => Ok(outcome(decided, None, Some(RECHECK))),
        Next::Step(_) => {
            let written = write(ctx, t, hash, Some(Served::of(stable)), &decided).await?;
            ctx.store.set_share(t.key, &target, decided.percent as i32);
            tracing::info!(target: "audit", object = %t.key, version = r.target_version, step = decided.step, percent = decided.percent, "rollout step");
            Ok(outcome(decided, Some(written), Some(RECHECK)))
        }
        Next::Complete { .. } => {
            let Some(canary) = ctx
                .store
                .get(t.key)
                .and_then(|s| s.canary)
                .filter(|c| c.target.reference() == target)
            else {
                return Ok(waiting(r.clone()));
            };
            let served = Served::of(&canary.target);
            let written = write(ctx, t, hash, Some(served), &decided).await?;
            ctx.store.promote(t.key, &target);
            tracing::info!(target: "audit", object = %t.key, version = r.target_version, "rollout complete");
            Ok(outcome(decided, Some(written), None))
        }
        Next::Halt { .. } | Next::Abort { .. } => {
            let revert = decided.revert_version.expect("a revert version");
            let reason = match &next {
                Next::Abort { .. } => "aborted",
                _ if observed.target.rejected > spec.analysis.max_nacks => "nacks",
                _ => "errors",
            };
            ctx.metrics.rollout_halted(&t.key.to_string(), reason);
            // The previous table, as a new version, for every data plane.
            let restored = Served {
                version: revert,
                accepted_at: now,
                ..Served::of(stable)
            };
            let written = write(ctx, t, hash, Some(restored), &decided).await?;
            let offered = ctx.store.offer_table(
                t.key,
                t.uid,
                revert,
                Ok(ValidatedConfig::clone(&stable.config)),
                stable.members.clone(),
            );
            crate::source::record(&ctx.metrics, &ctx.store, t.key, revert, &offered);
            tracing::warn!(target: "audit", object = %t.key, version = r.target_version, revert, reason = decided.message.as_deref().unwrap_or_default(), "rollout stopped; the previous table is restored");
            Ok(outcome(decided, Some(written), None))
        }
    }
}

/// Writes the status with `served` as the served table and `rollout`, before either is acted
/// on; `hash` is the current table's.
async fn write(
    ctx: &Ctx,
    t: &Table<'_>,
    hash: routing_model::ContentHash,
    served: Option<Served<'_>>,
    rollout: &RolloutStatus,
) -> Result<RoutingConfigStatus, ReconcileError> {
    let current_table = Current::Valid { hash };
    Ok(report::write_status(
        &ctx.report,
        &Report {
            obj: t.obj,
            key: t.key,
            uid: t.uid,
            generation: t.generation,
            current_table: &current_table,
            served,
            shards: t.shards.len(),
            current: t.obj.status.as_ref(),
            rollout: Some(rollout),
        },
    )
    .await?)
}
