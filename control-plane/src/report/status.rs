//! What a RoutingConfig's status should say, computed as a pure function so it can be tested
//! without a cluster and so that equal inputs always give an equal status.
//!
//! The status must not churn: a reconcile that finds nothing new must produce exactly the status
//! already stored, so the control plane can skip the write (and its restarts change nothing).
//! Times therefore have whole-second precision (what the apiserver stores), a condition's
//! `lastTransitionTime` moves only when its `status` changes, and `acceptedAt` is kept while the
//! served version is the same.
//!
//! Conditions follow the Kubernetes API conventions, so tools can trust them: each condition's
//! `observedGeneration` is the `metadata.generation` it was computed for, and it says something
//! about *that* generation. `kubectl wait --for=condition=Synced` (which waits until a condition's
//! `observedGeneration` reaches `metadata.generation` and its status matches) therefore returns
//! only once the current generation is served and every subscribed data plane applied it; a
//! rejected generation is `Synced=False`, never the older served version's `True`.
//!
//! "The current generation" is the RoutingConfig's generation with the RoutingShards labelled
//! for it now: a shard edit can refuse or serve a new table without a new generation of the
//! RoutingConfig, so the `Accepted` message names the version served, and a new one is an Event.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use routing_model::crd::{
    CONDITION_ACCEPTED, CONDITION_SYNCED, DataPlaneRejection, DataPlanesStatus, RolloutPhase, RolloutStatus,
    RoutingConfigStatus, SnapshotStatus,
};
use routing_model::{ContentHash, ValidatedConfig};

use crate::push::registry::Counts;
use crate::served_spec::{TableRecord, bounded_copy};
use crate::snapshot::{ServedMembers, Snapshot};
use crate::status_key::StatusKey;

/// Longest condition message written; the full error stays in the logs and `/debug/snapshots`.
const MAX_MESSAGE: usize = 4096;

/// What the RoutingConfig's current table (its current generation with its current shards) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// It passed every rule (and can be delivered); it is served when the served table has its
    /// hash.
    Valid {
        /// Its content hash.
        hash: ContentHash,
    },
    /// It was refused.
    Refused {
        /// `InvalidSpec` (the RoutingConfig itself is at fault, or the table cannot be
        /// delivered) or `InvalidShards` (only shards are).
        reason: &'static str,
        /// Every problem, naming the objects and keys.
        error: String,
    },
}

/// The table being served, as the status reports it.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// Its version.
    pub version: i64,
    /// Its content hash.
    pub hash: ContentHash,
    /// When it was accepted.
    pub accepted_at: SystemTime,
    /// The table.
    pub config: &'a ValidatedConfig,
    /// The objects it was composed of.
    pub members: Option<&'a ServedMembers>,
}

impl<'a> Served<'a> {
    /// The status's view of a served snapshot.
    pub fn of(snapshot: &'a Snapshot) -> Self {
        Self {
            version: snapshot.version,
            hash: snapshot.hash,
            accepted_at: snapshot.accepted_at,
            config: &snapshot.config,
            members: snapshot.members.as_deref(),
        }
    }

    /// Shards the table holds.
    pub fn shards(&self) -> usize {
        self.members.map_or(0, |m| m.shards.len())
    }
}

/// The inputs of one status computation.
pub struct Input<'a> {
    /// The object's `metadata.generation`.
    pub generation: i64,
    /// The object's `metadata.namespace`, `metadata.name` and `metadata.uid` (its lineage).
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its uid.
    pub uid: &'a str,
    /// The current table.
    pub current_table: &'a Current,
    /// The table served in this lineage, if any.
    pub served: Option<Served<'a>>,
    /// The status currently stored on the object.
    pub current: Option<&'a RoutingConfigStatus>,
    /// Data planes subscribed to the object, against its served snapshot.
    pub data_planes: &'a Counts,
    /// RoutingShards labelled for the object now.
    pub shards: usize,
    /// Now.
    pub now: SystemTime,
    /// Signs the record of the served table.
    pub key: &'a StatusKey,
    /// Bytes of the object's own spec as JSON (what it stores); only read while its current
    /// generation is not the one served, to decide whether a copy of that one fits beside it.
    pub spec_bytes: usize,
    /// The staged rollout of the newest table, as decided (signed here).
    pub rollout: Option<&'a RolloutStatus>,
}

