//! One routing table from several objects: a RoutingConfig (how to route, and customers of its
//! own) and the RoutingShards labelled for it (more customers).
//!
//! The composed table is checked with the very rules [`crate::validate`] applies to a single
//! RoutingConfig, so a table passes whether it is kept in one object or split across many, and
//! both binaries agree. What composition adds:
//! - every error names the object at fault and its key
//!   (`RoutingShard ns/routes-0003: spec.customerToPlacement.acme: placement ...`);
//! - a customer assigned by two objects is an error reported on both, naming both: which one
//!   wins must never depend on the order objects happen to be read in.
//!
//! The composed spec is the RoutingConfig's spec with every customer of every member, so its
//! content hash is the hash of the same table kept in one object.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use crate::delta::{SpecChanges, changed_customers};
use crate::manifest::{CustomerMap, KIND, ObjectMeta, RoutingConfigSpec, SHARD_KIND};
use crate::validate::{
    ValidatedConfig, ValidationError, check_customer, check_customer_count, check_routing, key_path,
};

/// One RoutingShard of the table.
#[derive(Debug, Clone, Copy)]
pub struct Shard<'a> {
    /// Its name (in the RoutingConfig's namespace).
    pub name: &'a str,
    /// Its customers.
    pub customers: &'a CustomerMap,
}

/// Everything one table is made of.
#[derive(Debug, Clone)]
pub struct Members<'a> {
    /// The RoutingConfig's namespace (the shards' too).
    pub namespace: &'a str,
    /// The RoutingConfig's name.
    pub name: &'a str,
    /// The RoutingConfig's spec, with its own customers.
    pub config: &'a RoutingConfigSpec,
    /// Its shards.
    pub shards: Vec<Shard<'a>>,
}

/// Which object of a table: the RoutingConfig, or one of its shards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Member {
    /// The RoutingConfig itself.
    Config,
    /// The RoutingShard of this name.
    Shard(String),
}

/// One broken rule, with the object and the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberError {
    /// Which object.
    pub member: Member,
    /// True for a customer another object of the table also assigns; false for a rule the
    /// object breaks on its own.
    pub conflict: bool,
    /// `RoutingShard ns/name`, as messages name it.
    pub object: String,
    /// Path of the offending key in that object, such as `spec.customerToPlacement.acme`.
    pub field: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for MemberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// Every broken rule of one table (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct CompositionErrors(pub Vec<MemberError>);

impl CompositionErrors {
    /// The errors about one object.
    pub fn about<'s>(&'s self, member: &'s Member) -> impl Iterator<Item = &'s MemberError> + 's {
        self.0.iter().filter(move |e| &e.member == member)
    }

    /// The objects at fault, each once, the RoutingConfig first.
    pub fn members(&self) -> Vec<&Member> {
        let mut members: Vec<&Member> = self.0.iter().map(|e| &e.member).collect();
        members.sort();
        members.dedup();
        members
    }
}

impl fmt::Display for CompositionErrors {
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

impl Members<'_> {
    /// How messages name `member`: `RoutingShard ns/name`.
    pub fn object(&self, member: &Member) -> String {
        match member {
            Member::Config => format!("{KIND} {}/{}", self.namespace, self.name),
            Member::Shard(name) => format!("{SHARD_KIND} {}/{name}", self.namespace),
        }
    }
}

