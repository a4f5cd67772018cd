//! One RoutingConfig manifest from a file, for running without a cluster.
//!
//! The file obeys the data plane's reload rules: it is re-read when it changes (the watch is on
//! its directory, see `config-watch`), on SIGHUP, and validated before anything is served; an
//! invalid version is logged and counted while the last valid one keeps being served. The
//! object key comes from the manifest's `metadata` (namespace `default` when absent).
//!
//! Versions are the Unix time in milliseconds at which a version was accepted (and always at
//! least one more than the previous), so they keep rising across control-plane restarts; the
//! lineage is the file's absolute path.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures::FutureExt;
use futures::future::BoxFuture;
use routing_model::ParseLimits;
use tokio::signal::unix::{SignalKind, signal};

use super::{ConfigSource, SourceContext};
use crate::metrics::ReconcileResult;
use crate::snapshot::{ObjectKey, Offered};

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
}

struct State {
    path: PathBuf,
    lineage: String,
    limits: ParseLimits,
    key: Option<ObjectKey>,
    last_version: i64,
}

impl ConfigSource for FileSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, anyhow::Result<()>> {
        async move {
            let absolute = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
            let mut state = State {
                path: self.path.clone(),
                lineage: format!("file:{}", absolute.display()),
                limits: self.limits,
                key: None,
                last_version: 0,
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
            Ok(config) => ObjectKey {
                namespace: config
                    .metadata()
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned()),
                name: config
                    .metadata()
                    .name
                    .clone()
                    .unwrap_or_else(|| file_stem(&self.path)),
            },
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
        // Touching the file without changing its content is not a new version.
        if let Ok(config) = &loaded {
            let same = ctx
                .store
                .get(&key)
                .and_then(|s| s.served)
                .is_some_and(|s| s.lineage == self.lineage && s.hash == config.hash());
            if same {
                ctx.metrics.reconciled(ReconcileResult::Unchanged);
                tracing::debug!(object = %key, trigger, "file unchanged");
                return;
            }
        }
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let version = now_ms.max(self.last_version + 1);
        let offered = ctx.store.offer(&key, &self.lineage, version, loaded);
        if offered == Offered::Accepted {
            self.last_version = version;
        }
        super::record(&ctx.metrics, &ctx.store, &key, version, &offered);
    }
}

fn file_stem(path: &std::path::Path) -> String {
    path.file_stem()
        .map_or_else(|| "routing".to_owned(), |s| s.to_string_lossy().into_owned())
}