/// A decision worth an Event: it differs from what the stored status already says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The current generation was accepted.
    Accepted {
        /// The condition message.
        message: String,
    },
    /// The current generation was rejected.
    Rejected {
        /// The condition message, naming the bad fields.
        message: String,
    },
    /// Every subscribed data plane applied the served version.
    Synced {
        /// The condition message.
        message: String,
    },
    /// A data plane rejected the served version.
    RejectedByDataPlane {
        /// The condition message, with the data plane's error.
        message: String,
    },
    /// A rollout began a step, paused, resumed, halted, was aborted or completed.
    Rollout {
        /// `RolloutStep`, `RolloutPaused`, `RolloutResumed`, `RolloutHalted`, `RolloutAborted`
        /// or `RolloutComplete`.
        reason: &'static str,
        /// Says which version, step and share, or why it halted.
        message: String,
        /// A halt or an abort.
        warning: bool,
    },
}

/// `still serving ...` for the message of a refused generation.
fn still_serving(served: &Served<'_>) -> String {
    let generation = served
        .members
        .map_or(served.version, ServedMembers::config_generation);
    match served.shards() {
        0 if generation == served.version => {
            format!("still serving generation {generation} ({})", served.hash)
        }
        shards => format!(
            "still serving version {} ({}: generation {generation} of this RoutingConfig with {shards} RoutingShards)",
            served.version, served.hash
        ),
    }
}

