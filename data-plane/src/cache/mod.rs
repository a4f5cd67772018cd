//! The last-known-good cache: every control-plane snapshot that validated and applied is kept
//! on disk, so a data plane restarted during a control-plane outage serves at once.
//!
//! - [`store`]: the crash-safe write. The bytes go to a temp file in the same directory, which
//!   is fsynced, renamed over the cache file, and the directory is fsynced, so a reader sees the
//!   old file or the new one, never a mix. A failed write removes its temp file; temp files of
//!   writes a crash interrupted are removed when the cache is opened.
//! - [`load`]: reading it back at startup. The file carries a SHA-256 checksum of its payload,
//!   so a truncated or corrupted file (a bad disk, a hand edit) is refused rather than applied;
//!   so is one larger than any snapshot this data plane accepts, unread.
//! - [`format`]: the bytes of the file, encoded and decoded by pure functions (one decoder,
//!   the one the `cache_file` fuzz target runs).
//! - [`writer`]: the task that persists applied snapshots, newest first, off the applier.
//!
//! Format: one header line `cellroute-snapshot v1 sha256:<hex>` then the JSON of a
//! [`routing_model::protocol::SnapshotMessage`].

pub mod format;
pub mod load;
pub mod store;
pub mod writer;

use std::path::{Path, PathBuf};

pub use format::{CachedSnapshot, DecodeError};
pub use load::CacheError;
pub use store::PersistError;

/// The cache file of one RoutingConfig inside the cache directory.
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    path: PathBuf,
    /// Largest file [`SnapshotCache::load`] reads: the header line and one snapshot message.
    max_bytes: usize,
}

/// Why the cache directory cannot be used at startup.
#[derive(Debug, thiserror::Error)]
#[error("cannot use --cache-dir {dir}: {source}")]
pub struct OpenError {
    dir: PathBuf,
    source: std::io::Error,
}

impl SnapshotCache {
    /// The cache of `routing_config` (`namespace/name`) inside `dir`, without touching the disk.
    pub fn new(dir: &Path, routing_config: &str) -> Self {
        let file: String = routing_config
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            path: dir.join(format!("{file}.snapshot")),
            max_bytes: routing_model::protocol::DEFAULT_MAX_MESSAGE_BYTES + format::HEADER_BYTES,
        }
    }

    /// Bounds what [`SnapshotCache::load`] reads by the largest message this data plane accepts
    /// (`--max-message-bytes`): a snapshot it stored came in one such message, and its payload
    /// is never larger than that message.
    pub fn with_max_message_bytes(mut self, max_message_bytes: usize) -> Self {
        self.max_bytes = max_message_bytes.saturating_add(format::HEADER_BYTES);
        self
    }

    /// Creates `dir` if needed and removes the temp files that writes of an earlier run left
    /// behind when they were interrupted (`kill -9`, a power loss). Blocking.
    pub fn open(dir: &Path, routing_config: &str) -> Result<Self, OpenError> {
        let fail = |source| OpenError {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let cache = Self::new(dir, routing_config);
        let removed = cache.remove_leftovers().map_err(fail)?;
        if !removed.is_empty() {
            tracing::info!(
                cache = %cache.path.display(),
                removed = ?removed,
                "removed temp files of cache writes an earlier run did not finish"
            );
        }
        Ok(cache)
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding it.
    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}
