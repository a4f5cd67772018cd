//! The last-known-good cache: every control-plane snapshot that validated and applied is kept
//! on disk, so a data plane restarted during a control-plane outage serves at once.
//!
//! A write is crash-safe: the bytes go to a temp file in the same directory, which is fsynced,
//! renamed over the cache file, and the directory is fsynced (atomic-write-file does exactly
//! these steps). A reader therefore sees the old file or the new one, never a mix. The file
//! carries a SHA-256 checksum of its payload so a truncated or corrupted file (a bad disk, a
//! hand edit) is detected and refused rather than applied.
//!
//! Format: one header line `cellroute-snapshot v1 sha256:<hex>` then the JSON of a
//! [`SnapshotMessage`].

use std::io::Write as _;
use std::path::{Path, PathBuf};

use routing_model::protocol::SnapshotMessage;
use sha2::{Digest, Sha256};

const MAGIC: &str = "cellroute-snapshot v1 sha256:";

/// Why the cache could not be written. The data plane keeps serving from memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot persist the snapshot to {path}: {source}")]
pub struct PersistError {
    path: PathBuf,
    source: std::io::Error,
}

/// Why the cache could not be used at startup.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Truncated, corrupted or not a cache file.
    #[error("{path} is damaged ({why}); ignoring it")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The cache directory and the RoutingConfig it holds snapshots of.
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    path: PathBuf,
}

impl SnapshotCache {
    /// The cache of `routing_config` (`namespace/name`) inside `dir`.
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
        }
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Persists a snapshot, crash-safely. Blocking: call from a blocking thread.
    pub fn store(&self, snapshot: &SnapshotMessage) -> Result<(), PersistError> {
        let fail = |source| PersistError {
            path: self.path.clone(),
            source,
        };
        let payload = serde_json::to_vec(snapshot).map_err(|e| fail(std::io::Error::other(e)))?;
        let digest = hex(&Sha256::digest(&payload));
        let mut file = atomic_write_file::AtomicWriteFile::options()
            .open(&self.path)
            .map_err(fail)?;
        file.write_all(format!("{MAGIC}{digest}\n").as_bytes())
            .map_err(fail)?;
        file.write_all(&payload).map_err(fail)?;
        file.commit().map_err(fail)
    }

    /// Loads the cached snapshot; `Ok(None)` when there is none. Blocking.
    pub fn load(&self) -> Result<Option<SnapshotMessage>, CacheError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CacheError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let damaged = |why: &str| CacheError::Damaged {
            path: self.path.clone(),
            why: why.to_owned(),
        };
        let newline = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| damaged("no header line"))?;
        let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| damaged("header is not text"))?;
        let expected = header
            .strip_prefix(MAGIC)
            .ok_or_else(|| damaged("not a cellroute snapshot file"))?;
        let payload = &bytes[newline + 1..];
        if hex(&Sha256::digest(payload)) != expected {
            return Err(damaged("checksum mismatch: the file is truncated or corrupted"));
        }
        serde_json::from_slice(payload)
            .map(Some)
            .map_err(|e| damaged(&format!("payload does not parse: {e}")))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing_model::ParseLimits;
    use routing_model::protocol::SnapshotRef;

    fn snapshot(version: i64) -> SnapshotMessage {
        let cfg = routing_model::load(
            b"apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec: {defaultPlacement: a, placementToEndpoint: {a: 'http://a'}}\n",
            ParseLimits::default(),
        )
        .unwrap();
        SnapshotMessage {
            routing_config: "ns/routes".into(),
            snapshot: SnapshotRef {
                lineage: "uid-1".into(),
                version,
                hash: cfg.hash(),
            },
            spec: cfg.spec().clone(),
        }
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cellroute-cache-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trips_and_replaces() {
        let dir = temp_dir();
        let cache = SnapshotCache::new(&dir, "ns/routes");
        assert!(cache.load().unwrap().is_none());
        cache.store(&snapshot(1)).unwrap();
        cache.store(&snapshot(2)).unwrap();
        assert_eq!(cache.load().unwrap().unwrap().snapshot.version, 2);
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "temp files left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn truncation_and_flipped_bytes_are_detected() {
        let dir = temp_dir();
        let cache = SnapshotCache::new(&dir, "ns/routes");
        cache.store(&snapshot(1)).unwrap();
        let good = std::fs::read(cache.path()).unwrap();
        std::fs::write(cache.path(), &good[..good.len() - 5]).unwrap();
        assert!(matches!(cache.load(), Err(CacheError::Damaged { .. })));
        let mut flipped = good.clone();
        let last = flipped.len() - 10;
        flipped[last] ^= 0x01;
        std::fs::write(cache.path(), &flipped).unwrap();
        let err = cache.load().unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