/// The status the object should have.
pub fn desired(input: &Input<'_>) -> RoutingConfigStatus {
    let now = whole_seconds(input.now);
    let served = input.served;
    let served_generation = served.map(|s| s.members.map_or(s.version, ServedMembers::config_generation));
    // While the current generation is not the one the served table holds, a copy of that one
    // travels in the status, so a replica started meanwhile can rebuild the table; unless it
    // would not fit beside the object's own spec.
    let copy = served
        .filter(|_| served_generation != Some(input.generation))
        .and_then(|s| s.members.map(|m| bounded_copy(&m.config.spec, input.spec_bytes)));
    let is_current =
        |s: &Served<'_>| matches!(input.current_table, Current::Valid { hash } if *hash == s.hash);
    let current_served = served.filter(is_current);
    let refused = matches!(input.current_table, Current::Refused { .. });
    // The current table is being rolled out (or its rollout halted): not served to everyone,
    // but accepted.
    let rolling = input.rollout.filter(|r| {
        r.phase != RolloutPhase::Complete
            && current_served.is_none()
            && matches!(input.current_table, Current::Valid { hash } if hash.to_string() == r.target_hash)
    });
    let accepted = match (input.current_table, current_served) {
        (Current::Valid { .. }, None) if let Some(r) = rolling => condition(
            CONDITION_ACCEPTED,
            "True",
            "Valid",
            match r.phase {
                RolloutPhase::Halted | RolloutPhase::Aborted => format!(
                    "generation {} accepted as version {}, but its rollout stopped ({:?}): {}",
                    input.generation,
                    r.target_version,
                    r.phase,
                    r.message.as_deref().unwrap_or_default()
                ),
                // Without the step: a step is its own Event, not a new verdict.
                _ => format!(
                    "generation {} accepted; rolling out as version {}",
                    input.generation, r.target_version
                ),
            },
        ),
        (Current::Refused { reason, error }, _) => condition(
            CONDITION_ACCEPTED,
            "False",
            reason,
            truncate(
                &format!(
                    "generation {} rejected; {}{}{error}",
                    input.generation,
                    served.map_or_else(String::new, |s| format!("{}; ", still_serving(&s))),
                    match &copy {
                        Some(Err(bytes)) => format!(
                            "the served generation is not recorded in the status ({bytes} bytes compressed is too large beside this object's own spec), \
                             so a control-plane replica started before this is fixed serves nothing for this object (data planes keep their table); "
                        ),
                        _ => String::new(),
                    },
                ),
                MAX_MESSAGE,
            ),
        ),
        (Current::Valid { .. }, Some(s)) => {
            let spec = s.config.spec();
            let shards = match s.shards() {
                0 => String::new(),
                n => format!(" (with {n} RoutingShards)"),
            };
            let version = if s.version == input.generation {
                String::new()
            } else {
                format!(", served as version {}", s.version)
            };
            condition(
                CONDITION_ACCEPTED,
                "True",
                "Valid",
                format!(
                    "generation {} accepted: {} customers{shards}, {} placements{version}",
                    input.generation,
                    spec.customer_to_placement.len(),
                    spec.placement_to_endpoint.len()
                ),
            )
        }
        (Current::Valid { .. }, None) => condition(
            CONDITION_ACCEPTED,
            "Unknown",
            "Pending",
            format!("generation {} has not been validated yet", input.generation),
        ),
    };
    let synced = match rolling {
        Some(r) => rollout_synced(r, served.map(|s| s.version)),
        None => synced_condition(
            input.generation,
            refused,
            input.data_planes,
            current_served.map(|s| s.version),
            served.map(|s| s.version),
        ),
    };
    let current_conditions = input.current.map_or(&[][..], |c| &c.conditions[..]);
    let conditions = [accepted, synced]
        .into_iter()
        .map(|mut c| {
            c.observed_generation = Some(input.generation);
            c.last_transition_time = current_conditions
                .iter()
                .find(|old| old.type_ == c.type_ && old.status == c.status)
                .map_or_else(|| Time(now), |old| old.last_transition_time.clone());
            c
        })
        .collect();
    let snapshot = served.map(|s| {
        let hash = s.hash.to_string();
        let kept = input
            .current
            .and_then(|c| c.snapshot.as_ref())
            .filter(|old| old.version == s.version && old.hash == hash)
            .map(|old| old.accepted_at.clone());
        let generation = served_generation.unwrap_or(s.version);
        let signature = TableRecord {
            namespace: input.namespace,
            name: input.name,
            uid: input.uid,
            version: s.version,
            hash: &hash,
            generation,
        }
        .sign(input.key);
        SnapshotStatus {
            version: s.version,
            accepted_at: kept.unwrap_or_else(|| Time(whole_seconds(s.accepted_at))),
            generation: Some(generation),
            shards: (s.shards() > 0).then(|| s.shards() as i64),
            signature: Some(signature),
            served_spec: copy.and_then(Result::ok),
            hash,
        }
    });
    let owner = crate::rollout::record::Owner {
        namespace: input.namespace,
        name: input.name,
        uid: input.uid,
    };
    RoutingConfigStatus {
        observed_generation: Some(input.generation),
        conditions,
        snapshot,
        data_planes: Some(data_planes_status(input.data_planes)),
        shards: Some(input.shards as i64),
        rollout: input
            .rollout
            .map(|r| crate::rollout::record::signed(owner, r.clone(), input.key)),
    }
}

/// `Synced` while the current table is being rolled out, or after its rollout stopped: never
/// `True`, since not every data plane has it.
fn rollout_synced(r: &RolloutStatus, served: Option<i64>) -> Condition {
    let others = served.map_or_else(String::new, |v| {
        format!("; the other data planes stay on version {v}")
    });
    let (reason, message) = match r.phase {
        RolloutPhase::Halted => ("RolloutHalted", r.message.clone().unwrap_or_default()),
        RolloutPhase::Aborted => ("RolloutAborted", r.message.clone().unwrap_or_default()),
        RolloutPhase::Paused => (
            "RolloutPaused",
            format!(
                "version {} is on {} % of data planes (step {}/{}), paused{others}",
                r.target_version, r.percent, r.step, r.steps
            ),
        ),
        _ => (
            "RollingOut",
            format!(
                "version {} is on {} % of data planes (step {}/{}){others}",
                r.target_version, r.percent, r.step, r.steps
            ),
        ),
    };
    condition(CONDITION_SYNCED, "False", reason, truncate(&message, MAX_MESSAGE))
}

