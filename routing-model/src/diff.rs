//! What changed between two configs, in the terms an operator thinks in.
//!
//! Used for the audit line of every applied change, for the data plane's history, and by
//! `data-plane validate --against`. A [`ConfigDiff`] is complete; a [`DiffSummary`] keeps counts
//! plus a bounded sample so a history of 100k-customer moves stays small.

use serde::Serialize;

use crate::delta::SpecChanges;
use crate::manifest::RoutingConfigSpec;

/// A customer that changed placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moved {
    /// The customer id.
    pub customer: String,
    /// Placement before the change.
    pub from: String,
    /// Placement after the change.
    pub to: String,
}

/// A placement whose endpoint changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointChanged {
    /// The placement name.
    pub placement: String,
    /// Endpoint before the change.
    pub from: String,
    /// Endpoint after the change.
    pub to: String,
}

/// A scalar setting that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// Value before the change.
    pub from: String,
    /// Value after the change.
    pub to: String,
}

/// Every difference between an old and a new spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    /// Customers that appear only in the new spec, with their placement.
    pub customers_added: Vec<(String, String)>,
    /// Customers that appear only in the old spec, with their old placement.
    pub customers_removed: Vec<(String, String)>,
    /// Customers present in both with a different placement.
    pub customers_moved: Vec<Moved>,
    /// Placements that appear only in the new spec.
    pub placements_added: Vec<String>,
    /// Placements that appear only in the old spec.
    pub placements_removed: Vec<String>,
    /// Placements present in both with a different endpoint.
    pub endpoints_changed: Vec<EndpointChanged>,
    /// Set when the default placement changed.
    pub default_placement: Option<Changed>,
    /// Set when the customer header changed.
    pub customer_header: Option<Changed>,
}

pub(crate) enum Side<'a> {
    Old(&'a String, &'a String),
    New(&'a String, &'a String),
    Both(&'a String, &'a String, &'a String),
}

/// Walks two sorted maps in step, yielding each key once.
pub(crate) fn merge<'a>(
    old: impl IntoIterator<Item = (&'a String, &'a String)>,
    new: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> impl Iterator<Item = Side<'a>> {
    let mut a = old.into_iter().peekable();
    let mut b = new.into_iter().peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((ka, _)), Some((kb, _))) => match ka.cmp(kb) {
            std::cmp::Ordering::Less => a.next().map(|(k, v)| Side::Old(k, v)),
            std::cmp::Ordering::Greater => b.next().map(|(k, v)| Side::New(k, v)),
            std::cmp::Ordering::Equal => {
                let (k, va) = a.next()?;
                let (_, vb) = b.next()?;
                Some(Side::Both(k, va, vb))
            }
        },
        (Some(_), None) => a.next().map(|(k, v)| Side::Old(k, v)),
        (None, Some(_)) => b.next().map(|(k, v)| Side::New(k, v)),
        (None, None) => None,
    })
}

impl ConfigDiff {
    /// Computes the difference from `old` to `new` in one pass over each map.
    pub fn between(old: &RoutingConfigSpec, new: &RoutingConfigSpec) -> Self {
        let mut diff = Self::default();
        for side in merge(&old.customer_to_placement, &new.customer_to_placement) {
            match side {
                Side::Old(c, p) => diff.customers_removed.push((c.clone(), p.clone())),
                Side::New(c, p) => diff.customers_added.push((c.clone(), p.clone())),
                Side::Both(c, from, to) if from != to => diff.customers_moved.push(Moved {
                    customer: c.clone(),
                    from: from.clone(),
                    to: to.clone(),
                }),
                Side::Both(..) => {}
            }
        }
        for side in merge(&old.placement_to_endpoint, &new.placement_to_endpoint) {
            match side {
                Side::Old(p, _) => diff.placements_removed.push(p.clone()),
                Side::New(p, _) => diff.placements_added.push(p.clone()),
                Side::Both(p, from, to) if from != to => diff.endpoints_changed.push(EndpointChanged {
                    placement: p.clone(),
                    from: from.clone(),
                    to: to.clone(),
                }),
                Side::Both(..) => {}
            }
        }
        let changed = |a: &String, b: &String| {
            (a != b).then(|| Changed {
                from: a.clone(),
                to: b.clone(),
            })
        };
        diff.default_placement = changed(&old.default_placement, &new.default_placement);
        diff.customer_header = changed(&old.customer_header, &new.customer_header);
        diff
    }