/// The table of `members`, checked with the shared rules; every broken rule otherwise, each
/// naming its object and key.
pub fn compose(members: &Members<'_>) -> Result<ValidatedConfig, CompositionErrors> {
    let mut errors = Vec::new();
    let config_object = members.object(&Member::Config);
    let at = |member: &Member, errors: &mut Vec<MemberError>, e: ValidationError| {
        errors.push(MemberError {
            member: member.clone(),
            conflict: false,
            object: members.object(member),
            field: e.field,
            message: e.message,
        });
    };

    let mut spec = RoutingConfigSpec {
        customer_header: members.config.customer_header.to_ascii_lowercase(),
        default_placement: members.config.default_placement.clone(),
        customer_to_placement: CustomerMap::new(),
        placement_to_endpoint: members.config.placement_to_endpoint.clone(),
        // Delivery, not routing: checked here, never part of the table.
        rollout: None,
    };
    let mut own = Vec::new();
    check_routing(&spec, &mut own);
    if let Some(rollout) = &members.config.rollout {
        crate::rollout::check(rollout, &mut own);
    }
    for e in own {
        at(&Member::Config, &mut errors, e);
    }

    // Who assigned each customer first, in a fixed order: the RoutingConfig, then shards by name.
    let mut sources: Vec<(Member, &CustomerMap)> =
        vec![(Member::Config, &members.config.customer_to_placement)];
    let mut shards = members.shards.clone();
    shards.sort_by(|a, b| a.name.cmp(b.name));
    sources.extend(
        shards
            .iter()
            .map(|s| (Member::Shard(s.name.to_owned()), s.customers)),
    );
    let shard_endpoints = format!("spec.placementToEndpoint of {config_object}");
    let mut owner: HashMap<&str, usize> = HashMap::new();
    let mut composed = CustomerMap::new();
    for (index, (member, customers)) in sources.iter().enumerate() {
        let endpoints_in = match member {
            Member::Config => "spec.placementToEndpoint",
            Member::Shard(_) => shard_endpoints.as_str(),
        };
        for (customer, placement) in customers.iter() {
            let field = key_path("spec.customerToPlacement", customer);
            for why in check_customer(customer, placement, &spec.placement_to_endpoint, endpoints_in) {
                at(
                    member,
                    &mut errors,
                    ValidationError {
                        field: field.clone(),
                        message: why,
                    },
                );
            }
            match owner.get(customer.as_str()) {
                None => {
                    owner.insert(customer, index);
                    composed.insert(customer.clone(), placement.clone());
                }
                Some(&first) => {
                    let (first_member, first_customers) = &sources[first];
                    let assigned = |m: &Member, p: &str| format!("{} (`{p}`)", members.object(m));
                    let here = assigned(member, placement);
                    let there = assigned(first_member, &first_customers[customer]);
                    let message = |other: &str| {
                        format!(
                            "customer `{customer}` is also assigned by {other}: a customer belongs to one object of the table; remove it from one of them"
                        )
                    };
                    for (m, other) in [(first_member, &here), (member, &there)] {
                        errors.push(MemberError {
                            member: m.clone(),
                            conflict: true,
                            object: members.object(m),
                            field: field.clone(),
                            message: message(other),
                        });
                    }
                }
            }
        }
    }
    let mut count = Vec::new();
    check_customer_count(composed.len(), &mut count);
    for e in count {
        at(&Member::Config, &mut errors, e);
    }
    if !errors.is_empty() {
        return Err(CompositionErrors(errors));
    }
    spec.customer_to_placement = composed;
    let metadata = ObjectMeta {
        name: Some(members.name.to_owned()),
        namespace: Some(members.namespace.to_owned()),
    };
    Ok(ValidatedConfig::new_checked(metadata, spec))
}

/// The table of `members`, as [`compose`] makes it (the same table, hash, warnings and errors),
/// from `table`, the composition of `base`: when the routing rules are unchanged and the
/// objects only assign customers differently, only the customers that changed are diffed,
/// checked and hashed, and the customer map is shared with `table`, so a one-customer edit of
/// one shard of a 1M-customer table costs that shard's diff, not the table. Anything else (the
/// rules changed, a customer now assigned twice, a broken rule) is composed whole, which names
/// every object at fault.
pub fn recompose(
    base: &Members<'_>,
    table: &ValidatedConfig,
    members: &Members<'_>,
) -> Result<ValidatedConfig, CompositionErrors> {
    let Some(changes) = customer_changes(base, table, members) else {
        return compose(members);
    };
    table.with_changes(&changes).or_else(|_| compose(members))
}

/// The RoutingConfig's fields besides its customers.
fn same_rules(a: &RoutingConfigSpec, b: &RoutingConfigSpec) -> bool {
    a.customer_header == b.customer_header
        && a.default_placement == b.default_placement
        && a.placement_to_endpoint == b.placement_to_endpoint
        && a.rollout == b.rollout
}

/// Each object's customers: the RoutingConfig's under `None`, a shard's under its name.
fn customers_by_member<'a>(members: &Members<'a>) -> BTreeMap<Option<&'a str>, &'a CustomerMap> {
    std::iter::once((None, &members.config.customer_to_placement))
        .chain(members.shards.iter().map(|s| (Some(s.name), s.customers)))
        .collect()
}