/// `Synced` for `generation`: `True` only when that generation is the served version and every
/// subscribed data plane applied it.
fn synced_condition(
    generation: i64,
    rejected: bool,
    counts: &Counts,
    current: Option<i64>,
    served: Option<i64>,
) -> Condition {
    if rejected {
        let serving = served.map_or_else(
            || "nothing is served".to_owned(),
            |v| {
                format!(
                    "data planes stay on version {v} ({} of {} applied it)",
                    counts.synced, counts.connected
                )
            },
        );
        return condition(
            CONDITION_SYNCED,
            "False",
            "GenerationRejected",
            format!("generation {generation} was rejected (see Accepted) and is not served; {serving}"),
        );
    }
    let Some(version) = current else {
        return condition(
            CONDITION_SYNCED,
            "Unknown",
            "NoSnapshot",
            format!("generation {generation} is not served yet"),
        );
    };
    if counts.connected == 0 {
        return condition(
            CONDITION_SYNCED,
            "Unknown",
            "NoDataPlanes",
            "no data plane is subscribed to this RoutingConfig".to_owned(),
        );
    }
    if let Some((data_plane, rejected, error)) = &counts.last_rejection {
        return condition(
            CONDITION_SYNCED,
            "False",
            "RejectedByDataPlane",
            truncate(
                &format!(
                    "{} of {} data planes rejected version {version}; {data_plane} rejected version {rejected}: {error}",
                    counts.rejected, counts.connected
                ),
                MAX_MESSAGE,
            ),
        );
    }
    if counts.synced < counts.connected {
        return condition(
            CONDITION_SYNCED,
            "False",
            "Converging",
            format!(
                "{} of {} data planes applied version {version}",
                counts.synced, counts.connected
            ),
        );
    }
    condition(
        CONDITION_SYNCED,
        "True",
        "AllDataPlanesSynced",
        format!("all {} data planes applied version {version}", counts.connected),
    )
}

fn data_planes_status(counts: &Counts) -> DataPlanesStatus {
    DataPlanesStatus {
        connected: counts.connected,
        synced: counts.synced,
        rejected: counts.rejected,
        summary: format!("{}/{}", counts.synced, counts.connected),
        last_rejection: counts
            .last_rejection
            .as_ref()
            .map(|(data_plane, version, error)| DataPlaneRejection {
                data_plane: data_plane.clone(),
                version: *version,
                error: truncate(error, MAX_MESSAGE),
            }),
        // Each replica writes its own entry; the status writer never touches them.
        replicas: Default::default(),
    }
}

/// The Events to publish: what the desired status says that the stored one did not.
pub fn decisions(current: Option<&RoutingConfigStatus>, desired: &RoutingConfigStatus) -> Vec<Decision> {
    let mut out: Vec<Decision> = decision(current, desired).into_iter().collect();
    out.extend(rollout_decision(
        current.and_then(|c| c.rollout.as_ref()),
        desired.rollout.as_ref(),
    ));
    let synced = |s: &RoutingConfigStatus| s.conditions.iter().find(|c| c.type_ == CONDITION_SYNCED).cloned();
    if let Some(new) = synced(desired) {
        let old = current.and_then(synced);
        let changed = old.is_none_or(|o| o.status != new.status || o.reason != new.reason);
        if changed {
            match (new.status.as_str(), new.reason.as_str()) {
                ("True", _) => out.push(Decision::Synced { message: new.message }),
                ("False", "RejectedByDataPlane") => {
                    out.push(Decision::RejectedByDataPlane { message: new.message })
                }
                _ => {}
            }
        }
    }
    out
}

