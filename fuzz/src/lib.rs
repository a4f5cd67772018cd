//! What the fuzz targets share: structure-aware inputs that reach deep into validation, and the
//! invariants every accepted input must satisfy.
//!
//! A byte-level fuzzer rarely writes a well-formed RoutingConfig, so most of its inputs stop at
//! the parser. [`Spec`] builds documents from pieces chosen to sit on the boundaries that matter
//! (multi-byte characters, backslashes, punycode, ports, credentials, header separators), so
//! validation and the routing table see inputs that are almost valid. [`check_accepted`] holds
//! every promise an accepted config makes to the rest of cellroute. [`Snapshot`] wraps a
//! [`Spec`] in a snapshot message whose identity is mostly right, for the cache file.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Result, Unstructured};
use routing_model::endpoint::Endpoint;
use routing_model::protocol::{SnapshotMessage, SnapshotRef};
use routing_model::{ContentHash, ParseLimits, RoutingConfigSpec, RoutingTable, ValidatedConfig};

/// Pieces that tend to break parsers and validators.
const PIECES: &[&str] = &[
    "", " ", "a", "tier1", "acme", "é", "ü", "\u{7f}", "\u{0}", "\\", "\\\\", "\"", "'", ":", "@",
    "%", "%41", "%zz", "#", "?", "/", "//", "..", "xn--bcher-kva", "bücher", "[::1]", "0", "65535",
    "65536", "99999", "-1", "HTTP", "http", "https", "ftp", "http://", "https://", "http://h",
    "http://127.0.0.1:9001", "http://h:0", "http://u:p@h", "http://h/base/", "http://h?q",
    "http://h#f", "x-customer-id", "X-Customer-ID", "x customer", "\t", "\n", "\r\n", "&a", "*a",
    "!tag", "~", "null", "true", "1e9", "- ", "{", "}", "[", "]", "|", ">",
];

/// A string built from [`PIECES`] and raw arbitrary text.
pub fn tricky(u: &mut Unstructured<'_>) -> Result<String> {
    let parts = u.int_in_range(0..=4)?;
    let mut out = String::new();
    for _ in 0..parts {
        if u.ratio(3, 4)? {
            out.push_str(u.choose(PIECES)?);
        } else {
            let raw: String = u.arbitrary()?;
            out.extend(raw.chars().take(16));
        }
    }
    Ok(out)
}

/// A RoutingConfig document, as a JSON value, built to be almost valid; the flag asks for the
/// (slower) YAML comparison on one input in eight.
#[derive(Debug)]
pub struct Spec(pub serde_json::Value, pub bool);

impl<'a> Arbitrary<'a> for Spec {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let placements: Vec<String> = (0..u.int_in_range(0..=4)?)
            .map(|i| if u.ratio(2, 3)? { Ok(format!("p{i}")) } else { tricky(u) })
            .collect::<Result<_>>()?;
        let endpoint = |u: &mut Unstructured<'a>| -> Result<String> {
            Ok(match u.int_in_range(0..=2)? {
                0 => format!("http://127.0.0.1:{}", u.int_in_range(1..=65535u32)?),
                1 => format!("{}{}{}", u.choose(&["http://", "https://", ""])?, tricky(u)?, tricky(u)?),
                _ => tricky(u)?,
            })
        };
        let mut endpoints = serde_json::Map::new();
        for p in &placements {
            endpoints.insert(p.clone(), endpoint(u)?.into());
        }
        let pick = |u: &mut Unstructured<'a>| -> Result<String> {
            if !placements.is_empty() && u.ratio(4, 5)? {
                Ok(u.choose(&placements)?.clone())
            } else {
                tricky(u)
            }
        };
        let mut customers = serde_json::Map::new();
        for i in 0..u.int_in_range(0..=8)? {
            let id = if u.ratio(1, 2)? { format!("c{i}") } else { tricky(u)? };
            customers.insert(id, pick(u)?.into());
        }
        let mut spec = serde_json::Map::new();
        spec.insert("defaultPlacement".into(), pick(u)?.into());
        spec.insert("placementToEndpoint".into(), endpoints.into());
        if u.ratio(3, 4)? {
            spec.insert("customerToPlacement".into(), customers.into());
        }
        if u.ratio(1, 3)? {
            spec.insert("customerHeader".into(), tricky(u)?.into());
        }
        if u.ratio(1, 10)? {
            spec.insert(tricky(u)?, tricky(u)?.into());
        }
        Ok(Spec(serde_json::json!({
            "apiVersion": if u.ratio(15, 16)? { "cellroute.dev/v1alpha1".to_owned() } else { tricky(u)? },
            "kind": "RoutingConfig",
            "metadata": {"name": "routes", "namespace": "default"},
            "spec": spec,
        }), u.ratio(1, 8)?))
    }
}

