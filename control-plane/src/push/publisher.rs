//! Each served snapshot, encoded once and shared by every subscriber of its object.
//!
//! Every object with subscribers has a `watch` channel holding what they should have now. A
//! watch channel keeps only the newest value, which is exactly latest-wins: a data plane that
//! falls behind skips intermediate versions instead of queueing them. While a staged rollout
//! judges a new version, the channel holds both versions and the share of data planes on the
//! new one ([`Publication::Staged`]); each session picks its own by its cohort.
//!
//! Each version is encoded in the forms a session may send, each once per version: the deltas
//! from the versions published before it (for data planes with `delta` that have one), and,
//! only once a session needs them, the full snapshot (a data plane that connects, or has another
//! base) and the full snapshot with its hash in the JSON scheme data planes without `delta`
//! check. A one-customer change of a large table that every data plane follows is therefore
//! never encoded whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use axum::extract::ws::Utf8Bytes;
use routing_model::delta::SpecChanges;
use routing_model::protocol::{DeltaMessage, MissingReason, ServerMessage, SnapshotMessageRef, SnapshotRef};
use routing_model::{ContentHash, ValidatedConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::snapshot::{ObjectKey, Snapshot, SnapshotStore};

/// A full snapshot message, serialized once.
#[derive(Debug)]
pub struct Full {
    /// Which snapshot, with its hash in the scheme this form carries.
    pub reference: SnapshotRef,
    /// The JSON text of the [`routing_model::protocol::ServerMessage::Snapshot`].
    pub text: Utf8Bytes,
    /// The same text, gzip-compressed, for data planes that negotiated `gzip`.
    pub gzip: bytes::Bytes,
}

impl Full {
    fn encode(key: &str, reference: SnapshotRef, config: &ValidatedConfig) -> Self {
        // Borrowed, not cloned: a large table is serialized straight from the served snapshot.
        let text = SnapshotMessageRef {
            routing_config: key,
            snapshot: &reference,
            spec: config.spec(),
        }
        .to_json();
        // Compressed once here rather than per session: every gzip subscriber shares it.
        let gzip = routing_model::compression::gzip(text.as_bytes());
        Self {
            reference,
            text: Utf8Bytes::from(text),
            gzip: gzip.into(),
        }
    }
}

/// A delta message, serialized once.
#[derive(Debug)]
pub struct Delta {
    /// The snapshot it applies to.
    pub base: SnapshotRef,
    /// The JSON text of the [`routing_model::protocol::ServerMessage::Delta`].
    pub text: Utf8Bytes,
}

/// One version in every form a session may send.
pub struct Encoded {
    /// Which snapshot.
    pub reference: SnapshotRef,
    /// When the control plane accepted it (for the convergence histogram).
    pub accepted_at: SystemTime,
    /// The changes from each version published before it (the served one and, during a
    /// rollout, the one being rolled out), where they are smaller than the full snapshot.
    pub deltas: Vec<Delta>,
    /// The table, for the full forms and the delta of the next version.
    config: Arc<ValidatedConfig>,
    key: String,
    full: OnceLock<Full>,
    json: OnceLock<Full>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("reference", &self.reference)
            .field(
                "deltas",
                &self.deltas.iter().map(|d| d.text.len()).collect::<Vec<_>>(),
            )
            .field("full", &self.full.get().map(|f| f.text.len()))
            .finish_non_exhaustive()
    }
}

impl Encoded {
    /// The delta from `base`, if one was encoded.
    pub fn delta_from(&self, base: &SnapshotRef) -> Option<&Delta> {
        self.deltas.iter().find(|d| d.base == *base)
    }

    /// Whether [`Self::full`] is encoded already.
    pub fn has_full(&self) -> bool {
        self.full.get().is_some()
    }

    /// Whether [`Self::json`] is encoded already.
    pub fn has_json(&self) -> bool {
        self.json.get().is_some()
    }