/// The rollout Event to publish: a rollout that began, moved to another step, paused, resumed or
/// ended since the stored status.
fn rollout_decision(old: Option<&RolloutStatus>, new: Option<&RolloutStatus>) -> Option<Decision> {
    let new = new?;
    let same_rollout = old.filter(|o| o.target_version == new.target_version);
    if same_rollout.is_some_and(|o| o.phase == new.phase && o.step == new.step) {
        return None;
    }
    let message = new.message.clone();
    let (reason, warning, message) = match new.phase {
        RolloutPhase::Progressing if same_rollout.is_some_and(|o| o.phase == RolloutPhase::Paused) => (
            "RolloutResumed",
            false,
            format!(
                "rollout of version {} resumed at step {}/{} ({} %)",
                new.target_version, new.step, new.steps, new.percent
            ),
        ),
        RolloutPhase::Progressing => (
            "RolloutStep",
            false,
            format!(
                "rollout of version {} at step {}/{}: {} % of data planes{}",
                new.target_version,
                new.step,
                new.steps,
                new.percent,
                new.previous_version
                    .map_or_else(String::new, |v| format!(", the others on version {v}"))
            ),
        ),
        RolloutPhase::Paused => (
            "RolloutPaused",
            false,
            format!(
                "rollout of version {} paused at step {}/{} ({} %)",
                new.target_version, new.step, new.steps, new.percent
            ),
        ),
        RolloutPhase::Halted => (
            "RolloutHalted",
            true,
            format!(
                "rollout of version {} halted: {}",
                new.target_version,
                message.unwrap_or_default()
            ),
        ),
        RolloutPhase::Aborted => (
            "RolloutAborted",
            true,
            format!(
                "rollout of version {} aborted: {}",
                new.target_version,
                message.unwrap_or_default()
            ),
        ),
        RolloutPhase::Complete => (
            "RolloutComplete",
            false,
            format!(
                "rollout of version {} complete: every data plane gets it ({})",
                new.target_version,
                message.unwrap_or_default()
            ),
        ),
    };
    Some(Decision::Rollout {
        reason,
        message,
        warning,
    })
}

