//! The `RoutingConfig` custom resource's status, written by the control plane.
//!
//! The resource type itself (`RoutingConfig`) is derived from [`RoutingConfigSpec`] in
//! [`crate::manifest`], so the CRD and the file format cannot drift apart.
//!
//! [`RoutingConfigSpec`]: crate::manifest::RoutingConfigSpec

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::manifest::{RoutingConfig, RoutingShard};

/// Condition type: whether the control plane accepted the object's current generation.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// Condition type: whether the object's current generation is served and every subscribed
/// data plane applied it. `True` only then, so `kubectl wait --for=condition=Synced` returns
/// once the fleet runs what was last applied; a rejected generation is never `Synced`.
pub const CONDITION_SYNCED: &str = "Synced";
/// Condition type of a RoutingShard: whether its current generation is part of the routing table
/// being served.
pub const CONDITION_SERVED: &str = "Served";

/// What the control plane decided about a RoutingConfig, and how far the fleet got.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingConfigStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the current generation passed validation) and `Synced` (the current
    /// generation is served and every subscribed data plane applied it). Each condition's
    /// `observedGeneration` is the `metadata.generation` it was computed for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The snapshot being served to data planes: the last accepted generation. When the
    /// current generation is rejected this still names the previous, valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotStatus>,
    /// Data planes subscribed to this RoutingConfig, across all control-plane replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_planes: Option<DataPlanesStatus>,
    /// RoutingShards labelled for this RoutingConfig now (whether or not the served table holds
    /// them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<i64>,
    /// The staged rollout of the newest table (`spec.rollout`), while it runs and after it
    /// ended: `snapshot` keeps naming the table the other data planes are served until it
    /// completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Running its steps.
    Progressing,
    /// Held at its step by the user (annotation `cellroute.dev/rollout: paused`).
    Paused,
    /// Stopped by its analysis; the data planes that had the new table got the previous one
    /// back, as a new version.
    Halted,
    /// Stopped by the user (annotation `cellroute.dev/rollout-abort`), reverted like a halt.
    Aborted,
    /// Every data plane has the new table.
    Complete,
}

/// A staged rollout of one table version.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Progressing`, `Paused`, `Halted`, `Aborted` or `Complete`.
    pub phase: RolloutPhase,
    /// The step running (1 for the first; steps + 1 once the new table went to every data
    /// plane).
    pub step: i64,
    /// Steps of `spec.rollout` when the rollout began.
    pub steps: i64,
    /// Share of data planes on the new table now, 0 to 100.
    pub percent: i64,
    /// The version being rolled out.
    pub target_version: i64,
    /// Its content hash.
    pub target_hash: String,
    /// The generation of this RoutingConfig it holds.
    pub generation: i64,
    /// The version the other data planes keep (the one served before the rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<i64>,
    /// After a halt or an abort: the version that returned the previous table to the data
    /// planes that had the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_version: Option<i64>,
    /// When the current step began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// For `kubectl get`: `10% 1/2`, `Paused 10% 1/2`, `Halted`, `Aborted` or `Complete`.
    pub summary: String,
    /// What the step waits for, or why the rollout halted, naming the data plane or placement
    /// and the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Data planes on each version, counted by this control plane's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_planes: Option<RolloutDataPlanes>,
    /// `hmac-sha256:<key id>:<mac>`: the control plane's signature over this object's namespace,
    /// name and uid with `phase`, `step`, `percent`, `targetVersion`, `targetHash`, `generation`
    /// and `revertVersion`, as for `status.snapshot`: a replica follows only a rollout the
    /// leader recorded, so whoever can patch the status can neither choose the share nor the
    /// version it gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Data planes of a rollout, by the version they should have.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutDataPlanes {
    /// Those whose cohort is within the step's share: connected, applied, rejected.
    pub target: VersionCounts,
    /// The others.
    pub previous: VersionCounts,
}

