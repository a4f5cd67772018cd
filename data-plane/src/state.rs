//! What the data plane is serving right now, and what it served before.
//!
//! The active table sits behind one `ArcSwapOption`: the proxy loads it once per request and
//! keeps its `Arc` for the whole request, so a swap never changes a request midway. Only the
//! [`crate::applier`] task writes here; everyone else reads.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderName;
use routing_model::protocol::SnapshotRef;
use routing_model::{ContentHash, DiffSummary, RoutingTable, ValidatedConfig};
use serde::Serialize;

pub use crate::provenance::{Source, Trigger};
use crate::upstream::Upstream;

/// How many applied versions `/admin/history` and rollback remember.
pub const HISTORY_LEN: usize = 10;

/// The routing table being served, with where and when it came from.
pub struct ActiveConfig {
    /// The compiled table the proxy routes with (shared when only the label changes).
    pub table: Arc<RoutingTable<Arc<Upstream>>>,
    /// The customer header, parsed once.
    pub header: HeaderName,
    /// The config the table was built from (for the admin API, diffs and rollback).
    pub config: Arc<ValidatedConfig>,
    /// Rises by one with every applied change.
    pub generation: u64,
    /// Where the config came from.
    pub source: Source,
    /// Human detail about the source (file path, rollback target).
    pub source_detail: String,
    /// When it was applied.
    pub applied_at: SystemTime,
    /// For tables from the control plane (or its cache): which snapshot.
    pub snapshot: Option<SnapshotRef>,
}

/// One applied version, kept for `/admin/history` and rollback.
#[derive(Clone, Serialize)]
pub struct HistoryEntry {
    /// Generation it was applied as.
    pub generation: u64,
    /// Where it came from.
    pub source: Source,
    /// What caused it.
    pub trigger: Trigger,
    /// Human detail about the source.
    pub source_detail: String,
    /// Content hash.
    pub hash: ContentHash,
    /// Unix seconds.
    pub applied_at: f64,
    /// Customers in the table.
    pub customers: usize,
    /// Change against the version it replaced; `None` for the first version.
    pub diff: Option<DiffSummary>,
    /// For rollbacks, the generation that was re-applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u64>,
    /// The config itself, for rollback.
    #[serde(skip)]
    pub config: Arc<ValidatedConfig>,
}

/// The most recent rejected change.
#[derive(Clone, Debug, Serialize)]
pub struct LastError {
    /// Unix seconds.
    pub at: f64,
    /// Where the rejected input came from.
    pub source: Source,
    /// What caused the attempt.
    pub trigger: Trigger,
    /// One line naming what is wrong, with the key where there is one.
    pub error: String,
}

/// Who decides the routing table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The local file (no control-plane snapshot applied yet, or none configured).
    #[default]
    Local,
    /// The control plane: local file edits are logged and not applied.
    Managed,
    /// An operator forced the local file (break-glass); pushed snapshots are refused.
    PinnedToFile,
}

/// The data plane's view of its control plane, for the admin API and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// The control plane URL, when one is configured.
    pub control_plane: Option<String>,
    /// The RoutingConfig subscribed to (`namespace/name`).
    pub routing_config: Option<String>,
    /// A session is open right now.
    pub connected: bool,
    /// Unix seconds of the last message or pong from the control plane.
    pub last_contact: Option<f64>,
    /// The control plane reported the RoutingConfig deleted (or unknown): the table is kept.
    pub orphaned: bool,
    /// The last snapshot this data plane refused, and why.
    pub last_nack: Option<String>,
}

/// State shared between the applier (the only writer) and readers.
pub struct SharedState {
    /// The active table, if any.
    pub active: ArcSwapOption<ActiveConfig>,
    history: Mutex<VecDeque<HistoryEntry>>,
    last_error: Mutex<Option<LastError>>,
    mode: Mutex<Mode>,
    sync: Mutex<SyncStatus>,
    applied: tokio::sync::watch::Sender<Option<SnapshotRef>>,
}

impl Default for SharedState {
    fn default() -> Self {
        Self {
            active: ArcSwapOption::default(),
            history: Mutex::default(),
            last_error: Mutex::default(),
            mode: Mutex::default(),
            sync: Mutex::default(),
            applied: tokio::sync::watch::channel(None).0,
        }
    }
}

impl SharedState {
    /// Applied versions, newest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        lock(&self.history).iter().cloned().collect()
    }

    /// The most recent rejected change, if any.
    pub fn last_error(&self) -> Option<LastError> {
        lock(&self.last_error).clone()
    }

    /// Who decides the routing table now.
    pub fn mode(&self) -> Mode {
        *lock(&self.mode)
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        *lock(&self.mode) = mode;
    }

    /// Announces a control-plane snapshot that is now active, however it got there (a push, or
    /// an operator releasing break-glass), so the session can ACK it.
    pub(crate) fn snapshot_applied(&self, snapshot: SnapshotRef) {
        self.applied.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&snapshot);
            *current = Some(snapshot);
            changed
        });
    }

    /// Announces that the active table is no longer the control plane's snapshot (an operator
    /// pinned the local file), so the session can tell the control plane.
    pub(crate) fn snapshot_withdrawn(&self) {
        self.applied.send_if_modified(|current| current.take().is_some());
    }

    /// Follows [`Self::snapshot_applied`] and [`Self::snapshot_withdrawn`]: `Some` is the
    /// control-plane snapshot now active, `None` that none is.
    pub fn applied_snapshots(&self) -> tokio::sync::watch::Receiver<Option<SnapshotRef>> {
        self.applied.subscribe()
    }

    /// The control-plane session as last seen.
    pub fn sync(&self) -> SyncStatus {
        lock(&self.sync).clone()
    }

    /// Updates the control-plane session view.
    pub fn update_sync(&self, f: impl FnOnce(&mut SyncStatus)) {
        f(&mut lock(&self.sync));
    }

    /// Remembers `entry`; returns the entries it pushed out, for the caller to free.
    pub(crate) fn push_history(&self, entry: HistoryEntry) -> Vec<HistoryEntry> {
        let mut history = lock(&self.history);
        history.push_front(entry);
        let keep = history.len().min(HISTORY_LEN);
        history.split_off(keep).into()
    }

    pub(crate) fn set_last_error(&self, error: LastError) {
        *lock(&self.last_error) = Some(error);
    }

    /// Clears `last_error` when it came from the same origin as `source` (see
    /// [`Source::same_origin`]): a later success of that origin means the error no longer
    /// describes the current state. Returns whether it cleared one.
    pub(crate) fn clear_last_error_from(&self, source: Source) -> bool {
        let mut last = lock(&self.last_error);
        if last.as_ref().is_some_and(|e| source.same_origin(e.source)) {
            *last = None;
            true
        } else {
            false
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the data here is
/// replaced whole, never left half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
