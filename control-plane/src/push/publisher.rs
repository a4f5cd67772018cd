//! Each served snapshot, encoded once and shared by every subscriber of its object.
//!
//! Every object with subscribers has a `watch` channel holding what they should have now. A
//! watch channel keeps only the newest value, which is exactly latest-wins: a data plane that
//! falls behind skips intermediate versions instead of queueing them.
//!
//! Each version is encoded in the forms a session may send, each once per version: the delta
//! from the version published before it (for data planes with `delta` that have that one), and,
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
    /// The changes from the version published before, when they are smaller than the full
    /// snapshot.
    pub delta: Option<Delta>,
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
            .field("delta", &self.delta.as_ref().map(|d| d.text.len()))
            .field("full", &self.full.get().map(|f| f.text.len()))
            .finish_non_exhaustive()
    }
}

impl Encoded {
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

/// What subscribers of one object should have.
#[derive(Debug, Clone)]
pub enum Published {
    /// The served snapshot.
    Snapshot(Arc<Encoded>),
    /// No snapshot: the object is gone or has no valid version.
    Missing(MissingReason),
}

impl Published {
    fn same_as(&self, other: &Published) -> bool {
        match (self, other) {
            (Published::Snapshot(a), Published::Snapshot(b)) => a.reference == b.reference,
            (Published::Missing(a), Published::Missing(b)) => a == b,
            _ => false,
        }
    }
}

/// The per-object channels.
pub struct Publisher {
    store: Arc<SnapshotStore>,
    channels: Mutex<HashMap<ObjectKey, watch::Sender<Published>>>,
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
    pub fn subscribe(&self, key: &ObjectKey) -> watch::Receiver<Published> {
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

    /// What `key`'s subscribers should have, reusing `previous` when it is still current.
    fn current(&self, key: &ObjectKey, previous: Option<&Published>) -> Published {
        let state = self.store.get(key);
        let Some(served) = state.and_then(|s| s.served) else {
            let reason = match previous {
                Some(Published::Snapshot(_)) => MissingReason::Deleted,
                Some(Published::Missing(reason)) => *reason,
                None => MissingReason::NotFound,
            };
            return Published::Missing(reason);
        };
        let reference = served.reference();
        if let Some(Published::Snapshot(encoded)) = previous
            && encoded.reference == reference
        {
            return Published::Snapshot(encoded.clone());
        }
        let name = key.to_string();
        let delta = match previous {
            Some(Published::Snapshot(before)) => {
                let started = std::time::Instant::now();
                let delta = delta(&name, before, &reference, &served, served.message_bytes);
                self.metrics.delta_encode.observe(started.elapsed().as_secs_f64());
                delta
            }
            _ => None,
        };
        if let Some(delta) = &delta {
            self.metrics.delta_bytes.set(delta.text.len() as i64);
        }
        Published::Snapshot(Arc::new(Encoded {
            reference,
            accepted_at: served.accepted_at,
            delta,
            config: served.config.clone(),
            key: name,
            full: OnceLock::new(),
            json: OnceLock::new(),
            metrics: self.metrics.clone(),
        }))
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
