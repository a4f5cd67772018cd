//! Reading the cache file back at startup, refusing anything damaged.

use std::path::PathBuf;

use routing_model::protocol::SnapshotMessage;
use sha2::{Digest, Sha256};

use super::{MAGIC, SnapshotCache};

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

impl SnapshotCache {
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

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use routing_model::ParseLimits;
    use routing_model::protocol::SnapshotRef;

    pub(in crate::cache) fn snapshot(version: i64) -> SnapshotMessage {
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

    #[test]
    fn truncation_and_flipped_bytes_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path(), "ns/routes");
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
    }
}