    /// The difference from `old` to `old` with `changes` applied: what [`Self::between`] would
    /// find, in the time of the change rather than of the table.
    pub fn of_changes(old: &RoutingConfigSpec, changes: &SpecChanges) -> Self {
        let mut diff = Self::default();
        for (c, to) in &changes.customer_to_placement {
            match (old.customer_to_placement.get(c), to) {
                (None, Some(p)) => diff.customers_added.push((c.clone(), p.clone())),
                (Some(p), None) => diff.customers_removed.push((c.clone(), p.clone())),
                (Some(from), Some(to)) if from != to => diff.customers_moved.push(Moved {
                    customer: c.clone(),
                    from: from.clone(),
                    to: to.clone(),
                }),
                _ => {}
            }
        }
        for (p, to) in &changes.placement_to_endpoint {
            match (old.placement_to_endpoint.get(p), to) {
                (None, Some(_)) => diff.placements_added.push(p.clone()),
                (Some(_), None) => diff.placements_removed.push(p.clone()),
                (Some(from), Some(to)) if from != to => diff.endpoints_changed.push(EndpointChanged {
                    placement: p.clone(),
                    from: from.clone(),
                    to: to.clone(),
                }),
                _ => {}
            }
        }
        let changed = |a: &String, b: &Option<String>| {
            b.as_ref().filter(|b| *b != a).map(|b| Changed {
                from: a.clone(),
                to: b.clone(),
            })
        };
        diff.default_placement = changed(&old.default_placement, &changes.default_placement);
        diff.customer_header = changed(&old.customer_header, &changes.customer_header);
        diff
    }

    /// True when the two specs route every request identically.
    pub fn is_empty(&self) -> bool {
        self.customers_added.is_empty()
            && self.customers_removed.is_empty()
            && self.customers_moved.is_empty()
            && self.placements_added.is_empty()
            && self.placements_removed.is_empty()
            && self.endpoints_changed.is_empty()
            && self.default_placement.is_none()
            && self.customer_header.is_none()
    }

    /// Counts plus at most `sample` entries of each list.
    pub fn summarize(&self, sample: usize) -> DiffSummary {
        fn take<T: Clone>(v: &[T], n: usize) -> Sampled<T> {
            Sampled {
                count: v.len(),
                sample: v.iter().take(n).cloned().collect(),
            }
        }
        DiffSummary {
            customers_added: take(&self.customers_added, sample),
            customers_removed: take(&self.customers_removed, sample),
            customers_moved: take(&self.customers_moved, sample),
            placements_added: take(&self.placements_added, sample),
            placements_removed: take(&self.placements_removed, sample),
            endpoints_changed: take(&self.endpoints_changed, sample),
            default_placement: self.default_placement.clone(),
            customer_header: self.customer_header.clone(),
        }
    }
}

/// A count and the first few items of one kind of change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sampled<T> {
    /// How many items there are in all.
    pub count: usize,
    /// The first few of them.
    pub sample: Vec<T>,
}

/// A bounded summary of a [`ConfigDiff`], cheap to keep in history and to log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffSummary {
    /// Customers added, as `(customer, placement)`.
    pub customers_added: Sampled<(String, String)>,
    /// Customers removed, as `(customer, old placement)`.
    pub customers_removed: Sampled<(String, String)>,
    /// Customers moved between placements.
    pub customers_moved: Sampled<Moved>,
    /// Placements added.
    pub placements_added: Sampled<String>,
    /// Placements removed.
    pub placements_removed: Sampled<String>,
    /// Placements whose endpoint changed.
    pub endpoints_changed: Sampled<EndpointChanged>,
    /// Set when the default placement changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_placement: Option<Changed>,
    /// Set when the customer header changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_header: Option<Changed>,
}

