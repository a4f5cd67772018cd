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

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use routing_model::crd::{
    CONDITION_ACCEPTED, CONDITION_SYNCED, DataPlaneRejection, DataPlanesStatus, RoutingConfigStatus,
    SnapshotStatus,
};

use crate::push::registry::Counts;
use crate::served_spec::ServedRecord;
use crate::snapshot::ObjectState;
use crate::status_key::StatusKey;

/// Longest condition message written; the full error stays in the logs and `/debug/snapshots`.
const MAX_MESSAGE: usize = 4096;

/// Largest served spec recorded in the status (gzip, then base64): a status never grows by
/// more than this, whatever the table's size.
pub const MAX_RECORDED_SPEC_BYTES: usize = 256 * 1024;

/// The served spec is recorded only while the object's own spec plus the record stay within
/// this: an object near the API server's limit (etcd's 1.5 MiB request) must keep room for its
/// status, or no status write of it would ever succeed.
pub const RECORDED_SPEC_OBJECT_BUDGET: usize = 1024 * 1024;

/// The inputs of one status computation.
pub struct Input<'a> {
    /// The object's `metadata.generation`.
    pub generation: i64,
    /// The object's `metadata.uid` (its lineage).
    pub uid: &'a str,
    /// What the store holds for the object.
    pub state: &'a ObjectState,
    /// The status currently stored on the object.
    pub current: Option<&'a RoutingConfigStatus>,
    /// Data planes subscribed to the object, against its served snapshot.
    pub data_planes: &'a Counts,
    /// Now.
    pub now: SystemTime,
    /// Signs the served spec recorded while the current generation is rejected.
    pub key: &'a StatusKey,
    /// Bytes of the object's own spec as JSON (what it stores); only read while the current
    /// generation is not the served one, to decide whether the served spec fits beside it.
    pub spec_bytes: usize,
}

/// The served spec as recorded in the status, or why it is not.
enum Record {
    /// gzip + base64 of the served spec.
    Kept(String),
    /// Too large to record beside the object's own spec: its encoded size.
    Omitted(usize),
}

/// The record of `spec` for an object whose own spec is `spec_bytes` long.
fn record(spec: &routing_model::RoutingConfigSpec, spec_bytes: usize) -> Record {
    let encoded = crate::served_spec::encode(spec);
    if encoded.len() <= MAX_RECORDED_SPEC_BYTES && spec_bytes + encoded.len() <= RECORDED_SPEC_OBJECT_BUDGET {
        Record::Kept(encoded)
    } else {
        Record::Omitted(encoded.len())
    }
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
}

/// The status the object should have.
pub fn desired(input: &Input<'_>) -> RoutingConfigStatus {
    let now = whole_seconds(input.now);
    let served = input.state.served.as_ref().filter(|s| s.lineage == input.uid);
    let rejection = input
        .state
        .rejection
        .as_ref()
        .filter(|r| r.lineage == input.uid && r.version == input.generation);
    // While the current generation is not the served one, the served spec travels in the
    // status, signed, so a replica started meanwhile can serve it again; unless it would not fit.
    let recorded = served
        .filter(|s| s.version != input.generation)
        .map(|s| record(s.config.spec(), input.spec_bytes));
    let accepted = match (rejection, served) {
        (Some(r), _) => condition(
            CONDITION_ACCEPTED,
            "False",
            "InvalidSpec",
            truncate(
                &format!(
                    "generation {} rejected; {}{}",
                    input.generation,
                    served.map_or_else(String::new, |s| format!(
                        "still serving generation {} ({}); ",
                        s.version, s.hash
                    )),
                    match &recorded {
                        Some(Record::Omitted(bytes)) => format!(
                            "the served spec is not recorded in the status ({bytes} bytes compressed is too large beside this object's own spec), \
                             so a control-plane replica started before this is fixed serves nothing for this object (data planes keep their table); {}",
                            r.error
                        ),
                        _ => r.error.clone(),
                    }
                ),
                MAX_MESSAGE,
            ),
        ),
        (None, Some(s)) if s.version == input.generation => {
            let spec = s.config.spec();
            condition(
                CONDITION_ACCEPTED,
                "True",
                "Valid",
                format!(
                    "generation {} accepted: {} customers, {} placements",
                    s.version,
                    spec.customer_to_placement.len(),
                    spec.placement_to_endpoint.len()
                ),
            )
        }
        _ => condition(
            CONDITION_ACCEPTED,
            "Unknown",
            "Pending",
            format!("generation {} has not been validated yet", input.generation),
        ),
    };
    let synced = synced_condition(
        input.generation,
        rejection.is_some(),
        input.data_planes,
        served.map(|s| s.version),
    );
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
        let served_spec = match &recorded {
            Some(Record::Kept(encoded)) => Some(encoded.clone()),
            _ => None,
        };
        let signature = served_spec.is_some().then(|| {
            ServedRecord {
                namespace: &s.key.namespace,
                name: &s.key.name,
                uid: &s.lineage,
                version: s.version,
                hash: &hash,
            }
            .sign(input.key)
        });
        SnapshotStatus {
            version: s.version,
            accepted_at: kept.unwrap_or_else(|| Time(whole_seconds(s.accepted_at))),
            served_spec,
            served_spec_signature: signature,
            hash,
        }
    });
    RoutingConfigStatus {
        observed_generation: Some(input.generation),
        conditions,
        snapshot,
        data_planes: Some(data_planes_status(input.data_planes)),
    }
}

