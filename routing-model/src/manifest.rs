//! The RoutingConfig manifest: the one file format of cellroute.
//!
//! The same document is `kubectl apply`-ed to a cluster, served by the control plane in file
//! mode, and read by a standalone data plane. Every struct rejects unknown fields so that a typo
//! such as `defaultPlacment` is an error instead of a silently ignored key.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group and version every RoutingConfig must declare.
pub const API_VERSION: &str = "cellroute.dev/v1alpha1";
/// The kind every RoutingConfig must declare.
pub const KIND: &str = "RoutingConfig";
/// The header that carries the customer id when `customerHeader` is not set.
pub const DEFAULT_CUSTOMER_HEADER: &str = "x-customer-id";

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

/// Which cell serves which customer, and where each cell is reached.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutingConfigSpec {
    /// HTTP request header that carries the customer id. Case-insensitive; defaults to
    /// `x-customer-id`.
    #[serde(default = "default_customer_header")]
    pub customer_header: String,
    /// Placement that serves every customer not listed in `customerToPlacement`, and requests
    /// without a customer header. Must have an endpoint in `placementToEndpoint`.
    pub default_placement: String,
    /// Customer id to placement name. Every placement named here must have an endpoint.
    #[serde(default)]
    pub customer_to_placement: BTreeMap<String, String>,
    /// Placement name to the absolute `http`/`https` URL of the cell that serves it.
    pub placement_to_endpoint: BTreeMap<String, String>,
}

fn default_customer_header() -> String {
    DEFAULT_CUSTOMER_HEADER.to_owned()
}
