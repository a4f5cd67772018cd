//! What every data plane last reported, like `istioctl proxy-status`.
//!
//! A record is keyed by the data plane's id. A reconnect opens a new session under the same id;
//! the end of an older session never marks the newer one disconnected.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use routing_model::protocol::SnapshotRef;
use serde::Serialize;
use tokio::sync::watch;

/// How long a disconnected data plane stays listed.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// One data plane.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Its id (pod name).
    pub id: String,
    /// The RoutingConfig it serves.
    pub routing_config: String,
    /// Who it authenticated as.
    pub user: String,
    /// Its address.
    pub remote: String,
    /// The session currently (or last) open.
    #[serde(skip)]
    pub session: u64,
    /// A session is open.
    pub connected: bool,
    /// Unix seconds the current (or last) session opened.
    pub connected_since: f64,
    /// Unix seconds of the last message.
    pub last_seen: f64,
    /// The last snapshot it applied.
    pub acked: Option<SnapshotRef>,
    /// Unix seconds the control plane received the ACK of `acked` (absent when the data plane
    /// reported it in its hello): with the snapshot's `accepted_at`, how long convergence took.
    pub acked_at: Option<f64>,
    /// The last snapshot it refused, and why.
    pub nacked: Option<Nack>,
}

/// A refusal.
#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    /// The refused snapshot.
    pub snapshot: SnapshotRef,
    /// The data plane's error.
    pub error: String,
}

/// Where a data plane stands against the served snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    /// Applied the served snapshot.
    Synced,
    /// Connected, but has not (yet) applied the served snapshot.
    Stale,
    /// Refused the served snapshot.
    Rejected,
    /// Not connected.
    Disconnected,
    /// Connected, but the control plane serves nothing for its RoutingConfig (deleted or never
    /// valid); it keeps its last-known-good table.
    Orphaned,
}

impl Record {
    /// Where this data plane stands against `served`.
    pub fn state(&self, served: Option<&SnapshotRef>) -> SyncState {
        if !self.connected {
            return SyncState::Disconnected;
        }
        match served {
            Some(s) if self.acked.as_ref() == Some(s) => SyncState::Synced,
            Some(s) if self.nacked.as_ref().is_some_and(|n| &n.snapshot == s) => SyncState::Rejected,
            Some(_) => SyncState::Stale,
            None => SyncState::Orphaned,
        }
    }
}

/// Counts for one RoutingConfig.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connected data planes.
    pub connected: i64,
    /// Of those, synced to the served snapshot.
    pub synced: i64,
    /// Of those, rejecting it.
    pub rejected: i64,
    /// The most recent rejection of the served snapshot: (data plane, version, error).
    pub last_rejection: Option<(String, i64, String)>,
}

/// All data planes.
pub struct Registry {
    records: Mutex<BTreeMap<String, Record>>,
    sessions: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            records: Mutex::default(),
            sessions: AtomicU64::new(1),
            changed: watch::channel(0).0,
        }
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Registry {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Record>) -> R) -> R {
        let mut records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut records)
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Records a new session; returns its number.
    pub fn connect(&self, id: &str, routing_config: &str, user: &str, remote: &str) -> u64 {
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        let t = now();
        self.with(|records| {
            let previous = records.remove(id);
            records.insert(
                id.to_owned(),
                Record {
                    id: id.to_owned(),
                    routing_config: routing_config.to_owned(),
                    user: user.to_owned(),
                    remote: remote.to_owned(),
                    session,
                    connected: true,
                    connected_since: t,
                    last_seen: t,
                    // A reconnecting data plane keeps what it had applied.
                    acked: previous
                        .as_ref()
                        .filter(|p| p.routing_config == routing_config)
                        .and_then(|p| p.acked.clone()),
                    acked_at: None,
                    nacked: None,
                },
            );
            let cutoff = t - FORGET_AFTER.as_secs_f64();
            records.retain(|_, r| r.connected || r.last_seen > cutoff);
        });
        self.notify();
        session
    }

    fn update(&self, id: &str, session: u64, f: impl FnOnce(&mut Record)) {
        let changed = self.with(|records| match records.get_mut(id) {
            Some(r) if r.session == session => {
                r.last_seen = now();
                f(r);
                true
            }
            _ => false,
        });
        if changed {
            self.notify();
        }
    }

    /// The data plane said what it has applied (in its Hello).
    pub fn applied(&self, id: &str, session: u64, snapshot: Option<SnapshotRef>) {
        self.update(id, session, |r| {
            if r.acked != snapshot {
                r.acked_at = None;
            }
            r.acked = snapshot;
        });
    }

    /// The data plane applied a snapshot.
    pub fn ack(&self, id: &str, session: u64, snapshot: SnapshotRef) {
        self.update(id, session, |r| {
            r.acked = Some(snapshot);
            r.acked_at = Some(r.last_seen);
            r.nacked = None;
        });
    }

    /// The data plane refused a snapshot.
    pub fn nack(&self, id: &str, session: u64, snapshot: SnapshotRef, error: String) {
        self.update(id, session, |r| r.nacked = Some(Nack { snapshot, error }));
    }

    /// The session ended.
    pub fn disconnect(&self, id: &str, session: u64) {
        self.update(id, session, |r| r.connected = false);
    }

    /// Every data plane, by id.
    pub fn list(&self) -> Vec<Record> {
        self.with(|records| records.values().cloned().collect())
    }

    /// Counts for one RoutingConfig against its served snapshot.
    pub fn counts(&self, routing_config: &str, served: Option<&SnapshotRef>) -> Counts {
        let mut counts = Counts::default();
        for r in self
            .list()
            .iter()
            .filter(|r| r.routing_config == routing_config && r.connected)
        {
            counts.connected += 1;
            match r.state(served) {
                SyncState::Synced => counts.synced += 1,
                SyncState::Rejected => {
                    counts.rejected += 1;
                    if let Some(n) = &r.nacked {
                        counts.last_rejection = Some((r.id.clone(), n.snapshot.version, n.error.clone()));
                    }
                }
                _ => {}
            }
        }
        counts
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
