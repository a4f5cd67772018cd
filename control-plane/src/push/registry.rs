//! What every data plane last reported, like `istioctl proxy-status`.
//!
//! A record is keyed by who the data plane authenticated as (its [`Principal`]) together with
//! the id its hello gave, so one identity can never touch another's record, and two pods of one
//! name in two namespaces are two records. A reconnect under the same key opens a new session
//! and supersedes the older one (which is told to close); the end of an older session never
//! marks the newer one disconnected.
//!
//! Everything a record holds is bounded, because a peer chooses it: ids are Kubernetes names,
//! NACK texts are cut to [`MAX_NACK_ERROR_BYTES`], and records of disconnected data planes are
//! forgotten after [`FORGET_AFTER`] or when there are more than [`MAX_DISCONNECTED`] of them
//! (oldest first).
//!
//! Each session holds its own record, so an ACK locks that record alone: no lock or lookup that
//! every session shares. A superseded session holds a record no longer listed, so what it still
//! reports changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use routing_model::protocol::{
    MAX_HEALTH_PLACEMENTS, MAX_NACK_ERROR_BYTES, PlacementHealth, SnapshotRef, truncate,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::auth::Principal;

/// How long a disconnected data plane stays listed.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most disconnected data planes listed at once; the longest gone are forgotten first.
pub const MAX_DISCONNECTED: usize = 1024;

/// Which record: who the data plane authenticated as, and the id it gave.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataPlaneKey {
    /// Who its credentials say it is.
    pub principal: Principal,
    /// Its id (the pod name), checked to be a Kubernetes name.
    pub id: String,
}

/// One data plane.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Its id (pod name).
    pub id: String,
    /// Who it authenticated as.
    pub identity: Principal,
    /// The RoutingConfig it serves.
    pub routing_config: String,
    /// Who it authenticated as, as a user name.
    pub user: String,
    /// Its address.
    pub remote: String,
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
    /// What it served with the snapshot it reports health for, summed over this session's
    /// reports (see [`routing_model::protocol::CAP_HEALTH`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Fired when a newer session under the same key takes over.
    #[serde(skip)]
    superseded: CancellationToken,
}

/// Requests and failures per placement, summed over a session's reports for one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// The snapshot that served them.
    pub snapshot: SnapshotRef,
    /// Per placement (at most [`MAX_HEALTH_PLACEMENTS`]).
    pub placements: BTreeMap<String, PlacementHealth>,
}

/// A refusal.
#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    /// The refused snapshot.
    pub snapshot: SnapshotRef,
    /// The data plane's error (cut to [`MAX_NACK_ERROR_BYTES`]).
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

/// A session's place in the registry, handed out by [`Registry::connect`].
#[derive(Debug, Clone)]
pub struct Session {
    /// Fires when a newer session under the same key takes the record over.
    pub superseded: CancellationToken,
    /// Its record (listed until a newer session under the same key replaces it).
    record: Arc<Mutex<Record>>,
}

/// What a new session of a data plane brings.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    /// The RoutingConfig it subscribes to (checked).
    pub routing_config: &'a str,
    /// Its user name.
    pub user: &'a str,
    /// Its address.
    pub remote: &'a str,
}

