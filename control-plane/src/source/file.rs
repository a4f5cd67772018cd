//! One RoutingConfig manifest from a file, for running without a cluster.
//!
//! The file obeys the data plane's reload rules: it is re-read when it changes (the watch is on
//! its directory, see `config-watch`), on SIGHUP, and validated before anything is served; an
//! invalid version is logged and counted while the last valid one keeps being served. The
//! object key comes from the manifest's `metadata` (namespace `default` when absent).
//!
//! Versions count the file's contents (see [`super::versions`]): the same content keeps its
//! version, across restarts too, and a new one gets the next, whatever the clock says. The
//! lineage is `file:<absolute path>#<epoch>`, recorded under `--state-dir`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt;
use futures::future::BoxFuture;
use routing_model::ParseLimits;
use routing_model::protocol::SnapshotRef;
use tokio::signal::unix::{SignalKind, signal};

use super::versions::Versions;
use super::{ConfigSource, SourceContext};
use crate::metrics::ReconcileResult;
use crate::snapshot::ObjectKey;

/// The file source.
pub struct FileSource {
    /// The manifest.
    pub path: PathBuf,
    /// File event debounce: quiet period.
    pub debounce: Duration,
    /// File event debounce: longest wait during a steady stream of events.
    pub max_wait: Duration,
    /// Parse limits.
    pub limits: ParseLimits,
    /// Where versions are recorded across restarts (`None`: a new lineage on every start).
    pub state_dir: Option<PathBuf>,
}

struct State {
    path: PathBuf,
    versions: Versions,
    limits: ParseLimits,
    key: Option<ObjectKey>,
}

impl ConfigSource for FileSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, anyhow::Result<()>> {
        async move {
            let mut state = State {
                path: self.path.clone(),
                versions: Versions::open(self.state_dir.as_deref(), &self.path),
                limits: self.limits,
                key: None,
            };
            let (_watch, mut changes) = config_watch::watch(
                &self.path,
                config_watch::Debounce {
                    quiet: self.debounce,
                    max_wait: self.max_wait,
                },
            )
            .with_context(|| format!("cannot watch --from-file {}", self.path.display()))?;
            let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
            state.reload(&ctx, "startup");
            ctx.ready.set();
            loop {
                tokio::select! {
                    () = ctx.shutdown.cancelled() => break,
                    got = changes.recv() => match got {
                        Some(()) => state.reload(&ctx, "watch"),
                        None => break,
                    },
                    _ = hup.recv() => state.reload(&ctx, "sighup"),
                }
            }
            Ok(())
        }
        .boxed()
    }
}

impl State {
    fn reload(&mut self, ctx: &SourceContext, trigger: &str) {
        let started = std::time::Instant::now();
        let loaded = config_watch::read_limited(&self.path, self.limits.max_bytes)
            .map_err(|e| e.to_string())
            .and_then(|bytes| routing_model::load(&bytes, self.limits).map_err(|e| e.to_string()));
        ctx.metrics
            .snapshot_build
            .observe(started.elapsed().as_secs_f64());
        let key = match &loaded {
            Ok(config) => object_key(config, &self.path),
            Err(_) => self.key.clone().unwrap_or_else(|| ObjectKey {
                namespace: "default".to_owned(),
                name: file_stem(&self.path),
            }),
        };
        if let Some(old) = &self.key
            && *old != key
            && ctx.store.remove(old)
        {
            tracing::info!(target: "audit", object = %old, renamed_to = %key, "the file now names another object; the old one is no longer served");
        }
        self.key = Some(key.clone());
        let (lineage, version, candidate) = match loaded {
            Ok(config) => {
                let hash = config.hash();
                let (lineage, version) = self.versions.peek(Some(hash));
                // Touching the file without changing its content is not a new version.
                let reference = SnapshotRef {
                    lineage,
                    version,
                    hash,
                };
                if ctx.store.served_ref(&key).as_ref() == Some(&reference) {
                    ctx.metrics.reconciled(ReconcileResult::Unchanged);
                    tracing::debug!(object = %key, trigger, "file unchanged");
                    return;
                }
                // Only a version that can be delivered is recorded (and then served).
                match ctx.store.deliverable(&key, &reference, &config) {
                    Ok(_) => {
                        let (lineage, version) = self.versions.commit(hash);
                        (lineage, version, Ok(config))
                    }
                    Err(e) => (reference.lineage, reference.version, Err(e)),
                }
            }
            Err(e) => {
                let (lineage, version) = self.versions.peek(None);
                (lineage, version, Err(e))
            }
        };
        let offered = ctx.store.offer(&key, &lineage, version, candidate);
        super::record(&ctx.metrics, &ctx.store, &key, version, &offered);
    }
}

/// The object a manifest file stands for: its `metadata`, with namespace `default` and the file's
/// stem as the name when absent.
pub fn object_key(config: &routing_model::ValidatedConfig, path: &std::path::Path) -> ObjectKey {
    ObjectKey {
        namespace: config
            .metadata()
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        name: config.metadata().name.clone().unwrap_or_else(|| file_stem(path)),
    }
}

fn file_stem(path: &std::path::Path) -> String {
    path.file_stem()
        .map_or_else(|| "routing".to_owned(), |s| s.to_string_lossy().into_owned())
}