/// Data planes that should have one version.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionCounts {
    /// Connected.
    pub connected: i64,
    /// Of those, how many applied it.
    pub applied: i64,
    /// Of those, how many rejected it.
    pub rejected: i64,
}

/// Identity of the routing table being served: this RoutingConfig with its RoutingShards.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// The version of the served table. It rises with every accepted change of this
    /// RoutingConfig or of any of its shards (a shard added, edited or deleted), and never goes
    /// backwards; for a RoutingConfig without shards it is the generation served.
    pub version: i64,
    /// Content hash of the served table (`sha256:<hex>`); equal hashes route identically.
    pub hash: String,
    /// When this version was accepted.
    pub accepted_at: Time,
    /// Which generation of this RoutingConfig the served table holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// How many RoutingShards the served table holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<i64>,
    /// `hmac-sha256:<key id>:<mac>`: the control plane's signature over this object's
    /// namespace, name, uid, `version`, `hash` and `generation`, with a key kept in a Secret of
    /// the control plane's namespace. It is how the leader hands a version to the other replicas
    /// and to its successors: a replica serves a version only with this signature, so whoever can
    /// patch the status can neither choose what is served nor move the version line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// This RoutingConfig's own spec at `generation` (gzip, then base64, of its JSON), present
    /// only while its current generation is not the served one (the table is refused). With the
    /// shards' own records it lets any control-plane replica, including one started after the
    /// refusal, rebuild and keep serving the last valid table. Left out when too large to keep
    /// beside the object's own spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_spec: Option<String>,
}

/// What the control plane decided about a RoutingShard: whether its current generation is part
/// of the routing table being served, and what of it that table holds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingShardStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Served`: whether the current generation is part of the routing table being served, and
    /// if not why (its own errors, a customer another object of the table also assigns, another
    /// object's errors, or no RoutingConfig of the label's name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// Customers the current generation assigns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customers: Option<i64>,
    /// The first version of the served routing table that held this shard at
    /// `servedGeneration` (a later version that changed only other objects does not move it);
    /// absent when the served table does not hold this shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Which generation of this shard the served table holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_generation: Option<i64>,
    /// The customers of `servedGeneration` (gzip, then base64, of their JSON), present only while
    /// the current generation is not the served one, so that any control-plane replica can
    /// rebuild the served table. A replica serves what it rebuilds only when it hashes to the
    /// signed `status.snapshot` of the RoutingConfig, so this record needs no signature of its
    /// own. Left out when too large to keep beside the shard's own spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_spec: Option<String>,
}

/// Counts of subscribed data planes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataPlanesStatus {
    /// Data planes connected and subscribed to this RoutingConfig, across all live replicas.
    pub connected: i64,
    /// Of those, how many applied the served version.
    pub synced: i64,
    /// Of those, how many rejected the served version.
    pub rejected: i64,
    /// `synced/connected`, for `kubectl get`.
    pub summary: String,
    /// The most recent rejection by a data plane, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<DataPlaneRejection>,
    /// Each control-plane replica's own counts, by replica identity (its pod name). Every
    /// replica writes only its own key (a merge patch of that key alone), so replicas never
    /// overwrite each other; the status writer sums the entries of live replicas into the
    /// totals above.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "replicas_map"
    )]
    pub replicas: BTreeMap<String, ReplicaReport>,
}

/// `status.dataPlanes.replicas` as a map; the list control planes before RoutingShards wrote reads as
/// empty (each replica rewrites its own entry within a tick), so an object with an old status
/// never stops the watch.
fn replicas_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, ReplicaReport>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Map(BTreeMap<String, ReplicaReport>),
        Legacy(
            #[expect(dead_code, reason = "only the shape of an old list matters")] Vec<serde::de::IgnoredAny>,
        ),
    }
    Ok(match Either::deserialize(d)? {
        Either::Map(map) => map,
        Either::Legacy(_) => BTreeMap::new(),
    })
}

