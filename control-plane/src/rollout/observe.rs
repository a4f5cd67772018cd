//! What the data planes of a rollout report, counted by cohort: those within the step's share
//! should have the new table, the others the previous one.

use std::collections::BTreeMap;

use routing_model::crd::{DataPlaneRejection, ReplicaRollout, RolloutDataPlanes, VersionCounts};
use routing_model::protocol::{PlacementHealth, SnapshotRef};
use routing_model::rollout::{cohort, in_share};

use crate::push::registry::Record;

/// The data planes of one rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Within the share: should have the new table.
    pub target: VersionCounts,
    /// Outside it: keep the previous one.
    pub previous: VersionCounts,
    /// Connected data planes within the share that have neither applied nor rejected the new
    /// table yet.
    pub pending: i64,
    /// A data plane that rejected the new table, and its error.
    pub first_rejection: Option<(String, String)>,
    /// Requests and failures per placement that the data planes of the share report on the new
    /// table.
    pub target_health: BTreeMap<String, PlacementHealth>,
    /// The same, from the data planes on the previous table: the baseline.
    pub previous_health: BTreeMap<String, PlacementHealth>,
}

fn add_counts(into: &mut VersionCounts, from: &VersionCounts) {
    into.connected += from.connected;
    into.applied += from.applied;
    into.rejected += from.rejected;
}

fn add(into: &mut BTreeMap<String, PlacementHealth>, from: &BTreeMap<String, PlacementHealth>) {
    for (placement, h) in from {
        let sum = into.entry(placement.clone()).or_default();
        sum.requests = sum.requests.saturating_add(h.requests);
        sum.errors = sum.errors.saturating_add(h.errors);
    }
}

impl Observed {
    /// Counts `records` of the RoutingConfig `routing_config` for a rollout of `target` to
    /// `percent` % of them, the others on `previous`.
    ///
    /// A rejection of the new table counts even from a data plane that disconnected since: a
    /// data plane that refuses a table and restarts must not hide the refusal.
    pub fn count<'a>(
        records: impl IntoIterator<Item = &'a Record>,
        routing_config: &str,
        target: &SnapshotRef,
        previous: Option<&SnapshotRef>,
        percent: i32,
    ) -> Self {
        let mut observed = Observed::default();
        for r in records.into_iter().filter(|r| r.routing_config == routing_config) {
            let rejected_target = r.nacked.as_ref().is_some_and(|n| n.snapshot == *target);
            if rejected_target {
                observed.target.rejected += 1;
                if observed.first_rejection.is_none() {
                    let error = r.nacked.as_ref().map(|n| n.error.clone()).unwrap_or_default();
                    observed.first_rejection = Some((r.id.clone(), error));
                }
            }
            if !r.connected {
                continue;
            }
            let reported = |on: &SnapshotRef| {
                r.health
                    .as_ref()
                    .filter(|h| h.snapshot == *on)
                    .map(|h| &h.placements)
            };
            if in_share(cohort(&r.id), percent) {
                if let Some(h) = reported(target) {
                    add(&mut observed.target_health, h);
                }
                observed.target.connected += 1;
                if r.acked.as_ref() == Some(target) {
                    observed.target.applied += 1;
                } else if !rejected_target {
                    observed.pending += 1;
                }
            } else {
                if let Some(h) = previous.and_then(reported) {
                    add(&mut observed.previous_health, h);
                }
                observed.previous.connected += 1;
                if previous.is_some_and(|p| r.acked.as_ref() == Some(p)) {
                    observed.previous.applied += 1;
                }
                if previous.is_some_and(|p| r.nacked.as_ref().is_some_and(|n| n.snapshot == *p)) {
                    observed.previous.rejected += 1;
                }
            }
        }
        observed
    }

    /// This replica's part, as it reports it in its entry of the status, for a rollout of
    /// `target_version` to `percent` %.
    pub fn to_replica(&self, target_version: i64, percent: i32) -> ReplicaRollout {
        ReplicaRollout {
            target_version,
            percent: i64::from(percent),
            target: self.target.clone(),
            previous: self.previous.clone(),
            pending: self.pending,
            rejection: self
                .first_rejection
                .as_ref()
                .map(|(data_plane, error)| DataPlaneRejection {
                    data_plane: data_plane.clone(),
                    version: target_version,
                    error: crate::report::status::truncate(error, 1024),
                }),
            target_health: self.target_health.clone(),
            previous_health: self.previous_health.clone(),
        }
    }

    /// Adds another replica's part. A replica that does not serve the step yet (another
    /// version or share, or no rollout at all) counts all its data planes as pending: the step
    /// waits for it rather than judge without them.
    pub fn add_replica(
        &mut self,
        entry: &routing_model::crd::ReplicaReport,
        target_version: i64,
        percent: i32,
    ) {
        match &entry.rollout {
            Some(r) if r.target_version == target_version && r.percent == i64::from(percent) => {
                add_counts(&mut self.target, &r.target);
                add_counts(&mut self.previous, &r.previous);
                self.pending += r.pending;
                if self.first_rejection.is_none()
                    && let Some(rej) = &r.rejection
                {
                    self.first_rejection = Some((rej.data_plane.clone(), rej.error.clone()));
                }
                add(&mut self.target_health, &r.target_health);
                add(&mut self.previous_health, &r.previous_health);
            }
            _ => self.pending += entry.connected,
        }
    }

    /// The counts as the status reports them.
    pub fn to_status(&self) -> RolloutDataPlanes {
        RolloutDataPlanes {
            target: self.target.clone(),
            previous: self.previous.clone(),
        }
    }
}
