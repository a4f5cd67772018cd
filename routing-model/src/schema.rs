//! JSON-schema pieces for the CRD that schemars cannot derive from the types alone: bounds on
//! map sizes and on map values, which also keep the CEL rules' estimated cost within the
//! apiserver's budget.

use schemars::{Schema, SchemaGenerator, json_schema};

use crate::validate::{MAX_ENDPOINT_BYTES, MAX_NAME_BYTES, MAX_PLACEMENTS};

/// Most customers one RoutingConfig *object* may list. Lower than the file limit because the
/// CEL rule iterates the map and its estimated cost must stay within budget; etcd's 1.5 MiB
/// object limit binds before this in practice.
pub const MAX_CRD_CUSTOMERS: usize = 100_000;

/// An http(s) URL with a host and no credentials, query or fragment (validation re-checks it).
pub const ENDPOINT_PATTERN: &str = r"^https?://[^/?#@\s]+(/[^?#\s]*)?$";

/// Schema of `spec.customerToPlacement`.
pub fn customer_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": MAX_CRD_CUSTOMERS,
        "additionalProperties": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES},
    })
}

/// Schema of `spec.placementToEndpoint`.
pub fn endpoint_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "minProperties": 1,
        "maxProperties": MAX_PLACEMENTS,
        "additionalProperties": {
            "type": "string",
            "maxLength": MAX_ENDPOINT_BYTES,
            "pattern": ENDPOINT_PATTERN,
        },
    })
}

/// Schema of `status.conditions`: a list map keyed on `type`, so server-side apply merges
/// conditions one by one.
#[cfg(feature = "kube")]
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".to_owned(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".to_owned(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Schema of `status.dataPlanes.replicas`: a list map keyed on `replica`, so each replica's
/// server-side apply owns exactly its own entry.
#[cfg(feature = "kube")]
pub fn replica_reports(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<crate::crd::ReplicaReport>>();
    schema.insert("x-kubernetes-list-type".to_owned(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".to_owned(),
        serde_json::json!(["replica"]),
    );
    schema
}
