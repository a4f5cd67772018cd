//! The rules that make a RoutingConfig valid, applied identically by every binary.
//!
//! Validation never stops at the first problem: an operator fixing a file wants the whole list,
//! each entry naming the key it is about (`spec.customerToPlacement.acme`). The only way to get a
//! [`ValidatedConfig`] is through [`validate`], so code that holds one can rely on every rule.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::delta::{DeltaError, SpecChanges};
use crate::digest::TableDigest;
use crate::hash::ContentHash;
use crate::manifest::{API_VERSION, KIND, ObjectMeta, RoutingConfigManifest, RoutingConfigSpec};

/// Longest accepted customer id or placement name, in bytes.
pub const MAX_NAME_BYTES: usize = 253;
/// Most customers one RoutingConfig may list.
pub const MAX_CUSTOMERS: usize = 10_000_000;
/// Most placements one RoutingConfig may declare.
pub const MAX_PLACEMENTS: usize = 1_000;
pub use crate::endpoint::MAX_ENDPOINT_BYTES;

/// One broken rule, with the path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationError {
    /// Path of the offending key, such as `spec.customerToPlacement.acme`.
    pub field: String,
    /// What is wrong with it, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every broken rule of one document (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} validation error{}: ", if n == 1 { "" } else { "s" })?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Something legal but probably unintended, reported without rejecting the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Path of the key the warning is about.
    pub field: String,
    /// What looks off.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A RoutingConfig that passed every rule; only [`validate`] (and [`crate::compose`], which
/// applies the same rules to a table composed of several objects) builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedConfig {
    metadata: ObjectMeta,
    spec: RoutingConfigSpec,
    hash: ContentHash,
    warnings: Vec<Warning>,
    /// The hash tree behind `hash`, kept so a change of a few customers is hashed in the time of
    /// the change ([`Self::with_changes`]).
    digest: Arc<TableDigest>,
    /// Customers per placement (placements without any are absent), so the unused-placement
    /// warnings of a changed table follow from the change.
    uses: BTreeMap<String, usize>,
}

impl ValidatedConfig {
    /// The validated routing rules (with `customerHeader` lowercased).
    pub fn spec(&self) -> &RoutingConfigSpec {
        &self.spec
    }

    /// Name and namespace of the object the config came from, when it had them.
    pub fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    /// Hash of the spec's content: equal hashes mean an identical routing table.
    pub fn hash(&self) -> ContentHash {
        self.hash
    }

    /// Legal but suspicious parts of the config.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// A config that passed every rule (the caller has checked them), with its hash.
    pub(crate) fn new_checked(metadata: ObjectMeta, spec: RoutingConfigSpec) -> Self {
        let mut digest = TableDigest::of_spec(&spec);
        let hash = digest.root(&spec);
        let uses = placement_uses(&spec);
        let warnings = unused_placements(&spec, &uses);
        Self {
            metadata,
            spec,
            hash,
            warnings,
            digest: Arc::new(digest),
            uses,
        }
    }

    /// This config with `changes` applied, validated exactly as [`validate`] would validate the
    /// whole result (same verdict, errors, warnings and hash). When only customers change, only
    /// they are checked and hashed, and the customer map is shared with this config: the cost
    /// follows the change, not the table. Any other change validates the whole result.
    pub fn with_changes(&self, changes: &SpecChanges) -> Result<Self, ChangeError> {
        let mut spec = self.spec.clone();
        if changes.touches_placements() {
            changes.apply(&mut spec, None)?;
            let manifest = RoutingConfigManifest {
                api_version: API_VERSION.to_owned(),
                kind: KIND.to_owned(),
                metadata: self.metadata.clone(),
                spec,
                status: None,
            };
            return Ok(validate(manifest)?);
        }
        let mut digest = TableDigest::clone(&self.digest);
        changes.apply(&mut spec, Some(&mut digest))?;
        // The rest of the table passed these rules and its placements did not change, so only
        // the changed customers (and the count) can break one, in the order `validate` reports.
        let mut errors = Vec::new();
        check_customer_count(spec.customer_to_placement.len(), &mut errors);
        for (customer, placement) in &changes.customer_to_placement {
            let Some(placement) = placement else { continue };
            let field = key_path("spec.customerToPlacement", customer);
            for why in check_customer(customer, placement, &spec.placement_to_endpoint, ENDPOINTS) {
                errors.push(err(&field, why));
            }
        }
        if !errors.is_empty() {
            return Err(ValidationErrors(errors).into());
        }
        let mut uses = self.uses.clone();
        for (customer, placement) in &changes.customer_to_placement {
            if let Some(old) = self.spec.customer_to_placement.get(customer)
                && let Some(count) = uses.get_mut(old)
            {
                *count -= 1;
                if *count == 0 {
                    uses.remove(old);
                }
            }
            if let Some(new) = placement {
                *uses.entry(new.clone()).or_default() += 1;
            }
        }
        let hash = digest.root(&spec);
        let warnings = unused_placements(&spec, &uses);
        Ok(Self {
            metadata: self.metadata.clone(),
            spec,
            hash,
            warnings,
            digest: Arc::new(digest),
            uses,
        })
    }

