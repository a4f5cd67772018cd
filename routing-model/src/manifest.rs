//! The RoutingConfig manifest: the one file format of cellroute.
//!
//! The same document is `kubectl apply`-ed to a cluster, served by the control plane in file
//! mode, and read by a standalone data plane. Every struct rejects unknown fields so that a typo
//! such as `defaultPlacment` is an error instead of a silently ignored key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The API group and version every RoutingConfig must declare.
pub const API_VERSION: &str = "cellroute.dev/v1alpha1";
/// The kind every RoutingConfig must declare.
pub const KIND: &str = "RoutingConfig";
/// The header that carries the customer id when `customerHeader` is not set.
pub const DEFAULT_CUSTOMER_HEADER: &str = "x-customer-id";
/// The kind of the objects that hold a RoutingConfig's customers beyond its own.
pub const SHARD_KIND: &str = "RoutingShard";
/// The label that joins a RoutingShard to the RoutingConfig of that name in its namespace.
pub const ROUTING_CONFIG_LABEL: &str = "cellroute.dev/routing-config";

/// Customer id to placement name, as a persistent (structurally shared) ordered map: a copy of a
/// table is a pointer, and a copy with one customer changed shares all but one path of nodes
/// with the original. This is what lets a one-customer change of a 1M-customer table cost
/// microseconds instead of a copy of the table.
pub type CustomerMap = imbl::OrdMap<String, String>;

/// A whole RoutingConfig document as found in a file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutingConfigManifest {
    /// Must be [`API_VERSION`]; checked by validation so the error names the field.
    pub api_version: String,
    /// Must be [`KIND`]; checked by validation so the error names the field.
    pub kind: String,
    /// Object metadata. Only the fields that identify the object are read.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The routing rules.
    pub spec: RoutingConfigSpec,
    /// Accepted and ignored, so that the output of `kubectl get -o yaml` can be used as a file.
    #[serde(default, skip_serializing)]
    pub status: Option<serde::de::IgnoredAny>,
}