    /// The full snapshot (encoded once per version, by the first session that needs it).
    pub fn full(&self) -> &Full {
        self.full
            .get_or_init(|| self.encode(std::time::Instant::now(), self.reference.clone()))
    }

    /// The full snapshot with its hash in the JSON scheme, for data planes without `delta`
    /// (computed once per version, by the first such session).
    pub fn json(&self) -> &Full {
        self.json.get_or_init(|| {
            // The JSON-scheme hash is part of what these sessions cost: measured with the encode.
            let started = std::time::Instant::now();
            let reference = SnapshotRef {
                hash: ContentHash::json_of_spec(self.config.spec()),
                ..self.reference.clone()
            };
            self.encode(started, reference)
        })
    }

    /// Encodes the whole table under `reference`, measured (since `started`) like every
    /// whole-table encoding.
    fn encode(&self, started: std::time::Instant, reference: SnapshotRef) -> Full {
        let full = Full::encode(&self.key, reference, &self.config);
        self.metrics
            .snapshot_encode
            .observe(started.elapsed().as_secs_f64());
        self.metrics.snapshot_bytes.set(full.text.len() as i64);
        self.metrics.snapshot_compressed_bytes.set(full.gzip.len() as i64);
        full
    }
}

/// What one data plane should have.
#[derive(Debug, Clone)]
pub enum Published {
    /// A snapshot.
    Snapshot(Arc<Encoded>),
    /// No snapshot: the object is gone or has no valid version.
    Missing(MissingReason),
}

impl Published {
    /// Whether both name the same snapshot (or the same absence).
    pub fn same_as(&self, other: &Published) -> bool {
        match (self, other) {
            (Published::Snapshot(a), Published::Snapshot(b)) => a.reference == b.reference,
            (Published::Missing(a), Published::Missing(b)) => a == b,
            _ => false,
        }
    }
}

/// What the subscribers of one object should have.
#[derive(Debug, Clone)]
pub enum Publication {
    /// The same for every data plane.
    Uniform(Published),
    /// A staged rollout: `target` for the data planes whose cohort is within `percent`,
    /// `stable` for the others.
    Staged {
        /// The served version.
        stable: Arc<Encoded>,
        /// The version being rolled out.
        target: Arc<Encoded>,
        /// The share of data planes on `target`.
        percent: i32,
    },
}

impl Publication {
    /// What the data plane in cohort `bucket` should have.
    pub fn for_cohort(&self, bucket: u32) -> Published {
        match self {
            Publication::Uniform(published) => published.clone(),
            Publication::Staged {
                stable,
                target,
                percent,
            } => Published::Snapshot(if routing_model::rollout::in_share(bucket, *percent) {
                target.clone()
            } else {
                stable.clone()
            }),
        }
    }

    /// Every version it holds, to reuse and to encode deltas from.
    fn encoded(&self) -> Vec<&Arc<Encoded>> {
        match self {
            Publication::Uniform(Published::Snapshot(e)) => vec![e],
            Publication::Uniform(Published::Missing(_)) => Vec::new(),
            Publication::Staged { stable, target, .. } => vec![stable, target],
        }
    }

    fn same_as(&self, other: &Publication) -> bool {
        match (self, other) {
            (Publication::Uniform(a), Publication::Uniform(b)) => a.same_as(b),
            (
                Publication::Staged {
                    stable: a,
                    target: b,
                    percent: p,
                },
                Publication::Staged {
                    stable: c,
                    target: d,
                    percent: q,
                },
            ) => a.reference == c.reference && b.reference == d.reference && p == q,
            _ => false,
        }
    }
}