    /// The manifest form of this config, for display and for writing back to a file.
    pub fn to_manifest(&self) -> RoutingConfigManifest {
        RoutingConfigManifest {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status: None,
        }
    }
}

/// Why changes do not make a valid table from a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The changes were made for another table.
    #[error(transparent)]
    Delta(#[from] DeltaError),
    /// The result breaks a rule.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

/// Checks a manifest against every rule, returning all broken rules at once.
pub fn validate(manifest: RoutingConfigManifest) -> Result<ValidatedConfig, ValidationErrors> {
    let mut errors = Vec::new();
    if manifest.api_version != API_VERSION {
        errors.push(err(
            "apiVersion",
            format!("must be `{API_VERSION}`, found `{}`", manifest.api_version),
        ));
    }
    if manifest.kind != KIND {
        errors.push(err(
            "kind",
            format!("must be `{KIND}`, found `{}`", manifest.kind),
        ));
    }
    let mut spec = manifest.spec;
    spec.customer_header = spec.customer_header.to_ascii_lowercase();
    check_spec(&spec, &mut errors);
    // Delivery, not routing: checked with the rest, then left out of the table (its hash and
    // the snapshot data planes get).
    if let Some(rollout) = spec.rollout.take() {
        crate::rollout::check(&rollout, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ValidationErrors(errors));
    }
    Ok(ValidatedConfig::new_checked(manifest.metadata, spec))
}

fn check_spec(spec: &RoutingConfigSpec, errors: &mut Vec<ValidationError>) {
    check_routing(spec, errors);
    check_customer_count(spec.customer_to_placement.len(), errors);
    for (customer, placement) in &spec.customer_to_placement {
        let field = key_path("spec.customerToPlacement", customer);
        for why in check_customer(customer, placement, &spec.placement_to_endpoint, ENDPOINTS) {
            errors.push(err(&field, why));
        }
    }
}

/// Where a customer's placement must have an endpoint, as messages name it.
const ENDPOINTS: &str = "spec.placementToEndpoint";

/// Every rule about `customerHeader`, `placementToEndpoint` and `defaultPlacement`: what a
/// RoutingConfig says about routing, apart from its customers.
pub(crate) fn check_routing(spec: &RoutingConfigSpec, errors: &mut Vec<ValidationError>) {
    if let Err(why) = check_header_name(&spec.customer_header) {
        errors.push(err("spec.customerHeader", why));
    }
    if spec.placement_to_endpoint.is_empty() {
        errors.push(err(
            "spec.placementToEndpoint",
            "must name at least one placement".to_owned(),
        ));
    }
    for (placement, endpoint) in &spec.placement_to_endpoint {
        let field = key_path("spec.placementToEndpoint", placement);
        if let Err(why) = check_name(placement) {
            errors.push(err(&field, format!("placement name {why}")));
        }
        if let Err(why) = check_endpoint(endpoint) {
            errors.push(err(&field, why));
        }
    }
    if let Err(why) = check_name(&spec.default_placement) {
        errors.push(err("spec.defaultPlacement", format!("placement name {why}")));
    } else if !spec.placement_to_endpoint.contains_key(&spec.default_placement) {
        errors.push(err(
            "spec.defaultPlacement",
            format!(
                "placement `{}` has no endpoint in spec.placementToEndpoint",
                spec.default_placement
            ),
        ));
    }
}

/// The table's size limit: at most [`MAX_CUSTOMERS`] customers in all.
pub(crate) fn check_customer_count(customers: usize, errors: &mut Vec<ValidationError>) {
    if customers > MAX_CUSTOMERS {
        errors.push(err(
            "spec.customerToPlacement",
            format!("lists {customers} customers, over the limit of {MAX_CUSTOMERS}"),
        ));
    }
}

/// What is wrong with one customer assignment (nothing when empty): its id, and whether its
/// placement has an endpoint in `endpoints`, which messages call `endpoints_in`.
pub(crate) fn check_customer(
    customer: &str,
    placement: &str,
    endpoints: &std::collections::BTreeMap<String, String>,
    endpoints_in: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(why) = check_name(customer) {
        problems.push(format!("customer id {why}"));
    }
    if !endpoints.contains_key(placement) {
        problems.push(format!(
            "placement `{placement}` has no endpoint in {endpoints_in}"
        ));
    }
    problems
}

/// How many customers each placement serves.
fn placement_uses(spec: &RoutingConfigSpec) -> BTreeMap<String, usize> {
    let mut uses: HashMap<&str, usize> = HashMap::with_capacity(spec.placement_to_endpoint.len());
    for placement in spec.customer_to_placement.values() {
        *uses.entry(placement).or_default() += 1;
    }
    uses.into_iter().map(|(p, n)| (p.to_owned(), n)).collect()
}

/// Placements that no customer uses and that are not the default: legal, probably unintended.
fn unused_placements(spec: &RoutingConfigSpec, uses: &BTreeMap<String, usize>) -> Vec<Warning> {
    spec.placement_to_endpoint
        .keys()
        .filter(|p| **p != spec.default_placement && !uses.contains_key(p.as_str()))
        .map(|p| Warning {
            field: key_path("spec.placementToEndpoint", p),
            message: "placement has no customers and is not the default placement".to_owned(),
        })
        .collect()
}

pub(crate) fn err(field: &str, message: String) -> ValidationError {
    ValidationError {
        field: field.to_owned(),
        message,
    }
}

/// `map.key` for plain keys, `map["k e y"]` for keys that need quoting.
pub fn key_path(map: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if plain {
        format!("{map}.{key}")
    } else {
        format!("{map}[{key:?}]")
    }
}

/// Customer ids and placement names: non-empty, bounded, printable, no surrounding spaces.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "is {} bytes long, over the limit of {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(format!("contains the non-printable or non-ASCII character {c:?}"));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err("has leading or trailing spaces".to_owned());
    }
    Ok(())
}

