//! The task that persists applied control-plane snapshots, off the applier.

use std::sync::Arc;

use routing_model::protocol::SnapshotMessage;
use tokio::sync::watch;

use super::SnapshotCache;
use crate::metrics::Metrics;

/// Hands applied snapshots to the writer task. Newest first: if snapshots arrive faster than
/// the disk, intermediate ones are skipped, never written out of order.
#[derive(Debug, Clone)]
pub struct CacheWriter {
    tx: watch::Sender<Option<Arc<SnapshotMessage>>>,
}

impl CacheWriter {
    /// Starts the writer task for `cache`.
    pub fn spawn(cache: SnapshotCache, metrics: Arc<Metrics>) -> Self {
        let (tx, mut rx) = watch::channel::<Option<Arc<SnapshotMessage>>>(None);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(snapshot) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let cache = cache.clone();
                let version = snapshot.snapshot.version;
                let result = tokio::task::spawn_blocking(move || cache.store(&snapshot)).await;
                match result {
                    Ok(Ok(())) => {
                        metrics.cache_writes.inc();
                        tracing::debug!(version, "snapshot persisted to the last-known-good cache");
                    }
                    Ok(Err(e)) if e.previous_intact() => {
                        metrics.cache_write_failures.inc();
                        tracing::warn!(version, error = %e, "cannot persist the snapshot; still serving it from memory, the previous cache file is intact");
                    }
                    Ok(Err(e)) => {
                        metrics.cache_write_failures.inc();
                        tracing::warn!(version, error = %e, "the snapshot was written to the cache but may not survive a power loss");
                    }
                    Err(e) => {
                        metrics.cache_write_failures.inc();
                        tracing::warn!(version, error = %e, "the cache writer failed");
                    }
                }
            }
        });
        Self { tx }
    }

    /// Queues `snapshot` for writing, replacing one not yet written.
    pub fn persist(&self, snapshot: Arc<SnapshotMessage>) {
        self.tx.send_replace(Some(snapshot));
    }
}
