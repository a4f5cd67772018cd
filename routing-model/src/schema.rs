//! JSON-schema pieces for the CRD that schemars cannot derive from the types alone: bounds on
//! map sizes and on map values, which also keep the CEL rules' estimated cost within the
//! apiserver's budget.

use schemars::{Schema, SchemaGenerator, json_schema};

use crate::validate::{MAX_ENDPOINT_BYTES, MAX_NAME_BYTES, MAX_PLACEMENTS};

/// Most customers one RoutingConfig *object* may list. Lower than the file limit because the
/// CEL rule iterates the map and its estimated cost must stay within budget; etcd's 1.5 MiB
/// object limit binds before this in practice.
pub const MAX_CRD_CUSTOMERS: usize = 100_000;

/// An `http`, `h2c` or `https` URL in printable ASCII with a host and no credentials, query or fragment
/// (validation re-checks it with the parser the proxy uses).
pub const ENDPOINT_PATTERN: &str =
    r"^(https?|h2c)://[\x21-\x22\x24-\x2e\x30-\x3e\x41-\x7e]+(/[\x21-\x22\x24-\x3e\x40-\x7e]*)?$";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;

    /// The CRD's pattern is a first line of defence: it never refuses an endpoint validation
    /// accepts, and refuses the non-ASCII ones validation refuses.
    #[test]
    fn endpoint_pattern_agrees_with_validation() {
        let pattern = regex::Regex::new(ENDPOINT_PATTERN).unwrap();
        for good in [
            "http://h",
            "https://h:8443/base/x@y",
            "http://[::1]:80",
            "http://cell.ns.svc:9001/a/b%20c",
            "h2c://grpc:50051",
        ] {
            assert!(Endpoint::parse(good).is_ok(), "{good}");
            assert!(pattern.is_match(good), "pattern refuses {good}");
        }
        for bad in [
            "http://bücher.example:9001",
            "http://h/päth",
            "http://u@h",
            "http://h?q",
            "http://h#f",
            "h2://h",
            "grpc://h",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
            assert!(!pattern.is_match(bad), "pattern accepts {bad}");
        }
    }
}
