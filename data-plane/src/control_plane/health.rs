//! Health reports: what this data plane served since its last report, per placement, on the
//! snapshot it serves. The control plane judges the steps of a staged rollout by them.
//!
//! Reports carry differences of the request counters, so a report lost with a session loses
//! only its own second. When the active snapshot changes, the counts start again from the
//! change: requests served by the previous table are never reported as the new one's.

use std::collections::BTreeMap;
use std::time::Duration;

use routing_model::protocol::{ClientMessage, MAX_HEALTH_PLACEMENTS, PlacementHealth, SnapshotRef};

/// How often a report is sent (when there is something to report).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The counters at the last report, and of which snapshot.
#[derive(Debug, Default)]
pub struct Reports {
    snapshot: Option<SnapshotRef>,
    last: BTreeMap<String, PlacementHealth>,
}

impl Reports {
    /// The report for what `totals` (the counters now) add to the last ones while `snapshot`
    /// is active; `None` when nothing was served, or the snapshot just changed.
    pub fn next(
        &mut self,
        snapshot: Option<SnapshotRef>,
        totals: BTreeMap<String, PlacementHealth>,
    ) -> Option<ClientMessage> {
        let last = std::mem::replace(&mut self.last, totals);
        if snapshot != self.snapshot {
            self.snapshot = snapshot;
            return None;
        }
        let snapshot = self.snapshot.clone()?;
        let mut served: Vec<(String, PlacementHealth)> = self
            .last
            .iter()
            .filter_map(|(name, now)| {
                let before = last.get(name).copied().unwrap_or_default();
                let requests = now.requests.saturating_sub(before.requests);
                let errors = now.errors.saturating_sub(before.errors).min(requests);
                (requests > 0).then(|| (name.clone(), PlacementHealth { requests, errors }))
            })
            .collect();
        if served.is_empty() {
            return None;
        }
        // The busiest placements, when there are more than one report may name.
        served.sort_by_key(|(_, h)| std::cmp::Reverse(h.requests));
        served.truncate(MAX_HEALTH_PLACEMENTS);
        Some(ClientMessage::Health {
            snapshot,
            placements: served.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(version: i64) -> Option<SnapshotRef> {
        Some(SnapshotRef {
            lineage: "l".into(),
            version,
            hash: "table-sha256:0000000000000000000000000000000000000000000000000000000000000001"
                .parse()
                .unwrap(),
        })
    }

    fn totals(pairs: &[(&str, u64, u64)]) -> BTreeMap<String, PlacementHealth> {
        pairs
            .iter()
            .map(|(n, requests, errors)| {
                (
                    (*n).to_owned(),
                    PlacementHealth {
                        requests: *requests,
                        errors: *errors,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn reports_what_was_served_since_the_last_one_and_restart_on_a_new_snapshot() {
        let mut reports = Reports::default();
        assert!(
            reports.next(r(1), totals(&[("a", 10, 1)])).is_none(),
            "a baseline first"
        );
        let Some(ClientMessage::Health { snapshot, placements }) =
            reports.next(r(1), totals(&[("a", 25, 4), ("b", 3, 0)]))
        else {
            panic!("a report");
        };
        assert_eq!(snapshot, r(1).unwrap());
        assert_eq!(placements, totals(&[("a", 15, 3), ("b", 3, 0)]));
        assert!(
            reports.next(r(1), totals(&[("a", 25, 4), ("b", 3, 0)])).is_none(),
            "nothing served"
        );
        // A new table: what the old one served in between is not the new one's.
        assert!(reports.next(r(2), totals(&[("a", 40, 9)])).is_none());
        let Some(ClientMessage::Health { snapshot, placements }) =
            reports.next(r(2), totals(&[("a", 41, 9)]))
        else {
            panic!("a report");
        };
        assert_eq!((snapshot, placements), (r(2).unwrap(), totals(&[("a", 1, 0)])));
    }

    #[test]
    fn a_report_names_the_busiest_placements_only() {
        let mut reports = Reports::default();
        reports.next(r(1), BTreeMap::new());
        let many: Vec<(String, u64, u64)> = (0..MAX_HEALTH_PLACEMENTS as u64 + 20)
            .map(|i| (format!("p{i}"), i + 1, 0))
            .collect();
        let many: Vec<(&str, u64, u64)> = many.iter().map(|(n, a, b)| (n.as_str(), *a, *b)).collect();
        let Some(ClientMessage::Health { placements, .. }) = reports.next(r(1), totals(&many)) else {
            panic!("a report");
        };
        assert_eq!(placements.len(), MAX_HEALTH_PLACEMENTS);
        assert!(!placements.contains_key("p0"), "the quietest is left out");
    }
}
