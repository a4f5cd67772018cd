//! The one task through which every routing change is applied.
//!
//! Reloads, rollbacks, source switches and control-plane snapshots are commands on one channel,
//! so they are applied in a total order and two changes can never interleave. Each command first
//! asks [`crate::precedence::decide`] whether it may apply in the current mode; then the
//! candidate is read, parsed, validated and compiled ([`crate::compile`]) on a blocking thread,
//! and only a fully built table is swapped in. A panic while building is caught by that thread's
//! join handle, reported as a failed apply, and leaves the active table untouched.
//!
//! Snapshots never regress: within one lineage an older version is refused. Applied
//! control-plane snapshots are handed to the [`crate::cache::writer`].
//!
//! Failures of *content* are recorded (counted, audited, shown as `last_error`); `last_error`
//! is cleared by the next success from the same origin (see [`SharedState::clear_last_error_from`]),
//! and a file error also by the file found valid while the control plane manages routing (the
//! file is then checked, not applied).
//! A file reload can ask for its failure to be *deferred*: the watcher does so for the first
//! read after a burst of events, because a file written in place may be read half-written; it
//! records the failure only if the file is still invalid once it has been quiet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use routing_model::protocol::{DeltaMessage, Ordering, SnapshotMessage, SnapshotRef};
use routing_model::validate::ChangeError;
use routing_model::{ConfigDiff, ConfigError, ContentHash, RoutingTable, ValidatedConfig};
use tokio::sync::{mpsc, oneshot};

use crate::cache::SnapshotCache;
use crate::cache::writer::CacheWriter;
use crate::compile::{self, CompileError};
use crate::metrics::Metrics;
use crate::precedence::{self, Change, Refusal};
use crate::state::{ActiveConfig, HistoryEntry, LastError, Mode, SharedState, Source, Trigger, unix_seconds};
use crate::upstream::Upstream;

pub use crate::compile::Limits;

/// How many entries of each kind of change a history entry or audit line keeps.
const DIFF_SAMPLE: usize = 20;

/// Why a change was not applied. The active table is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A reload was asked for but the data plane runs without `--config`.
    #[error("no config file: start the data plane with --config FILE to reload from a file")]
    NoConfigFile,
    /// The config file could not be read (missing, unreadable, too large).
    #[error("{0}")]
    Read(#[from] config_watch::ReadError),
    /// The content was rejected; the message names the offending key.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The config is valid but this data plane cannot serve it (a limit, an endpoint).
    #[error("{0}")]
    Compile(#[from] CompileError),
    /// Building the table panicked; this is a bug, and the old table stays active.
    #[error("internal error while building the routing table: {0}")]
    Panicked(String),
    /// The rollback target does not exist.
    #[error("{0}")]
    Rollback(String),
    /// The applier has stopped (the process is shutting down).
    #[error("the data plane is shutting down")]
    ShuttingDown,
    /// The current mode does not allow this change (see [`crate::precedence`]).
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// A pushed snapshot older than the active one of the same lineage.
    #[error(
        "snapshot version {offered} is older than the active version {active} of the same RoutingConfig; not applied"
    )]
    Stale {
        /// The version offered.
        offered: i64,
        /// The active version.
        active: i64,
    },
    /// The pushed content does not match the hash it claims.
    #[error("snapshot content hashes to {computed}, not the {claimed} it claims")]
    HashMismatch {
        /// The hash in the message.
        claimed: ContentHash,
        /// The hash of the content.
        computed: ContentHash,
    },
    /// A delta whose base is neither the active snapshot nor the last one pushed.
    #[error(
        "delta from version {base} does not apply: this data plane has {have}; asking for the full snapshot"
    )]
    DeltaBase {
        /// The base version the delta names.
        base: i64,
        /// What this data plane has, in words.
        have: String,
    },
    /// A delta that does not apply to its base, or whose result does not hash to its target.
    #[error("delta to version {version} does not apply: {why}; asking for the full snapshot")]
    DeltaMismatch {
        /// The target version.
        version: i64,
        /// What went wrong.
        why: String,
    },
    /// Asked to return to the control plane before it sent anything.
    #[error("no control-plane snapshot has been received yet; the data plane stays on its current table")]
    NoSnapshot,
}

impl ApplyError {
    /// True when the control plane should answer with a full snapshot: a delta that did not
    /// apply to what this data plane has.
    pub fn wants_full_snapshot(&self) -> bool {
        matches!(
            self,
            ApplyError::DeltaBase { .. } | ApplyError::DeltaMismatch { .. }
        )
    }