impl std::fmt::Display for DiffSummary {
    /// One line such as `customers +1 -0 moved 1 (acme t1→t2); placements +0 -0 endpoints 0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "customers +{} -{} moved {}",
            self.customers_added.count, self.customers_removed.count, self.customers_moved.count
        )?;
        if !self.customers_moved.sample.is_empty() {
            let moves: Vec<String> = self
                .customers_moved
                .sample
                .iter()
                .map(|m| format!("{} {}→{}", m.customer, m.from, m.to))
                .collect();
            write!(f, " ({})", moves.join(", "))?;
        }
        write!(
            f,
            "; placements +{} -{}; endpoints changed {}",
            self.placements_added.count, self.placements_removed.count, self.endpoints_changed.count
        )?;
        if let Some(c) = &self.default_placement {
            write!(f, "; default {}→{}", c.from, c.to)?;
        }
        if let Some(c) = &self.customer_header {
            write!(f, "; header {}→{}", c.from, c.to)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_diff_of_changes_is_the_diff_of_the_tables_they_make() {
        let old = spec(
            &[("acme", "t1"), ("globex", "t2"), ("initech", "t1")],
            &[("t1", "http://a"), ("t2", "http://b"), ("t3", "http://c")],
            "t3",
        );
        let cases = [
            r#"{"customerToPlacement":{"acme":"t2","globex":"t2","initech":null,"new":"t3"}}"#,
            r#"{"placementToEndpoint":{"t1":"http://z","t2":"http://b","t3":null,"t4":"http://d"}}"#,
            r#"{"defaultPlacement":"t1","customerHeader":"x-tenant"}"#,
            r#"{"defaultPlacement":"t3","customerHeader":"x-customer-id"}"#,
        ];
        for case in cases {
            let changes: SpecChanges = serde_json::from_str(case).unwrap();
            let mut new = old.clone();
            changes.apply(&mut new, None).unwrap();
            assert_eq!(
                ConfigDiff::of_changes(&old, &changes),
                ConfigDiff::between(&old, &new),
                "{case}"
            );
        }
    }

    fn spec(customers: &[(&str, &str)], endpoints: &[(&str, &str)], default: &str) -> RoutingConfigSpec {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        RoutingConfigSpec {
            customer_header: "x-customer-id".to_owned(),
            default_placement: default.to_owned(),
            customer_to_placement: map(customers).into_iter().collect(),
            placement_to_endpoint: map(endpoints),
            rollout: None,
        }
    }

    #[test]
    fn reports_each_kind_of_change() {
        let old = spec(
            &[("a", "t1"), ("b", "t1"), ("c", "t2")],
            &[("t1", "http://1"), ("t2", "http://2")],
            "t1",
        );
        let new = spec(
            &[("b", "t2"), ("c", "t2"), ("d", "t3")],
            &[("t2", "http://2b"), ("t3", "http://3")],
            "t2",
        );
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(d.customers_added, [("d".to_owned(), "t3".to_owned())]);
        assert_eq!(d.customers_removed, [("a".to_owned(), "t1".to_owned())]);
        assert_eq!(
            d.customers_moved,
            [Moved {
                customer: "b".into(),
                from: "t1".into(),
                to: "t2".into()
            }]
        );
        assert_eq!(d.placements_added, ["t3"]);
        assert_eq!(d.placements_removed, ["t1"]);
        assert_eq!(d.endpoints_changed.len(), 1);
        assert_eq!(
            d.default_placement,
            Some(Changed {
                from: "t1".into(),
                to: "t2".into()
            })
        );
        assert!(!d.is_empty());
        assert!(ConfigDiff::between(&old, &old).is_empty());
        let s = d.summarize(0);
        assert_eq!(s.customers_moved.count, 1);
        assert!(s.customers_moved.sample.is_empty());
    }
}