/// The identifying part of Kubernetes object metadata.
///
/// Other metadata fields (`labels`, `uid`, `resourceVersion`, ...) are accepted and ignored: they
/// never influence routing, and rejecting them would make `kubectl get -o yaml` output unusable.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Object name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Object namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Which cell (placement) serves which customer, and where each cell is reached.
//
// With the `kube` feature this type also derives the `RoutingConfig` custom resource. Its doc
// comments become the CRD's field descriptions (`kubectl explain`), so they are written for
// users. Schema bounds and CEL rules come from the attributes below, next to the fields, and
// `crate::validate` enforces the same rules (and more) in every binary.
// Several `printcolumn(...)` entries legitimately repeat `type_ = "string"`.
#[allow(clippy::duplicated_attributes)]
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[cfg_attr(feature = "kube", derive(kube::CustomResource, kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "cellroute.dev",
        version = "v1alpha1",
        kind = "RoutingConfig",
        namespaced,
        shortname = "rtc",
        status = "crate::crd::RoutingConfigStatus",
        doc = "Routing of customers to cells (placements) and of placements to endpoints, pushed by the cellroute control plane to its data planes.",
        printcolumn(
            name = "Accepted",
            type_ = "string",
            description = "Whether the control plane accepted the current generation",
            json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
        ),
        printcolumn(
            name = "Version",
            type_ = "integer",
            description = "Version of the routing table being served (rises with every accepted change of the RoutingConfig or its shards)",
            json_path = ".status.snapshot.version"
        ),
        printcolumn(
            name = "Synced",
            type_ = "string",
            description = "Data planes that applied the served version / data planes connected",
            json_path = ".status.dataPlanes.summary"
        ),
        printcolumn(
            name = "Rollout",
            type_ = "string",
            description = "The staged rollout of the newest table: share and step (10% 1/2), Paused, Halted, Aborted or Complete",
            json_path = ".status.rollout.summary"
        ),
        printcolumn(
            name = "Shards",
            type_ = "integer",
            description = "RoutingShards labelled for this RoutingConfig",
            json_path = ".status.shards"
        ),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    )
)]
// Client-side evaluation of the CEL rules, for unit tests only (the apiserver enforces them).
#[cfg_attr(all(feature = "kube", test), kube(cel))]
#[cfg_attr(
    feature = "kube",
    x_kube(
        validation = Rule::new("self.defaultPlacement in self.placementToEndpoint")
            .message("rule default-placement-has-endpoint: spec.defaultPlacement names a placement that has no endpoint in spec.placementToEndpoint")
            .reason(Reason::FieldValueInvalid)
            .field_path(".defaultPlacement"),
        validation = Rule::new("!has(self.customerToPlacement) || self.customerToPlacement.all(c, self.customerToPlacement[c] in self.placementToEndpoint)")
            .message("rule customer-placements-have-endpoints: a customer in spec.customerToPlacement names a placement that has no endpoint in spec.placementToEndpoint")
            .reason(Reason::FieldValueInvalid)
            .field_path(".customerToPlacement"),
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutingConfigSpec {
    /// HTTP request header that carries the customer id. Case-insensitive; defaults to
    /// `x-customer-id`.
    #[serde(default = "default_customer_header")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))]
    pub customer_header: String,
    /// Placement that serves every customer not listed in `customerToPlacement`, and requests
    /// without a customer header. Must have an endpoint in `placementToEndpoint`.
    #[schemars(length(min = 1, max = 253))]
    pub default_placement: String,
    /// Customer id to placement name. Every placement named here must have an endpoint in
    /// `placementToEndpoint`. Ids are matched exactly against the customer header.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::customer_map")]
    pub customer_to_placement: CustomerMap,
    /// Placement name to the absolute URL of the cell that serves it. The scheme says what the
    /// proxy speaks to the cell: `http` (HTTP/1.1), `h2c` (HTTP/2 without TLS, for gRPC) or
    /// `https` (TLS, HTTP/2 or HTTP/1.1 by ALPN). A path in the URL is prefixed to every
    /// forwarded request path.
    #[schemars(schema_with = "crate::schema::endpoint_map")]
    pub placement_to_endpoint: BTreeMap<String, String>,
    /// How a new version of this table reaches the data planes: in steps that halt and revert
    /// by themselves when the new table draws NACKs or errors, or all at once. Absent: all at
    /// once. Changing only this field changes no routing and makes no new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutSpec>,
}

fn default_customer_header() -> String {
    DEFAULT_CUSTOMER_HEADER.to_owned()
}

/// Customers of a RoutingConfig kept in an object of their own, so that a table too large for
/// one object (about 1.5 MiB, or 256 KiB for `kubectl apply`) can still be stored. It belongs to
/// the RoutingConfig named by its label `cellroute.dev/routing-config`, in its namespace.
//
// The RoutingConfig and all its shards are one routing table: validated together
// (`crate::compose`), served as one snapshot. A label rather than a selector on the
// RoutingConfig: a shard then belongs to exactly one table, by construction. As for
// `RoutingConfigSpec`, doc comments here are the CRD's field descriptions (`kubectl explain`).
// Several `printcolumn(...)` entries legitimately repeat `type_ = "string"`.
#[allow(clippy::duplicated_attributes)]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "cellroute.dev",
        version = "v1alpha1",
        kind = "RoutingShard",
        namespaced,
        shortname = "rts",
        status = "crate::crd::RoutingShardStatus",
        doc = "Customer assignments of a RoutingConfig beyond its own: the RoutingConfig named by the label cellroute.dev/routing-config, in the same namespace, and all its RoutingShards are one routing table.",
        printcolumn(
            name = "Config",
            type_ = "string",
            description = "The RoutingConfig this shard belongs to (its cellroute.dev/routing-config label)",
            json_path = ".metadata.labels.cellroute\\.dev/routing-config"
        ),
        printcolumn(
            name = "Customers",
            type_ = "integer",
            description = "Customers this generation assigns",
            json_path = ".status.customers"
        ),
        printcolumn(
            name = "Served",
            type_ = "string",
            description = "Whether this generation is part of the routing table being served",
            json_path = ".status.conditions[?(@.type==\"Served\")].status"
        ),
        printcolumn(
            name = "Reason",
            type_ = "string",
            description = "Why it is (not) served",
            json_path = ".status.conditions[?(@.type==\"Served\")].reason"
        ),
        printcolumn(
            name = "Version",
            type_ = "integer",
            description = "First version of the served routing table that holds this shard as it is served",
            json_path = ".status.version"
        ),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutingShardSpec {
    /// Customer id to placement name, as in a RoutingConfig's `customerToPlacement`. Every
    /// placement named here must have an endpoint in the RoutingConfig's `placementToEndpoint`,
    /// and no customer may be assigned by two objects of the same table.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::customer_map")]
    pub customer_to_placement: CustomerMap,
}

/// Metadata of a RoutingShard manifest: its identity, and the labels that join it to its table.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ShardMeta {
    /// Object name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Object namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels; [`ROUTING_CONFIG_LABEL`] names its RoutingConfig.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A whole RoutingShard document as found in a file (what `control-plane split` writes).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutingShardManifest {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`SHARD_KIND`].
    pub kind: String,
    /// Name, namespace and labels.
    #[serde(default)]
    pub metadata: ShardMeta,
    /// The customers.
    pub spec: RoutingShardSpec,
    /// Accepted and ignored, as for a RoutingConfig.
    #[serde(default, skip_serializing)]
    pub status: Option<serde::de::IgnoredAny>,
}