fn check_header_name(name: &str) -> Result<(), String> {
    const SEPARATORS: &[u8] = b"\"(),/:;<=>?@[\\]{}";
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("is over {MAX_NAME_BYTES} bytes"));
    }
    match name
        .bytes()
        .find(|b| !b.is_ascii_graphic() || SEPARATORS.contains(b))
    {
        Some(b) => Err(format!(
            "`{name}` is not a valid HTTP header name (bad character {:?})",
            b as char
        )),
        None => Ok(()),
    }
}

/// Endpoints are parsed exactly as the data plane parses them (see [`crate::endpoint`]).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    crate::endpoint::Endpoint::parse(endpoint).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(spec: RoutingConfigSpec) -> RoutingConfigManifest {
        RoutingConfigManifest {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta::default(),
            spec,
            status: None,
        }
    }

    #[test]
    fn changes_validate_exactly_as_the_whole_result_would() {
        let base = validate(manifest(spec(
            &[("acme", "t1"), ("globex", "t2"), ("initech", "t1")],
            &[
                ("t1", "http://a"),
                ("t2", "http://b"),
                ("t3", "http://c"),
                ("t4", "http://d"),
            ],
            "t3",
        )))
        .unwrap();
        let changes = |json: &str| -> SpecChanges { serde_json::from_str(json).unwrap() };
        let cases = [
            r#"{}"#,
            r#"{"customerToPlacement":{"acme":"t2"}}"#,
            r#"{"customerToPlacement":{"acme":null,"initech":null}}"#,
            r#"{"customerToPlacement":{"new":"t4","globex":null}}"#,
            r#"{"customerToPlacement":{"new":"t9","bad id":"t1"," lead":"nowhere"}}"#,
            r#"{"customerToPlacement":{"absent":null,"new":"t9"}}"#,
            r#"{"customerToPlacement":{"":"t1"}}"#,
            r#"{"placementToEndpoint":{"t1":null}}"#,
            r#"{"placementToEndpoint":{"t5":"http://e"},"customerToPlacement":{"acme":"t5"}}"#,
            r#"{"defaultPlacement":"t4","customerToPlacement":{"acme":"t3"}}"#,
            r#"{"customerHeader":"X-Tenant"}"#,
        ];
        for case in cases {
            let c = changes(case);
            let incremental = base.with_changes(&c);
            let mut whole = base.spec().clone();
            let full = c
                .apply(&mut whole, None)
                .map_err(ChangeError::from)
                .and_then(|()| validate(manifest(whole)).map_err(ChangeError::from));
            match (&incremental, &full) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.spec(), b.spec(), "{case}");
                    assert_eq!(a.hash(), b.hash(), "{case}");
                    assert_eq!(a.warnings(), b.warnings(), "{case}");
                    assert_eq!(a.uses, b.uses, "{case}");
                }
                (a, b) => assert_eq!(a.as_ref().err(), b.as_ref().err(), "{case}"),
            }
        }
        // The base is untouched, and a change shares its customers rather than copying them.
        assert_eq!(base.spec().customer_to_placement.len(), 3);
        let moved = base.with_changes(&changes(cases[1])).unwrap();
        assert_eq!(moved.spec().customer_to_placement["acme"], "t2");
        assert_eq!(base.spec().customer_to_placement["acme"], "t1");
    }

    fn spec(customers: &[(&str, &str)], endpoints: &[(&str, &str)], default: &str) -> RoutingConfigSpec {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        RoutingConfigSpec {
            customer_header: "X-Customer-ID".to_owned(),
            default_placement: default.to_owned(),
            customer_to_placement: map(customers).into_iter().collect(),
            placement_to_endpoint: map(endpoints),
            rollout: None,
        }
    }

    fn fields(result: Result<ValidatedConfig, ValidationErrors>) -> Vec<String> {
        result.unwrap_err().0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn valid_config_lowercases_header_and_warns_on_unused_placement() {
        let cfg = validate(manifest(spec(
            &[("acme", "t1")],
            &[("t1", "http://a:1"), ("t2", "https://b/x"), ("t3", "http://c:3")],
            "t3",
        )))
        .unwrap();
        assert_eq!(cfg.spec().customer_header, "x-customer-id");
        let warned: Vec<_> = cfg.warnings().iter().map(|w| w.field.as_str()).collect();
        assert_eq!(warned, ["spec.placementToEndpoint.t2"]);
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_key() {
        let mut m = manifest(spec(
            &[("acme", "missing"), ("", "t1"), ("bad\u{7}", "t1")],
            &[("t1", "ftp://a"), ("t2", "http://"), ("t3", "not a url")],
            "nowhere",
        ));
        m.kind = "Ingress".to_owned();
        let got = fields(validate(m));
        assert_eq!(
            got,
            [
                "kind",
                "spec.placementToEndpoint.t1",
                "spec.placementToEndpoint.t2",
                "spec.placementToEndpoint.t3",
                "spec.defaultPlacement",
                "spec.customerToPlacement[\"\"]",
                "spec.customerToPlacement.acme",
                "spec.customerToPlacement[\"bad\\u{7}\"]",
            ]
        );
    }

    #[test]
    fn names_are_bounded() {
        let long = "c".repeat(MAX_NAME_BYTES + 1);
        let got = fields(validate(manifest(spec(
            &[(&long, "t1")],
            &[("t1", "http://a")],
            "t1",
        ))));
        assert_eq!(got, [format!("spec.customerToPlacement.{long}")]);
    }

    #[test]
    fn endpoint_rules() {
        for bad in [
            "http://user:pw@h",
            "http://h?x=1",
            "http://h#f",
            "/relative",
            "unix:///x",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad} accepted");
        }
        for good in [
            "http://h",
            "https://h:8443/base",
            "http://[::1]:80",
            "http://10.0.0.1:9001",
        ] {
            assert!(check_endpoint(good).is_ok(), "{good} rejected");
        }
    }

    #[test]
    fn hash_ignores_metadata_and_source_order() {
        let a = validate(manifest(spec(
            &[("x", "t1"), ("y", "t1")],
            &[("t1", "http://a")],
            "t1",
        )))
        .unwrap();
        let mut m = manifest(spec(&[("y", "t1"), ("x", "t1")], &[("t1", "http://a")], "t1"));
        m.metadata.name = Some("other".to_owned());
        assert_eq!(a.hash(), validate(m).unwrap().hash());
    }

    /// A rollout is checked with the spec, but it is delivery, not routing: the validated table
    /// (its hash, and the snapshot built from it) is the same with or without one.
    #[test]
    fn a_rollout_is_checked_but_is_no_part_of_the_table() {
        let plain = validate(manifest(spec(&[("x", "t1")], &[("t1", "http://a")], "t1"))).unwrap();
        let mut m = manifest(spec(&[("x", "t1")], &[("t1", "http://a")], "t1"));
        m.spec.rollout = Some(
            serde_json::from_str(r#"{"steps": [{"percent": 10, "pause": "30s"}, {"percent": 50}]}"#).unwrap(),
        );
        let staged = validate(m.clone()).unwrap();
        assert_eq!(staged.hash(), plain.hash());
        assert_eq!(staged.spec(), plain.spec());
        m.spec.rollout.as_mut().unwrap().steps[1].percent = 5;
        m.spec.default_placement = "missing".to_owned();
        let errors = validate(m).unwrap_err().to_string();
        assert!(errors.starts_with("2 validation errors"), "{errors}");
        assert!(
            errors.contains("spec.rollout.steps[1].percent: must be above the step before it (10 %)"),
            "{errors}"
        );
    }
}