/// The decision about `Accepted` to announce, if the desired status says something the stored
/// one did not (a new generation, or a changed `Accepted` status).
pub fn decision(current: Option<&RoutingConfigStatus>, desired: &RoutingConfigStatus) -> Option<Decision> {
    let accepted = |s: &RoutingConfigStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == CONDITION_ACCEPTED)
            .cloned()
    };
    let new = accepted(desired)?;
    // A new generation, a changed verdict, or the same verdict about another table (a shard
    // changed: a new version served, or other errors).
    let unchanged = current.is_some_and(|c| {
        c.observed_generation == desired.observed_generation
            && accepted(c).is_some_and(|old| old.status == new.status && old.message == new.message)
    });
    if unchanged {
        return None;
    }
    match new.status.as_str() {
        "True" => Some(Decision::Accepted { message: new.message }),
        "False" => Some(Decision::Rejected { message: new.message }),
        _ => None,
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

fn whole_seconds(t: SystemTime) -> Timestamp {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `text` cut to at most `max` bytes (on a character boundary), saying that it was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (truncated)", &text[..end])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use routing_model::ParseLimits;
    use routing_model::crd::RoutingConfig;

    use super::*;
    use crate::push::registry::Counts;
    use crate::served_spec::{Owner, check};
    use crate::snapshot::{ObjectKey, ServedMembers, SnapshotStore};

    fn key() -> StatusKey {
        StatusKey::from_bytes(&[3; 32])
    }

    fn object() -> ObjectKey {
        ObjectKey {
            namespace: "ns".into(),
            name: "r".into(),
        }
    }

    fn valid() -> routing_model::ValidatedConfig {
        routing_model::load(
            b"apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec: {defaultPlacement: a, customerToPlacement: {acme: a}, placementToEndpoint: {a: 'http://a'}}\n",
            ParseLimits::default(),
        )
        .unwrap()
    }

    /// The store serving `valid()` as `version`, composed of generation `generation` of the
    /// RoutingConfig.
    fn store_serving(version: i64, generation: i64) -> SnapshotStore {
        let config = valid();
        let mut obj = RoutingConfig::new("r", config.spec().clone());
        obj.metadata.generation = Some(generation);
        let members = ServedMembers {
            config: Arc::new(obj),
            shards: BTreeMap::new(),
        };
        let store = SnapshotStore::default();
        store.offer_table(&object(), "u1", version, Ok(config), Some(Arc::new(members)));
        store
    }

    fn input<'a>(
        generation: i64,
        table: &'a Current,
        served: Option<Served<'a>>,
        current: Option<&'a RoutingConfigStatus>,
        now: SystemTime,
        key: &'a StatusKey,
    ) -> Input<'a> {
        static NONE: std::sync::LazyLock<Counts> = std::sync::LazyLock::new(Counts::default);
        Input {
            generation,
            namespace: "ns",
            name: "r",
            uid: "u1",
            current_table: table,
            served,
            current,
            data_planes: &NONE,
            shards: 0,
            now,
            key,
            spec_bytes: 0,
            rollout: None,
        }
    }

    fn status_of(c: &RoutingConfigStatus, t: &str) -> String {
        c.conditions.iter().find(|c| c.type_ == t).unwrap().status.clone()
    }

    #[test]
    fn recomputing_an_unchanged_object_gives_the_same_status() {
        let store = store_serving(1, 1);
        let snap = store.get(&object()).unwrap().served.unwrap();
        let table = Current::Valid { hash: snap.hash };
        let k = key();
        let t0 = SystemTime::now();
        let first = desired(&input(1, &table, Some(Served::of(&snap)), None, t0, &k));
        assert_eq!(status_of(&first, CONDITION_ACCEPTED), "True");
        assert_eq!(status_of(&first, CONDITION_SYNCED), "Unknown");
        assert_eq!(
            first.conditions[0].message,
            "generation 1 accepted: 1 customers, 1 placements"
        );
        assert!(matches!(decision(None, &first), Some(Decision::Accepted { .. })));
        let later = desired(&input(
            1,
            &table,
            Some(Served::of(&snap)),
            Some(&first),
            t0 + Duration::from_secs(3600),
            &k,
        ));
        assert_eq!(first, later);
        assert_eq!(decision(Some(&first), &later), None);
        // The record is signed, and this control plane trusts it.
        let recorded = first.snapshot.as_ref().unwrap();
        assert!(recorded.served_spec.is_none());
        let owner = Owner {
            namespace: "ns",
            name: "r",
            uid: "u1",
            generation: 1,
        };
        let trusted = check(&k, owner, recorded).unwrap().unwrap();
        assert_eq!(
            (trusted.version, trusted.generation, trusted.hash),
            (1, 1, snap.hash)
        );
    }

    #[test]
    fn rejection_flips_accepted_moves_its_transition_time_and_keeps_the_snapshot() {
        let store = store_serving(1, 1);
        let snap = store.get(&object()).unwrap().served.unwrap();
        let k = key();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let valid_table = Current::Valid { hash: snap.hash };
        let first = desired(&input(1, &valid_table, Some(Served::of(&snap)), None, t0, &k));
        let refused = Current::Refused {
            reason: "InvalidSpec",
            error: "RoutingConfig ns/r: spec.defaultPlacement: placement `x` has no endpoint".to_owned(),
        };
        let second = desired(&input(
            2,
            &refused,
            Some(Served::of(&snap)),
            Some(&first),
            t0 + Duration::from_secs(10),
            &k,
        ));
        let accepted = &second.conditions[0];
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            accepted.message.contains("spec.defaultPlacement"),
            "{}",
            accepted.message
        );
        assert!(
            accepted
                .message
                .contains(&format!("still serving generation 1 ({})", snap.hash)),
            "{}",
            accepted.message
        );
        assert_ne!(
            accepted.last_transition_time,
            first.conditions[0].last_transition_time
        );
        // A rejected generation is never Synced, whatever the fleet runs.
        let synced = &second.conditions[1];
        assert_eq!(
            (
                synced.status.as_str(),
                synced.reason.as_str(),
                synced.observed_generation
            ),
            ("False", "GenerationRejected", Some(2))
        );
        let (kept, before) = (
            second.snapshot.as_ref().unwrap(),
            first.snapshot.as_ref().unwrap(),
        );
        assert_eq!(
            (kept.version, &kept.hash, &kept.accepted_at, kept.generation),
            (1, &before.hash, &before.accepted_at, Some(1))
        );
        // While generation 2 is rejected a copy of generation 1 travels in the status, so
        // another replica can rebuild the table; the record is signed for this object.
        let carried: routing_model::RoutingConfigSpec =
            crate::served_spec::decode(kept.served_spec.as_deref().unwrap(), 1 << 20).unwrap();
        assert_eq!(&carried, snap.config.spec());
        let owner = Owner {
            namespace: "ns",
            name: "r",
            uid: "u1",
            generation: 2,
        };
        assert_eq!(check(&k, owner, kept).unwrap().unwrap().generation, 1);
        assert!(matches!(
            decision(Some(&first), &second),
            Some(Decision::Rejected { .. })
        ));
    }

    #[test]
    fn a_copy_too_large_beside_the_object_is_left_out_and_the_message_says_so() {
        let store = store_serving(1, 1);
        let snap = store.get(&object()).unwrap().served.unwrap();
        let refused = Current::Refused {
            reason: "InvalidSpec",
            error: "bad".to_owned(),
        };
        let k = key();
        let mut big = input(2, &refused, Some(Served::of(&snap)), None, SystemTime::now(), &k);
        big.spec_bytes = crate::served_spec::RECORDED_SPEC_OBJECT_BUDGET;
        let status = desired(&big);
        assert!(status.snapshot.as_ref().unwrap().served_spec.is_none());
        assert!(
            status.conditions[0]
                .message
                .contains("not recorded in the status"),
            "{}",
            status.conditions[0].message
        );
    }

    #[test]
    fn a_version_past_the_generation_is_named_and_a_new_one_is_an_event() {
        let store = store_serving(7, 3);
        let snap = store.get(&object()).unwrap().served.unwrap();
        let table = Current::Valid { hash: snap.hash };
        let k = key();
        let first = desired(&input(
            3,
            &table,
            Some(Served::of(&snap)),
            None,
            SystemTime::now(),
            &k,
        ));
        assert_eq!(
            first.conditions[0].message,
            "generation 3 accepted: 1 customers, 1 placements, served as version 7"
        );
        let store = store_serving(8, 3);
        let next = store.get(&object()).unwrap().served.unwrap();
        let second = desired(&input(
            3,
            &table,
            Some(Served::of(&next)),
            Some(&first),
            SystemTime::now(),
            &k,
        ));
        // Same generation of the RoutingConfig, a new version of its table: an Event says so.
        assert!(matches!(
            decision(Some(&first), &second),
            Some(Decision::Accepted { .. })
        ));
    }

    #[test]
    fn nothing_served_is_no_snapshot() {
        let table = Current::Refused {
            reason: "InvalidShards",
            error: "RoutingShard ns/r-0: ...".to_owned(),
        };
        let k = key();
        let s = desired(&input(1, &table, None, None, SystemTime::now(), &k));
        assert!(s.snapshot.is_none());
        assert_eq!(s.conditions[0].reason, "InvalidShards");
        assert_eq!(status_of(&s, CONDITION_SYNCED), "False");
    }

    #[test]
    fn while_a_table_rolls_out_it_is_accepted_not_synced_and_each_step_is_an_event() {
        let store = store_serving(1, 1);
        let snap = store.get(&object()).unwrap().served.unwrap();
        let new_hash: ContentHash =
            "table-sha256:0000000000000000000000000000000000000000000000000000000000000002"
                .parse()
                .unwrap();
        let table = Current::Valid { hash: new_hash };
        let spec: routing_model::rollout::RolloutSpec =
            serde_json::from_str(r#"{"steps": [{"percent": 10}, {"percent": 50}]}"#).unwrap();
        let target = routing_model::protocol::SnapshotRef {
            lineage: "u1".into(),
            version: 2,
            hash: new_hash,
        };
        let now = SystemTime::now();
        let begun = crate::rollout::record::begin(&spec, &target, 2, Some(1), now);
        let k = key();
        let mut at = input(2, &table, Some(Served::of(&snap)), None, now, &k);
        at.rollout = Some(&begun);
        let first = desired(&at);
        let accepted = first
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_ACCEPTED)
            .unwrap();
        assert_eq!(
            accepted.message,
            "generation 2 accepted; rolling out as version 2"
        );
        let synced = first
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_SYNCED)
            .unwrap();
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", "RollingOut")
        );
        assert_eq!(
            first.snapshot.as_ref().unwrap().version,
            1,
            "the previous table stays served"
        );
        let owner = crate::rollout::record::Owner {
            namespace: "ns",
            name: "r",
            uid: "u1",
        };
        assert!(crate::rollout::record::verify(owner, first.rollout.as_ref().unwrap(), &k).is_ok());
        let events = decisions(None, &first);
        assert!(
            events.iter().any(|d| matches!(
                d,
                Decision::Rollout {
                    reason: "RolloutStep",
                    ..
                }
            )),
            "{events:?}"
        );

        let next =
            crate::rollout::record::apply(&begun, &spec, &crate::rollout::judge::Next::Step(1), None, now);
        let mut later = input(2, &table, Some(Served::of(&snap)), Some(&first), now, &k);
        later.rollout = Some(&next);
        let second = desired(&later);
        assert_eq!(
            decisions(Some(&first), &second),
            [Decision::Rollout {
                reason: "RolloutStep",
                message: "rollout of version 2 at step 2/2: 50 % of data planes, the others on version 1"
                    .into(),
                warning: false
            }]
        );
        // Nothing new, no Event.
        assert!(decisions(Some(&second), &desired(&later)).is_empty());
    }
}