/// `Synced` for `generation`: `True` only when that generation is the served version and every
/// subscribed data plane applied it.
fn synced_condition(generation: i64, rejected: bool, counts: &Counts, served: Option<i64>) -> Condition {
    if rejected {
        let serving = served.map_or_else(
            || "nothing is served".to_owned(),
            |v| {
                format!(
                    "data planes stay on generation {v} ({} of {} applied it)",
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
    let Some(version) = served.filter(|v| *v == generation) else {
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
    let unchanged = current.is_some_and(|c| {
        c.observed_generation == desired.observed_generation
            && accepted(c).is_some_and(|old| old.status == new.status)
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
    use crate::push::registry::Counts;
    use std::time::Duration;

    use routing_model::ParseLimits;

    use super::*;
    use crate::snapshot::{ObjectKey, SnapshotStore};

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

    fn status_of(c: &RoutingConfigStatus, t: &str) -> String {
        c.conditions.iter().find(|c| c.type_ == t).unwrap().status.clone()
    }

    #[test]
    fn recomputing_an_unchanged_object_gives_the_same_status() {
        let store = SnapshotStore::default();
        store.offer(&object(), "u1", 1, Ok(valid()));
        let state = store.get(&object()).unwrap();
        let t0 = SystemTime::now();
        let first = desired(&Input {
            generation: 1,
            uid: "u1",
            state: &state,
            current: None,
            data_planes: &Counts::default(),
            now: t0,
            key: &key(),
            spec_bytes: 0,
        });
        assert_eq!(status_of(&first, CONDITION_ACCEPTED), "True");
        assert_eq!(status_of(&first, CONDITION_SYNCED), "Unknown");
        assert!(matches!(decision(None, &first), Some(Decision::Accepted { .. })));
        let later = desired(&Input {
            generation: 1,
            uid: "u1",
            state: &state,
            current: Some(&first),
            data_planes: &Counts::default(),
            now: t0 + Duration::from_secs(3600),
            key: &key(),
            spec_bytes: 0,
        });
        assert_eq!(first, later);
        assert_eq!(decision(Some(&first), &later), None);
    }

    #[test]
    fn rejection_flips_accepted_moves_its_transition_time_and_keeps_the_snapshot() {
        let store = SnapshotStore::default();
        store.offer(&object(), "u1", 1, Ok(valid()));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let state = store.get(&object()).unwrap();
        let first = desired(&Input {
            generation: 1,
            uid: "u1",
            state: &state,
            current: None,
            data_planes: &Counts::default(),
            now: t0,
            key: &key(),
            spec_bytes: 0,
        });
        store.offer(
            &object(),
            "u1",
            2,
            Err("spec.defaultPlacement: no endpoint".into()),
        );
        let state = store.get(&object()).unwrap();
        let second = desired(&Input {
            generation: 2,
            uid: "u1",
            state: &state,
            current: Some(&first),
            data_planes: &Counts::default(),
            now: t0 + Duration::from_secs(10),
            key: &key(),
            spec_bytes: 0,
        });
        let accepted = second
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_ACCEPTED)
            .unwrap();
        assert_eq!(accepted.status, "False");
        assert!(
            accepted.message.contains("spec.defaultPlacement"),
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
        assert_ne!(
            synced.last_transition_time,
            first.conditions[1].last_transition_time
        );
        let (kept, before) = (
            second.snapshot.as_ref().unwrap(),
            first.snapshot.as_ref().unwrap(),
        );
        assert_eq!(
            (kept.version, &kept.hash, &kept.accepted_at),
            (1, &before.hash, &before.accepted_at)
        );
        // While generation 2 is rejected the served spec travels in the status, so another
        // replica can keep serving it.
        assert!(before.served_spec.is_none());
        let carried = crate::served_spec::decode(kept.served_spec.as_deref().unwrap(), 1 << 20).unwrap();
        assert_eq!(&carried, state.served.as_ref().unwrap().config.spec());
        // Signed, so a replica recovers it, and only for this object.
        let owner = crate::served_spec::Owner {
            namespace: "ns",
            name: "r",
            uid: "u1",
            generation: 2,
        };
        let recovered = crate::served_spec::recover(&key(), owner, kept, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(recovered.version, 1);
        assert!(matches!(
            decision(Some(&first), &second),
            Some(Decision::Rejected { .. })
        ));
    }

    #[test]
    fn a_snapshot_of_another_lineage_is_not_reported() {
        let store = SnapshotStore::default();
        store.offer(&object(), "old-uid", 4, Ok(valid()));
        let state = store.get(&object()).unwrap();
        let s = desired(&Input {
            generation: 1,
            uid: "new-uid",
            state: &state,
            current: None,
            data_planes: &Counts::default(),
            now: SystemTime::now(),
            key: &key(),
            spec_bytes: 0,
        });
        assert!(s.snapshot.is_none());
        assert_eq!(status_of(&s, CONDITION_ACCEPTED), "Unknown");
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
        let synced = |c: &Counts| synced_condition(3, false, c, Some(3));
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
        let rejected = synced_condition(4, true, &counts(3, 3, None), Some(3));
        assert_eq!(
            (rejected.status.as_str(), rejected.reason.as_str()),
            ("False", "GenerationRejected")
        );
        assert!(
            rejected.message.contains("generation 3 (3 of 3 applied it)"),
            "{}",
            rejected.message
        );
        let nothing = synced_condition(1, true, &counts(0, 0, None), None);
        assert_eq!(
            (
                nothing.status.as_str(),
                nothing.message.contains("nothing is served")
            ),
            ("False", true)
        );
        // Generation 4 not served yet (not validated): not known to be synced.
        let pending = synced_condition(4, false, &counts(3, 3, None), Some(3));
        assert_eq!(
            (pending.status.as_str(), pending.reason.as_str()),
            ("Unknown", "NoSnapshot")
        );
    }
}