    /// True when the *content* was refused (these count as reload failures and set `last_error`);
    /// false for refusals caused by the data plane's mode or by the request itself.
    pub fn is_content_error(&self) -> bool {
        !matches!(
            self,
            ApplyError::ShuttingDown
                | ApplyError::Rollback(_)
                | ApplyError::Refused(_)
                | ApplyError::Stale { .. }
                | ApplyError::DeltaBase { .. }
                | ApplyError::NoSnapshot
        )
    }
}

/// The source an operator can force with `POST /admin/source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreferredSource {
    /// Pin to the local `--config` file (break-glass).
    File,
    /// Follow the control plane again.
    ControlPlane,
}

/// The result of a successful apply.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// The active generation afterwards.
    pub generation: u64,
    /// False when the candidate was identical to the active table (a no-op).
    pub changed: bool,
    /// Content hash of the active table.
    pub hash: ContentHash,
    /// For a rollback, the generation that was re-applied.
    pub rolled_back_to: Option<u64>,
}

/// What to do with a failed file reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Count it, audit it and show it as `last_error` (every explicit reload).
    Record,
    /// Only return it: the caller will look again once the file has settled.
    Defer,
}

type Reply = oneshot::Sender<Result<Applied, ApplyError>>;

enum Command {
    ReloadFile {
        trigger: Trigger,
        on_failure: OnFailure,
        reply: Reply,
    },
    ApplyBytes {
        bytes: Vec<u8>,
        source: Source,
        trigger: Trigger,
        detail: String,
        reply: Reply,
    },
    Rollback {
        generation: Option<u64>,
        reply: Reply,
    },
    ApplySnapshot {
        snapshot: Arc<SnapshotMessage>,
        source: Source,
        reply: Reply,
    },
    ApplyDelta {
        delta: Arc<DeltaMessage>,
        reply: Reply,
    },
    SetSource {
        source: PreferredSource,
        reply: Reply,
    },
}

/// A cheap, cloneable way to ask the applier for a change and wait for the outcome.
#[derive(Clone)]
pub struct ApplierHandle {
    tx: mpsc::Sender<Command>,
}

impl ApplierHandle {
    /// Re-reads the `--config` file and applies it if it is valid and different.
    pub async fn reload_file(&self, trigger: Trigger) -> Result<Applied, ApplyError> {
        self.reload_file_then(trigger, OnFailure::Record).await
    }

    /// [`Self::reload_file`], choosing whether a failure is recorded.
    pub async fn reload_file_then(
        &self,
        trigger: Trigger,
        on_failure: OnFailure,
    ) -> Result<Applied, ApplyError> {
        self.ask(|reply| Command::ReloadFile {
            trigger,
            on_failure,
            reply,
        })
        .await
    }

    /// Applies a document given as bytes, bypassing source precedence (benchmarks and tests).
    pub async fn apply_bytes(
        &self,
        bytes: Vec<u8>,
        source: Source,
        trigger: Trigger,
        detail: String,
    ) -> Result<Applied, ApplyError> {
        self.ask(|reply| Command::ApplyBytes {
            bytes,
            source,
            trigger,
            detail,
            reply,
        })
        .await
    }

    /// Re-applies a version from history: `generation`, or the one before the active one.
    pub async fn rollback(&self, generation: Option<u64>) -> Result<Applied, ApplyError> {
        self.ask(|reply| Command::Rollback { generation, reply }).await
    }

    /// Applies a snapshot pushed by the control plane (`Source::ControlPlane`) or read from the
    /// cache (`Source::Cache`).
    pub async fn apply_snapshot(
        &self,
        snapshot: Arc<SnapshotMessage>,
        source: Source,
    ) -> Result<Applied, ApplyError> {
        self.ask(|reply| Command::ApplySnapshot {
            snapshot,
            source,
            reply,
        })
        .await
    }

    /// Applies a pushed delta: the changes from the snapshot it names as base (the active one, or
    /// the last one pushed) to the next. Applied like the full snapshot it makes, which must hash
    /// to the delta's target.
    pub async fn apply_delta(&self, delta: Arc<DeltaMessage>) -> Result<Applied, ApplyError> {
        self.ask(|reply| Command::ApplyDelta { delta, reply }).await
    }

    /// Break-glass: pin the data plane to its local file, or hand it back to the control plane.
    pub async fn set_source(&self, source: PreferredSource) -> Result<Applied, ApplyError> {
        self.ask(|reply| Command::SetSource { source, reply }).await
    }

    async fn ask(&self, make: impl FnOnce(Reply) -> Command) -> Result<Applied, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ApplyError::ShuttingDown)?;
        rx.await.map_err(|_| ApplyError::ShuttingDown)?
    }
}

/// The applier task's own state.
pub struct Applier {
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    config_path: Option<PathBuf>,
    limits: Limits,
    /// The newest snapshot the control plane pushed, applied or not (for leaving break-glass).
    latest_pushed: Option<Arc<SnapshotMessage>>,
    /// Persists applied control-plane snapshots.
    persist: Option<CacheWriter>,
}