/// Parse limits small enough that a run never spends its time on one huge input.
pub fn limits() -> ParseLimits {
    ParseLimits { max_bytes: 1 << 20 }
}

/// Every promise an accepted config makes: its endpoints build upstreams with the parser the
/// proxy uses, its table routes every listed customer to its placement and everyone else to the
/// default, and its canonical JSON loads back to the same content hash.
pub fn check_accepted(config: &ValidatedConfig) {
    let spec = config.spec();
    for (placement, endpoint) in &spec.placement_to_endpoint {
        if let Err(e) = Endpoint::parse(endpoint) {
            panic!("accepted endpoint {endpoint:?} of {placement:?} does not parse: {e}");
        }
    }
    let table = RoutingTable::build(config, |name, _| name.to_owned());
    assert_eq!(table.customers(), spec.customer_to_placement.len());
    for (customer, placement) in &spec.customer_to_placement {
        let route = table.route(Some(customer.as_bytes()));
        assert!(route.matched, "{customer:?} is listed but not matched");
        assert_eq!(&route.placement.payload, placement);
    }
    let unlisted = table.route(None);
    assert_eq!(unlisted.placement.payload, spec.default_placement);
    let manifest = serde_json::to_value(config.to_manifest()).expect("manifest serializes");
    let again = serde_json::from_value(manifest)
        .map_err(|e| e.to_string())
        .and_then(|m| routing_model::validate::validate(m).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| panic!("an accepted config does not load back from its own JSON: {e}"));
    assert_eq!(again.hash(), config.hash(), "the hash changed across a JSON round trip");
}

/// Validates a document given as a JSON value, without the text parser (which `manifest_bytes`
/// covers), so targets that need a valid table spend their time past parsing.
pub fn validate_value(doc: &serde_json::Value) -> Option<ValidatedConfig> {
    let manifest = serde_json::from_value(doc.clone()).ok()?;
    routing_model::validate::validate(manifest).ok()
}

/// The customer map of an accepted config, for differential lookups.
pub fn customer_map(config: &ValidatedConfig) -> BTreeMap<Vec<u8>, String> {
    config
        .spec()
        .customer_to_placement
        .iter()
        .map(|(c, p)| (c.as_bytes().to_vec(), p.clone()))
        .collect()
}

/// A snapshot message around a [`Spec`], as the control plane would push it (and the data plane
/// cache it): mostly with the spec's own hash and the object it names, sometimes with a hash or
/// name that does not fit. `servable` says whether the data plane would apply it (shared
/// validation, and the hash it claims).
#[derive(Debug)]
pub struct Snapshot {
    /// The message.
    pub message: SnapshotMessage,
    /// Whether its spec validates and hashes to `message.snapshot.hash`.
    pub servable: bool,
}

impl<'a> Arbitrary<'a> for Snapshot {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let doc = Spec::arbitrary(u)?.0;
        // A spec with a key the manifest does not know cannot be a `RoutingConfigSpec`: use the
        // smallest valid one instead.
        let spec: RoutingConfigSpec = serde_json::from_value(doc["spec"].clone()).unwrap_or_else(|_| {
            serde_json::from_value(serde_json::json!({
                "defaultPlacement": "a",
                "placementToEndpoint": {"a": "http://127.0.0.1:9001"},
            }))
            .expect("the fallback spec deserializes")
        });
        let routing_config = if u.ratio(7, 8)? {
            "default/routes".to_owned()
        } else {
            tricky(u)?
        };
        let lineage = if u.ratio(1, 2)? {
            "uid-1".to_owned()
        } else {
            tricky(u)?
        };
        let hash = if u.ratio(7, 8)? {
            ContentHash::of_spec(&spec)
        } else {
            let bytes: [u8; 32] = u.arbitrary()?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}").parse().expect("64 hex digits are a hash")
        };
        let message = SnapshotMessage {
            routing_config,
            snapshot: SnapshotRef {
                lineage,
                version: u.arbitrary()?,
                hash,
            },
            spec,
        };
        let servable = routing_model::validate::validate(message.to_manifest())
            .is_ok_and(|config| config.hash() == message.snapshot.hash);
        Ok(Self { message, servable })
    }
}