/// All data planes.
pub struct Registry {
    records: Mutex<BTreeMap<DataPlaneKey, Shared>>,
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            records: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

/// One record, shared by the registry and its session.
type Shared = Arc<Mutex<Record>>;

fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Registry {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<DataPlaneKey, Shared>) -> R) -> R {
        let mut records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut records)
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Records a new session under `key`; a session already open under it is superseded.
    pub fn connect(&self, key: DataPlaneKey, arrival: &Arrival<'_>) -> Session {
        let superseded = CancellationToken::new();
        let t = now();
        let record = self.with(|records| {
            // A reconnecting data plane keeps what it had applied.
            let acked = records.remove(&key).and_then(|previous| {
                let previous = lock(&previous);
                previous.superseded.cancel();
                (previous.routing_config == arrival.routing_config)
                    .then(|| previous.acked.clone())
                    .flatten()
            });
            let record = Arc::new(Mutex::new(Record {
                id: key.id.clone(),
                identity: key.principal.clone(),
                routing_config: arrival.routing_config.to_owned(),
                user: arrival.user.to_owned(),
                remote: arrival.remote.to_owned(),
                connected: true,
                connected_since: t,
                last_seen: t,
                acked,
                acked_at: None,
                nacked: None,
                health: None,
                superseded: superseded.clone(),
            }));
            records.insert(key, record.clone());
            forget(records, t);
            record
        });
        self.notify();
        Session { superseded, record }
    }

    fn update(&self, session: &Session, f: impl FnOnce(&mut Record)) {
        {
            let mut record = lock(&session.record);
            record.last_seen = now();
            f(&mut record);
        }
        // A superseded session's record is no longer listed: nothing anyone sees changed.
        if !session.superseded.is_cancelled() {
            self.notify();
        }
    }

    /// The data plane said what it has applied (in its hello).
    pub fn applied(&self, session: &Session, snapshot: Option<SnapshotRef>) {
        self.update(session, |r| {
            if r.acked != snapshot {
                r.acked_at = None;
            }
            r.acked = snapshot;
        });
    }

    /// The data plane applied a snapshot.
    pub fn ack(&self, session: &Session, snapshot: SnapshotRef) {
        self.update(session, |r| {
            r.acked = Some(snapshot);
            r.acked_at = Some(r.last_seen);
            r.nacked = None;
        });
    }

    /// The data plane reported what it served with `snapshot` since its last report. Reports
    /// of another snapshot start the sums again; placements beyond [`MAX_HEALTH_PLACEMENTS`]
    /// are ignored, so what a peer reports is bounded. No one is woken: a rollout looks when it
    /// looks.
    pub fn health(
        &self,
        session: &Session,
        snapshot: SnapshotRef,
        placements: BTreeMap<String, PlacementHealth>,
    ) {
        let mut record = lock(&session.record);
        record.last_seen = now();
        // Only about what it applied: a report racing a new snapshot is dropped, not misfiled.
        if record.acked.as_ref() != Some(&snapshot) {
            return;
        }
        let health = match &mut record.health {
            Some(h) if h.snapshot == snapshot => h,
            other => other.insert(Health {
                snapshot,
                placements: BTreeMap::new(),
            }),
        };
        for (placement, mut report) in placements {
            if placement.len() > routing_model::validate::MAX_NAME_BYTES {
                continue;
            }
            report.errors = report.errors.min(report.requests);
            let room = health.placements.len() < MAX_HEALTH_PLACEMENTS;
            if let Some(sum) = health.placements.get_mut(&placement) {
                sum.requests = sum.requests.saturating_add(report.requests);
                sum.errors = sum.errors.saturating_add(report.errors);
            } else if room {
                health.placements.insert(placement, report);
            }
        }
    }

    /// The data plane refused a snapshot; `error` is cut to [`MAX_NACK_ERROR_BYTES`].
    pub fn nack(&self, session: &Session, snapshot: SnapshotRef, error: &str) {
        let error = truncate(error, MAX_NACK_ERROR_BYTES);
        self.update(session, |r| r.nacked = Some(Nack { snapshot, error }));
    }

    /// The session ended.
    pub fn disconnect(&self, session: &Session) {
        self.update(session, |r| r.connected = false);
        self.with(|records| forget(records, now()));
    }

    /// Every data plane, by identity and id.
    pub fn list(&self) -> Vec<Record> {
        self.with(|records| records.values().map(|r| lock(r).clone()).collect())
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

/// Drops records of data planes gone longer than [`FORGET_AFTER`] (at `now`), then the longest
/// gone beyond [`MAX_DISCONNECTED`].
fn forget(records: &mut BTreeMap<DataPlaneKey, Shared>, now: f64) {
    let cutoff = now - FORGET_AFTER.as_secs_f64();
    records.retain(|_, r| {
        let r = lock(r);
        r.connected || r.last_seen > cutoff
    });
    let disconnected = records.values().filter(|r| !lock(r).connected).count();
    if disconnected <= MAX_DISCONNECTED {
        return;
    }
    let mut gone: Vec<(f64, DataPlaneKey)> = records
        .iter()
        .filter_map(|(k, r)| {
            let r = lock(r);
            (!r.connected).then(|| (r.last_seen, k.clone()))
        })
        .collect();
    gone.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, key) in gone.into_iter().take(disconnected - MAX_DISCONNECTED) {
        records.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(line: usize, id: &str) -> DataPlaneKey {
        DataPlaneKey {
            principal: Principal::StaticToken { line },
            id: id.to_owned(),
        }
    }

    fn arrival() -> Arrival<'static> {
        Arrival {
            routing_config: "default/routes",
            user: "static-token",
            remote: "127.0.0.1:1",
        }
    }

    fn snapshot(version: i64) -> SnapshotRef {
        SnapshotRef {
            lineage: "l".into(),
            version,
            hash: serde_json::from_str(&format!("\"sha256:{}\"", "ab".repeat(32))).unwrap(),
        }
    }

    #[test]
    fn identities_never_share_a_record() {
        let registry = Registry::default();
        let real = registry.connect(key(1, "dp-x"), &arrival());
        registry.nack(&real, snapshot(1), "too many customers");
        let other = registry.connect(key(2, "dp-x"), &arrival());
        registry.ack(&other, snapshot(1));
        assert!(!real.superseded.is_cancelled(), "another identity superseded it");
        let records = registry.list();
        assert_eq!(records.len(), 2);
        let real_record = records
            .iter()
            .find(|r| r.identity == key(1, "dp-x").principal)
            .unwrap();
        assert_eq!(real_record.state(Some(&snapshot(1))), SyncState::Rejected);
        registry.disconnect(&other);
        let real_record = registry
            .list()
            .into_iter()
            .find(|r| r.identity == key(1, "dp-x").principal)
            .unwrap();
        assert!(real_record.connected);
    }

    #[test]
    fn a_newer_session_supersedes_and_an_older_end_changes_nothing() {
        let registry = Registry::default();
        let first = registry.connect(key(1, "dp-1"), &arrival());
        registry.ack(&first, snapshot(1));
        let second = registry.connect(key(1, "dp-1"), &arrival());
        assert!(first.superseded.is_cancelled());
        registry.disconnect(&first);
        registry.nack(&first, snapshot(2), "late");
        let record = &registry.list()[0];
        assert!(record.connected);
        assert_eq!(
            record.acked,
            Some(snapshot(1)),
            "a reconnect keeps what was applied"
        );
        assert!(record.nacked.is_none());
        registry.disconnect(&second);
        assert!(!registry.list()[0].connected);
    }

    #[test]
    fn health_reports_count_only_for_the_acked_snapshot_and_stay_bounded() {
        let registry = Registry::default();
        let session = registry.connect(key(1, "dp-1"), &arrival());
        let report = |pairs: Vec<(String, u64, u64)>| -> BTreeMap<String, PlacementHealth> {
            pairs
                .into_iter()
                .map(|(p, requests, errors)| (p, PlacementHealth { requests, errors }))
                .collect()
        };
        let health = || registry.list()[0].health.clone();
        // Not what it applied: dropped.
        registry.health(&session, snapshot(1), report(vec![("a".into(), 5, 1)]));
        assert!(health().is_none());
        registry.ack(&session, snapshot(1));
        registry.health(&session, snapshot(1), report(vec![("a".into(), 5, 1)]));
        registry.health(
            &session,
            snapshot(1),
            report(vec![("a".into(), u64::MAX, u64::MAX)]),
        );
        let sums = health().unwrap();
        assert_eq!(sums.placements["a"].requests, u64::MAX, "saturates");
        // A hostile report: more errors than requests, names too long, too many placements.
        let hostile: Vec<(String, u64, u64)> = (0..MAX_HEALTH_PLACEMENTS + 500)
            .map(|i| (format!("p{i}"), 1, 1_000))
            .chain([("x".repeat(10_000), 1, 1)])
            .collect();
        registry.health(&session, snapshot(1), report(hostile));
        let sums = health().unwrap();
        assert_eq!(sums.placements.len(), MAX_HEALTH_PLACEMENTS);
        assert!(sums.placements.values().all(|h| h.errors <= h.requests));
        // A new snapshot starts the sums again.
        registry.ack(&session, snapshot(2));
        registry.health(&session, snapshot(2), report(vec![("b".into(), 3, 0)]));
        let sums = health().unwrap();
        assert_eq!((sums.snapshot.version, sums.placements.len()), (2, 1));
    }

    #[test]
    fn nack_texts_are_cut() {
        let registry = Registry::default();
        let session = registry.connect(key(1, "dp-1"), &arrival());
        registry.nack(&session, snapshot(1), &"é".repeat(1 << 20));
        let stored = registry.list()[0].nacked.clone().unwrap().error;
        assert!(stored.len() <= MAX_NACK_ERROR_BYTES + 3, "{} bytes", stored.len());
    }

    #[test]
    fn disconnected_records_are_bounded_in_number_and_age() {
        let registry = Registry::default();
        for i in 0..MAX_DISCONNECTED + 50 {
            let session = registry.connect(key(1, &format!("dp-{i}")), &arrival());
            registry.disconnect(&session);
        }
        let live = registry.connect(key(1, "live"), &arrival());
        let records = registry.list();
        assert_eq!(records.iter().filter(|r| !r.connected).count(), MAX_DISCONNECTED);
        assert!(records.iter().any(|r| r.id == "live" && r.connected));
        assert!(
            !records.iter().any(|r| r.id == "dp-0"),
            "the longest gone is forgotten first"
        );
        // Later than FORGET_AFTER: only connected ones remain.
        registry.with(|records| forget(records, now() + FORGET_AFTER.as_secs_f64() + 1.0));
        let records = registry.list();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].id, "live");
        registry.disconnect(&live);
    }
}