/// The per-object channels.
pub struct Publisher {
    store: Arc<SnapshotStore>,
    channels: Mutex<HashMap<ObjectKey, watch::Sender<Publication>>>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// A publisher over `store`.
    pub fn new(store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            store,
            channels: Mutex::default(),
            metrics,
        })
    }

    /// Subscribes to one object; the receiver starts with what the object has now.
    pub fn subscribe(&self, key: &ObjectKey) -> watch::Receiver<Publication> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = channels.get(key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(self.current(key, None));
        channels.insert(key.clone(), tx);
        rx
    }

    /// Follows the store until shutdown, publishing every change.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.store.subscribe();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            self.refresh();
        }
    }

    fn refresh(&self) {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        channels.retain(|_, tx| tx.receiver_count() > 0);
        for (key, tx) in channels.iter() {
            let previous = tx.borrow().clone();
            let next = self.current(key, Some(&previous));
            if !next.same_as(&previous) {
                tx.send_replace(next);
            }
        }
    }

    /// What `key`'s subscribers should have, reusing what `previous` encoded when still current.
    fn current(&self, key: &ObjectKey, previous: Option<&Publication>) -> Publication {
        let state = self.store.get(key).unwrap_or_default();
        let Some(served) = state.served else {
            let reason = match previous {
                Some(Publication::Uniform(Published::Missing(reason))) => *reason,
                Some(_) => MissingReason::Deleted,
                None => MissingReason::NotFound,
            };
            return Publication::Uniform(Published::Missing(reason));
        };
        let mut bases: Vec<Arc<Encoded>> = previous
            .map(|p| p.encoded().into_iter().cloned().collect())
            .unwrap_or_default();
        let stable = self.encoded(key, &served, &bases);
        match state.canary {
            Some(canary) if canary.percent > 0 => {
                bases.push(stable.clone());
                let target = self.encoded(key, &canary.target, &bases);
                Publication::Staged {
                    stable,
                    target,
                    percent: canary.percent,
                }
            }
            _ => Publication::Uniform(Published::Snapshot(stable)),
        }
    }

    /// `snapshot` encoded: reused from `bases` when one of them is it, else with a delta from
    /// each of them it follows.
    fn encoded(&self, key: &ObjectKey, snapshot: &Snapshot, bases: &[Arc<Encoded>]) -> Arc<Encoded> {
        let reference = snapshot.reference();
        if let Some(same) = bases.iter().find(|e| e.reference == reference) {
            return same.clone();
        }
        let name = key.to_string();
        let mut deltas: Vec<Delta> = Vec::new();
        for before in bases {
            if deltas.iter().any(|d| d.base == before.reference) {
                continue;
            }
            let started = std::time::Instant::now();
            let delta = delta(&name, before, &reference, snapshot, snapshot.message_bytes);
            self.metrics.delta_encode.observe(started.elapsed().as_secs_f64());
            if let Some(delta) = delta {
                self.metrics.delta_bytes.set(delta.text.len() as i64);
                deltas.push(delta);
            }
        }
        Arc::new(Encoded {
            reference,
            accepted_at: snapshot.accepted_at,
            deltas,
            config: snapshot.config.clone(),
            key: name,
            full: OnceLock::new(),
            json: OnceLock::new(),
            metrics: self.metrics.clone(),
        })
    }
}

/// The delta from `before` to `reference`, when both are of one lineage, it goes forward, and it
/// is smaller than the full snapshot (`full_bytes`).
fn delta(
    key: &str,
    before: &Encoded,
    reference: &SnapshotRef,
    served: &Snapshot,
    full_bytes: usize,
) -> Option<Delta> {
    if before.reference.lineage != reference.lineage || before.reference.version >= reference.version {
        return None;
    }
    // The changes the store found when it accepted the version, when they are from the version
    // published before (a version published in between was skipped otherwise).
    let changes = match &served.changes {
        Some(c) if c.base == before.reference => c.changes.clone(),
        _ => SpecChanges::between(before.config.spec(), served.config.spec()),
    };
    let message = ServerMessage::Delta(DeltaMessage {
        routing_config: key.to_owned(),
        base: before.reference.clone(),
        snapshot: reference.clone(),
        changes,
    });
    // Serializing strings and maps of strings cannot fail.
    let text = serde_json::to_string(&message).expect("delta serializes");
    (text.len() < full_bytes).then(|| Delta {
        base: before.reference.clone(),
        text: Utf8Bytes::from(text),
    })
}