/// One control-plane replica's view of the data planes subscribed to a RoutingConfig.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReport {
    /// The version its counts are against (the snapshot it serves). The status writer counts
    /// an entry as synced only when this is the version being reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Data planes connected to it.
    pub connected: i64,
    /// Of those, how many applied the served version.
    pub synced: i64,
    /// Of those, how many rejected it.
    pub rejected: i64,
    /// Its most recent rejection, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<DataPlaneRejection>,
    /// While a staged rollout runs: how its data planes stand on it, for the leader to judge
    /// the step with every replica's data planes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<ReplicaRollout>,
}

/// One replica's data planes in a staged rollout.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRollout {
    /// The version being rolled out, as this replica serves it.
    pub target_version: i64,
    /// The share it serves it to.
    pub percent: i64,
    /// Its data planes within the share.
    pub target: VersionCounts,
    /// Its data planes outside it.
    pub previous: VersionCounts,
    /// Of those within the share, how many have neither applied nor rejected it yet.
    pub pending: i64,
    /// A data plane of it that rejected the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<DataPlaneRejection>,
    /// Requests and 5xx per placement its data planes report on the new version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_health: BTreeMap<String, crate::protocol::PlacementHealth>,
    /// The same on the previous version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub previous_health: BTreeMap<String, crate::protocol::PlacementHealth>,
}

/// A data plane's refusal of a snapshot.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneRejection {
    /// The data plane's id (its pod name).
    pub data_plane: String,
    /// The version it rejected.
    pub version: i64,
    /// Its error message.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;
    use crate::manifest::RoutingConfigSpec;

    fn object(spec_yaml: &str) -> RoutingConfig {
        let spec: RoutingConfigSpec = serde_saphyr::from_str(spec_yaml).expect("spec parses");
        RoutingConfig::new("routes", spec)
    }

    #[test]
    fn cel_accepts_a_valid_spec() {
        let obj = object(
            "defaultPlacement: a\ncustomerToPlacement: {acme: a}\nplacementToEndpoint: {a: 'http://h'}\n",
        );
        obj.validate_cel().expect("valid");
    }

    #[test]
    fn cel_rejects_a_default_placement_without_endpoint_naming_the_rule() {
        let obj = object("defaultPlacement: b\nplacementToEndpoint: {a: 'http://h'}\n");
        let err = format!("{:?}", obj.validate_cel().unwrap_err());
        assert!(err.contains("default-placement-has-endpoint"), "{err}");
    }

    #[test]
    fn cel_rejects_a_customer_placement_without_endpoint_naming_the_rule() {
        let obj = object(
            "defaultPlacement: a\ncustomerToPlacement: {acme: z}\nplacementToEndpoint: {a: 'http://h'}\n",
        );
        let err = format!("{:?}", obj.validate_cel().unwrap_err());
        assert!(err.contains("customer-placements-have-endpoints"), "{err}");
        assert!(!err.contains("default-placement-has-endpoint"), "{err}");
    }

    #[test]
    fn an_old_status_with_replicas_as_a_list_still_reads() {
        let old = serde_json::json!({
            "connected": 1, "synced": 1, "rejected": 0, "summary": "1/1",
            "replicas": [{"replica": "cp-0", "connected": 1, "synced": 1, "rejected": 0}],
        });
        let read: DataPlanesStatus = serde_json::from_value(old).unwrap();
        assert!(read.replicas.is_empty());
        let new = serde_json::json!({
            "connected": 1, "synced": 1, "rejected": 0, "summary": "1/1",
            "replicas": {"cp-0": {"connected": 1, "synced": 1, "rejected": 0}},
        });
        let read: DataPlanesStatus = serde_json::from_value(new).unwrap();
        assert_eq!(read.replicas["cp-0"].connected, 1);
    }

    #[test]
    fn crd_has_short_name_columns_and_status() {
        let crd = RoutingConfig::crd();
        let version = &crd.spec.versions[0];
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["rtc".to_owned()][..])
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Accepted", "Version", "Synced", "Rollout", "Shards", "Age"]
        );
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }
}