/// What the applier starts with.
pub struct ApplierSettings {
    /// The shared state it writes.
    pub state: Arc<SharedState>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The local `--config` file, if any.
    pub config_path: Option<PathBuf>,
    /// Limits.
    pub limits: Limits,
    /// The last-known-good cache, if `--cache-dir` is set.
    pub cache: Option<SnapshotCache>,
}

/// What the blocking build step produced.
enum Candidate {
    /// Identical content, with the candidate's snapshot identity (for pushed or cached
    /// snapshots) and source detail, to record if they differ from the active ones.
    Unchanged(ContentHash, Option<SnapshotRef>, String),
    Built(Box<Built>),
}

/// The active table's identity, as the blocking build step needs it.
struct Previous {
    config: Arc<ValidatedConfig>,
    table: Arc<RoutingTable<Arc<Upstream>>>,
    header: http::HeaderName,
    generation: u64,
    snapshot: Option<SnapshotRef>,
}

struct Built {
    active: ActiveConfig,
    diff: Option<ConfigDiff>,
    /// The table was patched from the active one rather than rebuilt.
    patched: bool,
}

impl Applier {
    /// Starts the applier task (and the cache writer) and returns the handle to reach it.
    pub fn spawn(settings: ApplierSettings) -> ApplierHandle {
        let (tx, rx) = mpsc::channel(64);
        let persist = settings
            .cache
            .map(|cache| CacheWriter::spawn(cache, settings.metrics.clone()));
        let applier = Self {
            state: settings.state,
            metrics: settings.metrics,
            config_path: settings.config_path,
            limits: settings.limits,
            latest_pushed: None,
            persist,
        };
        tokio::spawn(applier.run(rx));
        ApplierHandle { tx }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::ReloadFile {
                    trigger,
                    on_failure,
                    reply,
                } => {
                    let result = self.reload_file(trigger).await;
                    let result = match (on_failure, &result) {
                        (OnFailure::Defer, Err(e)) if e.is_content_error() => {
                            tracing::info!(trigger = trigger.as_str(), error = %e, "the config file is not valid yet (it may still be being written); looking again once it has been quiet");
                            result
                        }
                        _ => self.record(result, Source::File, trigger),
                    };
                    let _ = reply.send(result);
                }
                Command::ApplyBytes {
                    bytes,
                    source,
                    trigger,
                    detail,
                    reply,
                } => {
                    let result = self
                        .apply(Input::Bytes(bytes), source, trigger, detail, None)
                        .await;
                    let _ = reply.send(self.record(result, source, trigger));
                }
                Command::Rollback { generation, reply } => {
                    let result = self.rollback(generation).await;
                    let _ = reply.send(self.record(result, Source::Rollback, Trigger::AdminRollback));
                }
                Command::ApplySnapshot {
                    snapshot,
                    source,
                    reply,
                } => {
                    let (change, trigger) = if source == Source::Cache {
                        (Change::CacheLoad, Trigger::Startup)
                    } else {
                        self.latest_pushed = Some(snapshot.clone());
                        (Change::Push, Trigger::Push)
                    };
                    let result = self.apply_snapshot(change, snapshot, source, trigger).await;
                    let _ = reply.send(self.record(result, source, trigger));
                }
                Command::ApplyDelta { delta, reply } => {
                    let (source, trigger) = (Source::ControlPlane, Trigger::Push);
                    let result = match self.resolve(&delta).await {
                        Ok(snapshot) => {
                            let before = self.latest_pushed.replace(snapshot.clone());
                            let applied = self
                                .apply_snapshot_from(
                                    Change::Push,
                                    snapshot,
                                    Some(delta.clone()),
                                    source,
                                    trigger,
                                )
                                .await;
                            // A result that is not the target's content is no base for the next delta.
                            if let Err(ApplyError::HashMismatch { .. }) = &applied {
                                self.latest_pushed = before;
                            }
                            applied.map_err(|e| match e {
                                ApplyError::HashMismatch { claimed, computed } => ApplyError::DeltaMismatch {
                                    version: delta.snapshot.version,
                                    why: format!("the result hashes to {computed}, not {claimed}"),
                                },
                                other => other,
                            })
                        }
                        Err(e) => Err(e),
                    };
                    if result.is_ok() {
                        self.metrics.deltas_applied.inc();
                    }
                    let _ = reply.send(self.record(result, source, trigger));
                }
                Command::SetSource { source, reply } => {
                    let result = self.set_source(source).await;
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// The full snapshot a delta makes from its base: the last snapshot pushed (what the control
    /// plane last sent, applied or not, as while pinned to the file) or the active one. Built on a
    /// blocking thread: it copies the base table.
    async fn resolve(&self, delta: &Arc<DeltaMessage>) -> Result<Arc<SnapshotMessage>, ApplyError> {
        let pushed = self
            .latest_pushed
            .clone()
            .filter(|p| p.snapshot == delta.base && p.routing_config == delta.routing_config);
        let active = self.state.active.load_full();
        let base: Box<dyn Fn() -> routing_model::RoutingConfigSpec + Send> = match (pushed, active) {
            (Some(pushed), _) => Box::new(move || pushed.spec.clone()),
            (None, Some(active)) if active.snapshot.as_ref() == Some(&delta.base) => {
                Box::new(move || active.config.spec().clone())
            }
            (None, active) => {
                let have = match active.as_ref().and_then(|a| a.snapshot.as_ref()) {
                    Some(s) if s.lineage == delta.base.lineage => format!("version {}", s.version),
                    Some(_) => "a snapshot of another lineage".to_owned(),
                    None => "no control-plane snapshot".to_owned(),
                };
                return Err(ApplyError::DeltaBase {
                    base: delta.base.version,
                    have,
                });
            }
        };
        let delta = delta.clone();
        tokio::task::spawn_blocking(move || {
            let mut spec = base();
            delta
                .changes
                .apply(&mut spec, None)
                .map_err(|e| ApplyError::DeltaMismatch {
                    version: delta.snapshot.version,
                    why: e.to_string(),
                })?;
            Ok(Arc::new(SnapshotMessage {
                routing_config: delta.routing_config.clone(),
                snapshot: delta.snapshot.clone(),
                spec,
            }))
        })
        .await
        .map_err(|e| ApplyError::Panicked(e.to_string()))?
    }

    /// Asks precedence whether `change` may apply now; on success of `apply`, enters the mode it
    /// names. The one place the mode changes.
    async fn decided<F>(&mut self, change: Change, apply: F) -> Result<Applied, ApplyError>
    where
        F: AsyncFnOnce(&mut Self) -> Result<Applied, ApplyError>,
    {
        let before = self.state.mode();
        let then = precedence::decide(before, change)?;
        let applied = apply(self).await?;
        self.enter(before, then);
        Ok(applied)
    }

    fn enter(&self, before: Mode, then: Mode) {
        if before == then {
            return;
        }
        self.state.set_mode(then);
        if before == Mode::Managed {
            // The control plane's version is no longer what this data plane serves: the
            // session tells it so (see `crate::control_plane`).
            self.state.snapshot_withdrawn();
        }
    }

    async fn reload_file(&mut self, trigger: Trigger) -> Result<Applied, ApplyError> {
        let decided = self
            .decided(Change::FileReload, async |this: &mut Self| {
                let (bytes, detail) = this.read_file().await?;
                this.apply(Input::Bytes(bytes), Source::File, trigger, detail, None)
                    .await
            })
            .await;
        if let Err(ApplyError::Refused(Refusal::ManagedFile)) = &decided {
            tracing::info!(
                trigger = trigger.as_str(),
                "the local config file was not applied: the control plane manages routing (force it with POST /admin/source)"
            );
            self.recheck_file_error(trigger).await;
        }
        decided
    }

    /// While managed the file is not applied, but a `last_error` saying it is invalid must not
    /// outlive the fix: when there is one, the file is checked as a reload would (without
    /// applying it), and the error cleared if it now passes.
    async fn recheck_file_error(&self, trigger: Trigger) {
        if self.state.last_error().is_none_or(|e| e.source != Source::File) {
            return;
        }
        let Ok((bytes, _)) = self.read_file().await else {
            return;
        };
        let limits = self.limits;
        let valid = tokio::task::spawn_blocking(move || {
            let config = routing_model::load(&bytes, limits.parse).ok()?;
            // A throwaway registry: a file that is not applied must not add metric series.
            compile::compile(&config, &limits, &Metrics::new()).ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        if valid && self.state.clear_last_error_from(Source::File) {
            tracing::info!(
                trigger = trigger.as_str(),
                "the local config file is valid again (not applied: the control plane manages routing); last_error cleared"
            );
        }
    }

    async fn rollback(&mut self, generation: Option<u64>) -> Result<Applied, ApplyError> {
        self.decided(Change::Rollback, async |this: &mut Self| {
            let entry = this.rollback_target(generation)?;
            let detail = format!("generation {}", entry.generation);
            this.apply(
                Input::Validated(entry.config),
                Source::Rollback,
                Trigger::AdminRollback,
                detail,
                Some(entry.generation),
            )
            .await
        })
        .await
    }

    async fn apply_snapshot(
        &mut self,
        change: Change,
        snapshot: Arc<SnapshotMessage>,
        source: Source,
        trigger: Trigger,
    ) -> Result<Applied, ApplyError> {
        self.apply_snapshot_from(change, snapshot, None, source, trigger)
            .await
    }

    /// [`Self::apply_snapshot`] of a snapshot made by `delta`, if one did: when the delta's base
    /// is the active table, the table is patched rather than rebuilt.
    async fn apply_snapshot_from(
        &mut self,
        change: Change,
        snapshot: Arc<SnapshotMessage>,
        delta: Option<Arc<DeltaMessage>>,
        source: Source,
        trigger: Trigger,
    ) -> Result<Applied, ApplyError> {
        self.decided(change, async |this: &mut Self| {
            let detail = format!(
                "{} version {} ({})",
                snapshot.routing_config, snapshot.snapshot.version, snapshot.snapshot.lineage
            );
            let input = Input::Snapshot {
                message: snapshot.clone(),
                delta,
            };
            let applied = this.apply(input, source, trigger, detail, None).await?;
            if source == Source::ControlPlane
                && let Some(persist) = &this.persist
            {
                persist.persist(snapshot);
            }
            Ok(applied)
        })
        .await
    }

    async fn set_source(&mut self, source: PreferredSource) -> Result<Applied, ApplyError> {
        match source {
            PreferredSource::File => {
                let result = self
                    .decided(Change::PinFile, async |this: &mut Self| {
                        let (bytes, detail) = this.read_file().await?;
                        this.apply(
                            Input::Bytes(bytes),
                            Source::File,
                            Trigger::AdminSource,
                            detail,
                            None,
                        )
                        .await
                    })
                    .await;
                let result = self.record(result, Source::File, Trigger::AdminSource);
                if result.is_ok() {
                    tracing::warn!(target: "audit", "break-glass: pinned to the local config file; control-plane snapshots are refused until POST /admin/source {{\"source\":\"control-plane\"}}");
                }
                result
            }
            PreferredSource::ControlPlane => {
                let Some(latest) = self.latest_pushed.clone() else {
                    // Releasing the pin is what was asked for, even before a snapshot arrives.
                    let before = self.state.mode();
                    let then = precedence::decide(before, Change::ReleasePin)?;
                    self.enter(before, then);
                    if before != then {
                        tracing::info!(target: "audit", "released the local-file pin; waiting for a control-plane snapshot");
                    }
                    return Err(ApplyError::NoSnapshot);
                };
                let result = self
                    .apply_snapshot(
                        Change::FollowControlPlane,
                        latest,
                        Source::ControlPlane,
                        Trigger::AdminSource,
                    )
                    .await;
                let result = self.record(result, Source::ControlPlane, Trigger::AdminSource);
                if result.is_ok() {
                    tracing::info!(target: "audit", "released the local-file pin; following the control plane again");
                }
                result
            }
        }
    }

    async fn read_file(&self) -> Result<(Vec<u8>, String), ApplyError> {
        let path = self.config_path.clone().ok_or(ApplyError::NoConfigFile)?;
        let limit = self.limits.parse.max_bytes;
        let reading = path.clone();
        let bytes = tokio::task::spawn_blocking(move || config_watch::read_limited(&reading, limit))
            .await
            .map_err(|e| ApplyError::Panicked(e.to_string()))??;
        Ok((bytes, path.display().to_string()))
    }

    fn rollback_target(&self, generation: Option<u64>) -> Result<HistoryEntry, ApplyError> {
        let history = self.state.history();
        let found = match generation {
            Some(g) => history.iter().find(|e| e.generation == g),
            None => history.get(1),
        };
        found.cloned().ok_or_else(|| {
            let have: Vec<String> = history.iter().map(|e| e.generation.to_string()).collect();
            let what = match generation {
                Some(g) => format!("generation {g} is not in the history"),
                None => "there is no previous version to roll back to".to_owned(),
            };
            ApplyError::Rollback(format!(
                "{what} (history holds generations [{}])",
                have.join(", ")
            ))
        })
    }

    /// Builds the candidate off the async threads and swaps it in if it is complete and new.
    async fn apply(
        &self,
        input: Input,
        source: Source,
        trigger: Trigger,
        detail: String,
        rolled_back_to: Option<u64>,
    ) -> Result<Applied, ApplyError> {
        let current = self.state.active.load_full();
        let metrics = self.metrics.clone();
        let limits = self.limits;
        let previous = current.as_ref().map(|a| Previous {
            config: a.config.clone(),
            table: a.table.clone(),
            header: a.header.clone(),
            generation: a.generation,
            snapshot: a.snapshot.clone(),
        });
        let built =
            tokio::task::spawn_blocking(move || build(input, previous, &metrics, limits, source, detail))
                .await
                .map_err(|e| ApplyError::Panicked(panic_message(e)))??;
        let built = match built {
            Candidate::Unchanged(hash, snapshot, detail) => {
                let generation = current.as_ref().map_or(0, |a| a.generation);
                // Same content from another source or under another snapshot identity: keep the
                // table, but record where it now comes from, so the admin API, the metrics and
                // the next Hello tell the truth.
                if let Some(active) = current.as_ref()
                    && (active.source != source || active.snapshot != snapshot)
                {
                    self.state.active.store(Some(Arc::new(ActiveConfig {
                        table: active.table.clone(),
                        header: active.header.clone(),
                        config: active.config.clone(),
                        generation: active.generation,
                        source,
                        source_detail: detail,
                        applied_at: active.applied_at,
                        snapshot: snapshot.clone(),
                    })));
                    self.metrics.set_active_source(source);
                }
                if source == Source::ControlPlane
                    && let Some(snapshot) = snapshot
                {
                    self.state.snapshot_applied(snapshot);
                }
                tracing::debug!(source = source.as_str(), trigger = trigger.as_str(), %hash, "config unchanged");
                return Ok(Applied {
                    generation,
                    changed: false,
                    hash,
                    rolled_back_to,
                });
            }
            Candidate::Built(b) => *b,
        };
        let Built {
            active,
            diff,
            patched,
        } = built;
        if patched {
            self.metrics.deltas_patched.inc();
        }
        let summary = diff.as_ref().map(|d| d.summarize(DIFF_SAMPLE));
        let applied = Applied {
            generation: active.generation,
            changed: true,
            hash: active.config.hash(),
            rolled_back_to,
        };
        let entry = HistoryEntry {
            generation: active.generation,
            source,
            trigger,
            source_detail: active.source_detail.clone(),
            hash: applied.hash,
            applied_at: unix_seconds(active.applied_at),
            customers: active.table.customers(),
            diff: summary.clone(),
            rolled_back_to,
            config: active.config.clone(),
        };
        let customers = active.table.customers();
        for w in active.config.warnings() {
            tracing::warn!(source = source.as_str(), field = %w.field, "{}", w.message);
        }
        let pushed = (source == Source::ControlPlane)
            .then(|| active.snapshot.clone())
            .flatten();
        let replaced = self.state.active.swap(Some(Arc::new(active)));
        if let Some(snapshot) = pushed {
            self.state.snapshot_applied(snapshot);
        }
        let forgotten = self.state.push_history(entry);
        // `current` too: it may hold the replaced table's last reference.
        retire((replaced, forgotten, current));
        self.metrics.reload_success.inc();
        self.metrics.generation.set(applied.generation as i64);
        self.metrics.last_success.set(unix_seconds(SystemTime::now()));
        self.metrics.customers.set(customers as i64);
        self.metrics.set_active_source(source);
        tracing::info!(
            target: "audit",
            source = source.as_str(),
            trigger = trigger.as_str(),
            generation = applied.generation,
            hash = %applied.hash,
            customers,
            rolled_back_to,
            diff = %summary.map_or_else(|| "initial version".to_owned(), |s| s.to_string()),
            "config applied"
        );
        Ok(applied)
    }

    /// Counts and reports a failure; on success, clears a `last_error` of the same origin.
    fn record(
        &self,
        result: Result<Applied, ApplyError>,
        source: Source,
        trigger: Trigger,
    ) -> Result<Applied, ApplyError> {
        let e = match &result {
            Ok(_) => {
                if self.state.clear_last_error_from(source) {
                    tracing::info!(
                        source = source.as_str(),
                        trigger = trigger.as_str(),
                        "the earlier error of this source is resolved; last_error cleared"
                    );
                }
                return result;
            }
            Err(e) => e,
        };
        // Only rejected *content* counts as a failed reload: a mistyped rollback generation
        // or a shutdown must not trip reload-failure alerts.
        if !e.is_content_error() {
            return result;
        }
        let now = SystemTime::now();
        self.metrics.reload_failure.inc();
        self.metrics.last_failure.set(unix_seconds(now));
        self.state.set_last_error(LastError {
            at: unix_seconds(now),
            source,
            trigger,
            error: e.to_string(),
        });
        let generation = self.state.active.load().as_ref().map_or(0, |a| a.generation);
        tracing::warn!(
            target: "audit",
            source = source.as_str(),
            trigger = trigger.as_str(),
            active_generation = generation,
            error = %e,
            "config rejected"
        );
        result
    }
}

/// A candidate before the blocking step.
enum Input {
    Bytes(Vec<u8>),
    Validated(Arc<ValidatedConfig>),
    /// A snapshot, and the delta that made it when one did.
    Snapshot {
        message: Arc<SnapshotMessage>,
        delta: Option<Arc<DeltaMessage>>,
    },
    /// Lets unit tests prove that a panic while building leaves the active table alone.
    #[cfg(test)]
    Panic,
}

/// Parses, validates, diffs and compiles a candidate. Runs on a blocking thread.
fn build(
    input: Input,
    previous: Option<Previous>,
    metrics: &Metrics,
    limits: Limits,
    source: Source,
    detail: String,
) -> Result<Candidate, ApplyError> {
    let mut snapshot = None;
    // A delta from the active table: validated, hashed, diffed and compiled from the change.
    let mut patch = None;
    let config = match input {
        Input::Bytes(bytes) => Arc::new(routing_model::load(&bytes, limits.parse)?),
        Input::Validated(config) => config,
        Input::Snapshot { message, delta } => {
            let base = previous.as_ref().filter(|p| {
                delta
                    .as_ref()
                    .is_some_and(|d| p.snapshot.as_ref() == Some(&d.base) && d.snapshot == message.snapshot)
            });
            let config = match (base, &delta) {
                (Some(base), Some(delta)) => {
                    patch = Some(delta.clone());
                    base.config.with_changes(&delta.changes).map_err(|e| match e {
                        ChangeError::Invalid(e) => ApplyError::Config(ConfigError::Invalid(e)),
                        ChangeError::Delta(e) => ApplyError::DeltaMismatch {
                            version: delta.snapshot.version,
                            why: e.to_string(),
                        },
                    })?
                }
                _ => routing_model::validate::validate(message.to_manifest())
                    .map_err(|e| ApplyError::Config(ConfigError::Invalid(e)))?,
            };
            if !message.snapshot.hash.matches(config.spec(), config.hash()) {
                return Err(ApplyError::HashMismatch {
                    claimed: message.snapshot.hash,
                    computed: ContentHash::of_spec_in(message.snapshot.hash.scheme(), config.spec()),
                });
            }
            if let Some(active) = previous.as_ref().and_then(|p| p.snapshot.as_ref())
                && message.snapshot.compare(active) == Ordering::Older
            {
                return Err(ApplyError::Stale {
                    offered: message.snapshot.version,
                    active: active.version,
                });
            }
            snapshot = Some(message.snapshot.clone());
            Arc::new(config)
        }
        #[cfg(test)]
        Input::Panic => panic!("injected build panic"),
    };
    compile::check_limits(&config, &limits)?;
    if let Some(prev) = &previous
        && prev.config.hash() == config.hash()
    {
        return Ok(Candidate::Unchanged(config.hash(), snapshot, detail));
    }
    let patched = patch.as_ref().zip(previous.as_ref()).and_then(|(delta, prev)| {
        if delta.changes.touches_placements() {
            return None;
        }
        let changes = delta
            .changes
            .customer_to_placement
            .iter()
            .map(|(c, p)| (c.as_str(), p.as_deref()));
        Some(compile::Compiled {
            table: Arc::new(prev.table.with_changes(changes)?),
            header: prev.header.clone(),
        })
    });
    let diff = || {
        previous.as_ref().map(|p| match &patch {
            Some(delta) => ConfigDiff::of_changes(p.config.spec(), &delta.changes),
            None => ConfigDiff::between(p.config.spec(), config.spec()),
        })
    };
    let (compiled, patched, diff) = match patched {
        Some(compiled) => (compiled, true, diff()),
        // A whole table: its build and its diff with the active one each pass over every
        // customer, and neither needs the other, so they run side by side.
        None => std::thread::scope(|scope| {
            let diff = scope.spawn(diff);
            let compiled = compile::compile(&config, &limits, metrics);
            let diff = diff
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            compiled.map(|compiled| (compiled, false, diff))
        })?,
    };
    let generation = previous.as_ref().map_or(0, |p| p.generation) + 1;
    Ok(Candidate::Built(Box::new(Built {
        active: ActiveConfig {
            table: compiled.table,
            header: compiled.header,
            config,
            generation,
            source,
            source_detail: detail,
            applied_at: SystemTime::now(),
            snapshot,
        },
        diff,
        patched,
    })))
}

/// Frees what an apply replaced on a blocking thread: freeing a large table (its map, hash tree
/// and index, 100k customers and more) takes milliseconds to tens of milliseconds that neither
/// the next apply nor the ACK of this one should wait for. In-flight requests may still hold
/// the table; it is freed when the last of them ends, wherever that is.
fn retire<T: Send + 'static>(old: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(old))),
        Err(_) => drop(old),
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(acme: &str) -> Vec<u8> {
        format!(
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec:\n  defaultPlacement: t1\n  customerToPlacement: {{acme: {acme}}}\n  placementToEndpoint: {{t1: 'http://127.0.0.1:1', t2: 'http://127.0.0.1:2'}}\n"
        )
        .into_bytes()
    }

    fn setup() -> (Applier, Arc<SharedState>, Arc<Metrics>) {
        let state = Arc::new(SharedState::default());
        let metrics = Metrics::new();
        let applier = Applier {
            state: state.clone(),
            metrics: metrics.clone(),
            config_path: None,
            limits: Limits::default(),
            latest_pushed: None,
            persist: None,
        };
        (applier, state, metrics)
    }

    async fn apply(applier: &Applier, input: Input) -> Result<Applied, ApplyError> {
        let result = applier
            .apply(input, Source::File, Trigger::AdminReload, String::new(), None)
            .await;
        applier.record(result, Source::File, Trigger::AdminReload)
    }

    fn generation(state: &SharedState) -> u64 {
        state.active.load().as_ref().map_or(0, |a| a.generation)
    }

    #[tokio::test]
    async fn identical_content_is_a_no_op() {
        let (applier, state, metrics) = setup();
        let first = apply(&applier, Input::Bytes(doc("t1"))).await.unwrap();
        assert!(first.changed);
        let again = apply(&applier, Input::Bytes(doc("t1"))).await.unwrap();
        assert!(!again.changed);
        assert_eq!(generation(&state), 1);
        assert_eq!(metrics.reload_success.get(), 1);
        assert_eq!(state.history().len(), 1);
    }

    #[tokio::test]
    async fn invalid_input_and_panics_leave_the_active_table() {
        let (applier, state, metrics) = setup();
        apply(&applier, Input::Bytes(doc("t1"))).await.unwrap();
        let before = state.active.load_full().unwrap();

        let err = apply(&applier, Input::Bytes(doc("t9"))).await.unwrap_err();
        assert!(err.to_string().contains("spec.customerToPlacement.acme"), "{err}");
        let panicked = apply(&applier, Input::Panic).await.unwrap_err();
        assert!(
            matches!(panicked, ApplyError::Panicked(ref m) if m.contains("injected")),
            "{panicked}"
        );

        let after = state.active.load_full().unwrap();
        assert!(Arc::ptr_eq(&before, &after), "the active table was replaced");
        assert_eq!(metrics.reload_failure.get(), 2);
        assert!(state.last_error().unwrap().error.contains("injected"));
    }

    #[tokio::test]
    async fn rollback_reapplies_history_as_a_new_generation() {
        let (applier, state, _) = setup();
        let a = apply(&applier, Input::Bytes(doc("t1"))).await.unwrap();
        apply(&applier, Input::Bytes(doc("t2"))).await.unwrap();
        let target = applier.rollback_target(None).unwrap();
        assert_eq!(target.generation, 1);
        let rolled = applier
            .apply(
                Input::Validated(target.config),
                Source::Rollback,
                Trigger::AdminRollback,
                String::new(),
                Some(1),
            )
            .await
            .unwrap();
        assert_eq!(
            (rolled.generation, rolled.hash, rolled.rolled_back_to),
            (3, a.hash, Some(1))
        );
        assert_eq!(state.history()[0].source, Source::Rollback);
        assert!(applier.rollback_target(Some(99)).is_err());
    }

    #[tokio::test]
    async fn a_later_success_of_the_same_origin_clears_last_error() {
        let (applier, state, _) = setup();
        apply(&applier, Input::Bytes(doc("t1"))).await.unwrap();
        apply(&applier, Input::Bytes(doc("t9"))).await.unwrap_err();
        assert!(state.last_error().is_some());
        // Another origin's success says nothing about the file.
        let ok = applier
            .apply(
                Input::Bytes(doc("t2")),
                Source::ControlPlane,
                Trigger::Push,
                String::new(),
                None,
            )
            .await;
        applier.record(ok, Source::ControlPlane, Trigger::Push).unwrap();
        assert!(state.last_error().is_some());
        // The file valid again, even unchanged against the active table, clears it.
        let again = apply(&applier, Input::Bytes(doc("t2"))).await.unwrap();
        assert!(!again.changed);
        assert!(state.last_error().is_none());
    }

    #[tokio::test]
    async fn a_rollback_while_managed_is_refused_and_changes_nothing() {
        let (mut applier, state, metrics) = setup();
        apply(&applier, Input::Bytes(doc("t1"))).await.unwrap();
        apply(&applier, Input::Bytes(doc("t2"))).await.unwrap();
        state.set_mode(Mode::Managed);
        let before = state.active.load_full().unwrap();
        let refused = applier.rollback(None).await.unwrap_err();
        assert!(
            matches!(refused, ApplyError::Refused(Refusal::ManagedRollback)),
            "{refused}"
        );
        assert!(!refused.is_content_error());
        assert!(Arc::ptr_eq(&before, &state.active.load_full().unwrap()));
        assert_eq!(metrics.reload_failure.get(), 0);
        assert_eq!(state.mode(), Mode::Managed);
    }
}
