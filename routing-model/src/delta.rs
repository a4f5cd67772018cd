//! A change between two versions of a table, as data planes receive it instead of the whole
//! table (the `delta` capability of `PROTOCOL.md`).
//!
//! [`SpecChanges`] is a JSON merge patch (RFC 7396) of the spec: the scalar fields that changed,
//! and, in the two maps, each key that changed with its new value or `null` when it was removed.
//! Its size follows the change, not the table.

use std::collections::BTreeMap;

use imbl::ordmap::DiffItem;
use serde::{Deserialize, Serialize};

use crate::diff::{Side, merge};
use crate::digest::TableDigest;
use crate::manifest::{CustomerMap, RoutingConfigSpec};

/// What changed from one spec to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecChanges {
    /// The new customer header, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_header: Option<String>,
    /// The new default placement, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_placement: Option<String>,
    /// Customers added or moved (with their placement) and removed (`null`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub customer_to_placement: BTreeMap<String, Option<String>>,
    /// Placements added or whose endpoint changed, and removed (`null`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub placement_to_endpoint: BTreeMap<String, Option<String>>,
}

/// Why a change does not apply to a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A removal of a customer the table does not have: the delta was made for another base.
    #[error("the delta removes customer {0:?}, which the base table does not have")]
    MissingCustomer(String),
    /// A removal of a placement the table does not have.
    #[error("the delta removes placement {0:?}, which the base table does not have")]
    MissingPlacement(String),
}

fn changed_map<'a>(
    old: impl IntoIterator<Item = (&'a String, &'a String)>,
    new: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<String, Option<String>> {
    merge(old, new)
        .filter_map(|side| match side {
            Side::Old(k, _) => Some((k.clone(), None)),
            Side::New(k, v) => Some((k.clone(), Some(v.clone()))),
            Side::Both(k, a, b) => (a != b).then(|| (k.clone(), Some(b.clone()))),
        })
        .collect()
}

/// The customers that changed from `old` to `new`, each with its placement in `new` (`None`:
/// removed), in order. The maps are persistent: a version made from another by a few changes
/// shares all but those paths of nodes with it, and the diff skips what they share, so its cost
/// follows the change (a pass over both tables otherwise).
pub fn changed_customers<'a>(
    old: &'a CustomerMap,
    new: &'a CustomerMap,
) -> impl Iterator<Item = (&'a String, Option<&'a String>)> + 'a {
    old.diff(new).map(|item| match item {
        DiffItem::Add(k, v) | DiffItem::Update { new: (k, v), .. } => (k, Some(v)),
        DiffItem::Remove(k, _) => (k, None),
    })
}

impl SpecChanges {
    /// The changes that turn `old` into `new`.
    pub fn between(old: &RoutingConfigSpec, new: &RoutingConfigSpec) -> Self {
        let changed = |a: &String, b: &String| (a != b).then(|| b.clone());
        Self {
            customer_header: changed(&old.customer_header, &new.customer_header),
            default_placement: changed(&old.default_placement, &new.default_placement),
            customer_to_placement: changed_customers(&old.customer_to_placement, &new.customer_to_placement)
                .map(|(k, v)| (k.clone(), v.cloned()))
                .collect(),
            placement_to_endpoint: changed_map(&old.placement_to_endpoint, &new.placement_to_endpoint),
        }
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether anything but customers changed (the placements a customer may name, or the
    /// default), so that checking only the changed customers would not be enough.
    pub fn touches_placements(&self) -> bool {
        self.customer_header.is_some()
            || self.default_placement.is_some()
            || !self.placement_to_endpoint.is_empty()
    }

    /// Applies the changes to `spec` and, when given, to its digest. Nothing is changed when an
    /// error is returned: a removal of a key the table does not have means the delta was made for
    /// another table.
    pub fn apply(
        &self,
        spec: &mut RoutingConfigSpec,
        mut digest: Option<&mut TableDigest>,
    ) -> Result<(), DeltaError> {
        for (customer, placement) in &self.customer_to_placement {
            if placement.is_none() && !spec.customer_to_placement.contains_key(customer) {
                return Err(DeltaError::MissingCustomer(customer.clone()));
            }
        }
        for (placement, endpoint) in &self.placement_to_endpoint {
            if endpoint.is_none() && !spec.placement_to_endpoint.contains_key(placement) {
                return Err(DeltaError::MissingPlacement(placement.clone()));
            }
        }
        if let Some(header) = &self.customer_header {
            spec.customer_header.clone_from(header);
        }
        if let Some(default) = &self.default_placement {
            spec.default_placement.clone_from(default);
        }
        for (customer, placement) in &self.customer_to_placement {
            match placement {
                Some(p) => spec.customer_to_placement.insert(customer.clone(), p.clone()),
                None => spec.customer_to_placement.remove(customer),
            };
            if let Some(digest) = digest.as_deref_mut() {
                digest.set(customer, placement.as_deref());
            }
        }
        for (placement, endpoint) in &self.placement_to_endpoint {
            match endpoint {
                Some(e) => spec.placement_to_endpoint.insert(placement.clone(), e.clone()),
                None => spec.placement_to_endpoint.remove(placement),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::ContentHash;

    fn spec(json: &str) -> RoutingConfigSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_delta_turns_the_base_into_the_target_and_its_hash_follows() {
        let old = spec(
            r#"{"defaultPlacement":"a","customerToPlacement":{"x":"a","y":"b","z":"a"},"placementToEndpoint":{"a":"http://a","b":"http://b"}}"#,
        );
        let new = spec(
            r#"{"defaultPlacement":"b","customerToPlacement":{"x":"b","z":"a","w":"c"},"placementToEndpoint":{"b":"http://b2","c":"http://c"}}"#,
        );
        let changes = SpecChanges::between(&old, &new);
        let wire = serde_json::to_string(&changes).unwrap();
        assert_eq!(
            wire,
            r#"{"defaultPlacement":"b","customerToPlacement":{"w":"c","x":"b","y":null},"placementToEndpoint":{"a":null,"b":"http://b2","c":"http://c"}}"#
        );
        let mut applied = old.clone();
        let mut digest = TableDigest::of_spec(&old);
        serde_json::from_str::<SpecChanges>(&wire)
            .unwrap()
            .apply(&mut applied, Some(&mut digest))
            .unwrap();
        assert_eq!(applied, new);
        assert_eq!(digest.root(&applied), ContentHash::of_spec(&new));
        assert!(SpecChanges::between(&new, &new).is_empty());
    }

    #[test]
    fn a_delta_for_another_base_changes_nothing() {
        let base = spec(
            r#"{"defaultPlacement":"a","customerToPlacement":{"x":"a"},"placementToEndpoint":{"a":"http://a"}}"#,
        );
        let changes: SpecChanges =
            serde_json::from_str(r#"{"customerToPlacement":{"x":"a","gone":null}}"#).unwrap();
        let mut applied = base.clone();
        assert_eq!(
            changes.apply(&mut applied, None),
            Err(DeltaError::MissingCustomer("gone".into()))
        );
        assert_eq!(applied, base);
    }
}