/// The changes to the customers of `table` (composed of `base`) that make the composition of
/// `members`; `None` when that takes a whole composition.
fn customer_changes(
    base: &Members<'_>,
    table: &ValidatedConfig,
    members: &Members<'_>,
) -> Option<SpecChanges> {
    if base.namespace != members.namespace
        || base.name != members.name
        || !same_rules(base.config, members.config)
    {
        return None;
    }
    let before = customers_by_member(base);
    let after = customers_by_member(members);
    let none = CustomerMap::new();
    // The objects whose customers changed, (before, after), and every customer they changed.
    let mut changed: Vec<(&CustomerMap, &CustomerMap)> = Vec::new();
    let mut touched: BTreeSet<&String> = BTreeSet::new();
    let objects: BTreeSet<_> = before.keys().chain(after.keys()).collect();
    for object in objects {
        let old = before.get(object).copied().unwrap_or(&none);
        let new = after.get(object).copied().unwrap_or(&none);
        let mut any = false;
        for (customer, _) in changed_customers(old, new) {
            any = true;
            touched.insert(customer);
        }
        if any {
            changed.push((old, new));
        }
    }
    let composed = &table.spec().customer_to_placement;
    let mut customers = BTreeMap::new();
    for customer in touched {
        // `table` assigns each customer once, so an object that did not change and assigns
        // `customer` is the one `table` has it from, unless a changed object had it.
        let kept = composed
            .get(customer)
            .filter(|_| !changed.iter().any(|(old, _)| old.contains_key(customer)));
        let mut owners = usize::from(kept.is_some());
        let mut placement = kept;
        for (_, new) in &changed {
            if let Some(p) = new.get(customer) {
                owners += 1;
                placement = Some(p);
            }
        }
        if owners > 1 {
            return None;
        }
        if composed.get(customer) != placement {
            customers.insert(customer.clone(), placement.cloned());
        }
    }
    Some(SpecChanges {
        customer_to_placement: customers,
        ..SpecChanges::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{API_VERSION, RoutingConfigManifest};

    fn map<M: FromIterator<(String, String)>>(pairs: &[(&str, &str)]) -> M {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn config(customers: &[(&str, &str)]) -> RoutingConfigSpec {
        RoutingConfigSpec {
            customer_header: "X-Customer-ID".to_owned(),
            default_placement: "tier3".to_owned(),
            customer_to_placement: map(customers),
            placement_to_endpoint: map(&[("tier1", "http://a:1"), ("tier3", "http://c:3")]),
            rollout: None,
        }
    }

    fn members<'a>(config: &'a RoutingConfigSpec, shards: &[(&'a str, &'a CustomerMap)]) -> Members<'a> {
        Members {
            namespace: "ns",
            name: "routes",
            config,
            shards: shards
                .iter()
                .map(|(name, customers)| Shard { name, customers })
                .collect(),
        }
    }

    fn lines(e: &CompositionErrors) -> Vec<String> {
        e.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_composed_table_is_the_same_table_as_one_object() {
        let spec = config(&[("acme", "tier1")]);
        let a = map(&[("globex", "tier1"), ("hooli", "tier3")]);
        let b = map(&[("initech", "tier3")]);
        let composed = compose(&members(&spec, &[("routes-b", &b), ("routes-a", &a)])).unwrap();
        let whole = crate::validate::validate(RoutingConfigManifest {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta::default(),
            spec: config(&[
                ("acme", "tier1"),
                ("globex", "tier1"),
                ("hooli", "tier3"),
                ("initech", "tier3"),
            ]),
            status: None,
        })
        .unwrap();
        assert_eq!(composed.spec(), whole.spec());
        assert_eq!(composed.hash(), whole.hash());
        assert_eq!(composed.spec().customer_header, "x-customer-id");
        assert_eq!(composed.metadata().name.as_deref(), Some("routes"));
    }

    #[test]
    fn errors_name_the_object_and_the_key() {
        let mut spec = config(&[("acme", "tier9")]);
        spec.default_placement = "nowhere".to_owned();
        let bad = map(&[("good", "tier1"), ("globex", "tier7"), ("bad\u{7}", "tier1")]);
        let errors = compose(&members(&spec, &[("routes-0003", &bad)])).unwrap_err();
        assert_eq!(
            lines(&errors),
            [
                "RoutingConfig ns/routes: spec.defaultPlacement: placement `nowhere` has no endpoint in spec.placementToEndpoint",
                "RoutingConfig ns/routes: spec.customerToPlacement.acme: placement `tier9` has no endpoint in spec.placementToEndpoint",
                "RoutingShard ns/routes-0003: spec.customerToPlacement[\"bad\\u{7}\"]: customer id contains the non-printable or non-ASCII character '\\u{7}'",
                "RoutingShard ns/routes-0003: spec.customerToPlacement.globex: placement `tier7` has no endpoint in spec.placementToEndpoint of RoutingConfig ns/routes",
            ]
        );
        let shard = Member::Shard("routes-0003".to_owned());
        assert_eq!(errors.about(&shard).count(), 2);
        assert_eq!(errors.members(), [&Member::Config, &shard]);
    }

    #[test]
    fn a_customer_in_two_objects_is_an_error_on_both_naming_both() {
        let spec = config(&[("acme", "tier1")]);
        let a = map(&[("globex", "tier1")]);
        let b = map(&[("globex", "tier3"), ("acme", "tier1")]);
        let errors = compose(&members(&spec, &[("routes-b", &b), ("routes-a", &a)])).unwrap_err();
        let a_member = Member::Shard("routes-a".to_owned());
        let b_member = Member::Shard("routes-b".to_owned());
        let about = |m: &Member| errors.about(m).map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            about(&a_member),
            [
                "RoutingShard ns/routes-a: spec.customerToPlacement.globex: customer `globex` is also assigned by RoutingShard ns/routes-b (`tier3`): a customer belongs to one object of the table; remove it from one of them"
            ]
        );
        let on_b = about(&b_member);
        assert_eq!(on_b.len(), 2, "{on_b:?}");
        assert!(
            on_b[0].contains("customer `acme` is also assigned by RoutingConfig ns/routes (`tier1`)"),
            "{on_b:?}"
        );
        assert!(
            on_b[1].contains("customer `globex` is also assigned by RoutingShard ns/routes-a (`tier1`)"),
            "{on_b:?}"
        );
        assert_eq!(about(&Member::Config).len(), 1);
        assert!(errors.0.iter().all(|e| e.conflict));
        // Whatever order the shards are listed in, the same errors.
        let again = compose(&members(&spec, &[("routes-a", &a), ("routes-b", &b)])).unwrap_err();
        assert_eq!(again, errors);
    }

    #[test]
    fn a_config_without_shards_composes_to_what_validate_accepts() {
        let spec = config(&[("acme", "tier1")]);
        let alone = compose(&members(&spec, &[])).unwrap();
        let mut manifest = RoutingConfigManifest {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta::default(),
            spec: spec.clone(),
            status: None,
        };
        assert_eq!(
            alone.hash(),
            crate::validate::validate(manifest.clone()).unwrap().hash()
        );
        assert_eq!(
            alone.warnings(),
            crate::validate::validate(manifest.clone()).unwrap().warnings()
        );
        manifest.spec.default_placement = "x".to_owned();
        let single = crate::validate::validate(manifest.clone()).unwrap_err();
        let members = members(&manifest.spec, &[]);
        let composed = compose(&members).unwrap_err();
        let fields: Vec<_> = composed.0.iter().map(|e| (&e.field, &e.message)).collect();
        let expected: Vec<_> = single.0.iter().map(|e| (&e.field, &e.message)).collect();
        assert_eq!(fields, expected);
    }

    /// Whatever the objects were and however they changed (customers moved within and between
    /// shards, shards added and deleted, conflicts made and resolved, broken customers, the
    /// rules changed), recomposing from the last table gives what composing whole gives.
    #[test]
    fn a_recomposition_is_the_composition() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let customer = prop::sample::select(vec!["a", "b", "c", "d", "e", "f", "g", "h"]);
        let placement = prop::sample::select(vec!["tier1", "tier3", "tier1", "tier3", "nowhere"]);
        let objects = || {
            (
                prop::collection::btree_map(customer.clone(), placement.clone(), 0..3),
                prop::collection::btree_map(
                    prop::sample::select(vec!["s0", "s1", "s2"]),
                    prop::collection::btree_map(customer.clone(), placement.clone(), 0..4),
                    0..3,
                ),
                prop::sample::select(vec!["tier3", "tier3", "tier3", "tier1"]),
            )
        };
        let mut runner = TestRunner::new(Config::with_cases(4_000));
        let incremental = std::cell::Cell::new(0);
        runner
            .run(&(objects(), objects()), |(before, after)| {
                let spec = |(own, _, default): &(BTreeMap<&str, &str>, _, &str)| {
                    let pairs: Vec<_> = own.iter().map(|(k, v)| (*k, *v)).collect();
                    let mut spec = config(&pairs);
                    spec.default_placement = (*default).to_owned();
                    spec
                };
                let shards = |(_, shards, _): &(_, BTreeMap<&str, BTreeMap<&str, &str>>, _)| -> Vec<(String, CustomerMap)> {
                    shards
                        .iter()
                        .map(|(name, c)| {
                            let pairs: Vec<_> = c.iter().map(|(k, v)| (*k, *v)).collect();
                            ((*name).to_owned(), map(&pairs))
                        })
                        .collect()
                };
                let (spec0, shards0) = (spec(&before), shards(&before));
                let (spec1, shards1) = (spec(&after), shards(&after));
                let m0: Vec<_> = shards0.iter().map(|(n, c)| (n.as_str(), c)).collect();
                let m1: Vec<_> = shards1.iter().map(|(n, c)| (n.as_str(), c)).collect();
                let base = members(&spec0, &m0);
                let Ok(table) = compose(&base) else {
                    return Ok(());
                };
                let next = members(&spec1, &m1);
                if customer_changes(&base, &table, &next).is_some() {
                    incremental.set(incremental.get() + 1);
                }
                prop_assert_eq!(recompose(&base, &table, &next), compose(&next));
                Ok(())
            })
            .unwrap();
        let incremental = incremental.get();
        assert!(
            incremental > 100,
            "only {incremental} cases took the incremental path"
        );
    }
}