#[cfg(test)]
mod synced_tests {
    use super::*;
    use crate::push::registry::Counts;

    fn counts(connected: i64, synced: i64, rejected: Option<&str>) -> Counts {
        Counts {
            connected,
            synced,
            rejected: i64::from(rejected.is_some()),
            last_rejection: rejected.map(|e| ("dp-1".to_owned(), 3, e.to_owned())),
        }
    }

    #[test]
    fn synced_reflects_data_plane_reports() {
        let synced = |c: &Counts| synced_condition(3, false, c, Some(3), Some(3));
        assert_eq!(synced(&counts(0, 0, None)).status, "Unknown");
        assert_eq!(synced(&counts(3, 2, None)).reason, "Converging");
        let all = synced(&counts(3, 3, None));
        assert_eq!(
            (all.status.as_str(), all.reason.as_str()),
            ("True", "AllDataPlanesSynced")
        );
        let rejected = synced(&counts(3, 2, Some("too many customers")));
        assert_eq!(rejected.status, "False");
        assert!(
            rejected.message.contains("too many customers"),
            "{}",
            rejected.message
        );
        assert_eq!(data_planes_status(&counts(3, 2, None)).summary, "2/3");
    }

    #[test]
    fn synced_is_true_only_for_the_served_current_generation() {
        // Every data plane applied version 3, but generation 4 was rejected.
        let rejected = synced_condition(4, true, &counts(3, 3, None), None, Some(3));
        assert_eq!(
            (rejected.status.as_str(), rejected.reason.as_str()),
            ("False", "GenerationRejected")
        );
        assert!(
            rejected.message.contains("version 3 (3 of 3 applied it)"),
            "{}",
            rejected.message
        );
        let nothing = synced_condition(1, true, &counts(0, 0, None), None, None);
        assert_eq!(
            (
                nothing.status.as_str(),
                nothing.message.contains("nothing is served")
            ),
            ("False", true)
        );
        // Generation 4 not served yet (not validated): not known to be synced.
        let pending = synced_condition(4, false, &counts(3, 3, None), None, Some(3));
        assert_eq!(
            (pending.status.as_str(), pending.reason.as_str()),
            ("Unknown", "NoSnapshot")
        );
    }
}