#[cfg(test)]
mod tests {
    use routing_model::ParseLimits;
    use routing_model::rollout::{COHORT_BUCKETS, in_share};

    use super::*;
    use crate::snapshot::Delivery;

    /// A table whose full snapshot is larger than a one-field delta.
    fn config(default: &str) -> ValidatedConfig {
        let customers: Vec<String> = (0..50).map(|i| format!("customer-{i}: a")).collect();
        let doc = format!(
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec: {{defaultPlacement: {default}, customerToPlacement: {{{}}}, placementToEndpoint: {{a: 'http://a', b: 'http://b'}}}}\n",
            customers.join(", ")
        );
        routing_model::load(doc.as_bytes(), ParseLimits::default()).unwrap()
    }

    fn version(p: &Published) -> i64 {
        match p {
            Published::Snapshot(e) => e.reference.version,
            Published::Missing(_) => 0,
        }
    }

    #[test]
    fn during_a_rollout_each_cohort_gets_its_version_and_a_revert_has_a_delta_from_both() {
        let store = Arc::new(SnapshotStore::default());
        let key = ObjectKey::parse("ns/r");
        let publisher = Publisher::new(store.clone(), Metrics::new());
        let rx = publisher.subscribe(&key);
        store.offer(&key, "u1", 1, Ok(config("a")));
        publisher.refresh();
        store.offer_delivered(
            &key,
            "u1",
            2,
            Ok(config("b")),
            None,
            Delivery::Staged { percent: 10 },
        );
        publisher.refresh();
        let staged = rx.borrow().clone();
        let inside = (0..COHORT_BUCKETS).find(|b| in_share(*b, 10)).unwrap();
        let outside = (0..COHORT_BUCKETS).find(|b| !in_share(*b, 10)).unwrap();
        assert_eq!(version(&staged.for_cohort(inside)), 2);
        assert_eq!(version(&staged.for_cohort(outside)), 1);
        let Published::Snapshot(target) = staged.for_cohort(inside) else {
            panic!("a snapshot")
        };
        let Published::Snapshot(stable) = staged.for_cohort(outside) else {
            panic!("a snapshot")
        };
        assert!(
            target.delta_from(&stable.reference).is_some(),
            "the canaries get a delta"
        );

        // Halted: the previous table as version 3, a delta for either cohort.
        store.offer(&key, "u1", 3, Ok(config("a")));
        publisher.refresh();
        let reverted = rx.borrow().clone();
        let Published::Snapshot(revert) = reverted.for_cohort(outside) else {
            panic!("a snapshot")
        };
        assert_eq!(revert.reference.version, 3);
        assert!(revert.delta_from(&stable.reference).is_some());
        assert!(revert.delta_from(&target.reference).is_some());
        assert!(!revert.has_full(), "nobody needed the whole table");
    }

    #[test]
    fn a_promoted_version_keeps_its_encoding() {
        let store = Arc::new(SnapshotStore::default());
        let key = ObjectKey::parse("ns/r");
        let publisher = Publisher::new(store.clone(), Metrics::new());
        let rx = publisher.subscribe(&key);
        store.offer(&key, "u1", 1, Ok(config("a")));
        store.offer_delivered(
            &key,
            "u1",
            2,
            Ok(config("b")),
            None,
            Delivery::Staged { percent: 50 },
        );
        publisher.refresh();
        let Publication::Staged { target, .. } = rx.borrow().clone() else {
            panic!("staged")
        };
        store.promote(&key, &target.reference);
        publisher.refresh();
        let Publication::Uniform(Published::Snapshot(promoted)) = rx.borrow().clone() else {
            panic!("uniform")
        };
        assert!(Arc::ptr_eq(&promoted, &target), "encoded once");
    }
}
