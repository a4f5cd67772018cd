//! Reading the cache file back at startup, refusing anything damaged.

use std::io::Read as _;
use std::path::PathBuf;

use super::SnapshotCache;
use super::format::{CachedSnapshot, DecodeError, decode};

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
    /// Too large, truncated, corrupted, not a cache file, or not a snapshot this data plane
    /// would serve.
    #[error("{path} is unusable ({why}); ignoring it")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: DecodeError,
    },
}

impl SnapshotCache {
    /// Loads the cached snapshot; `Ok(None)` when there is none. Blocking. A file over the size
    /// bound is refused without being read.
    pub fn load(&self) -> Result<Option<CachedSnapshot>, CacheError> {
        let read_error = |source| CacheError::Read {
            path: self.path.clone(),
            source,
        };
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let limit = self.max_bytes as u64;
        let size = file.metadata().map_err(read_error)?.len();
        let refused = |why| CacheError::Unusable {
            path: self.path.clone(),
            why,
        };
        if size > limit {
            return Err(refused(DecodeError::TooLarge { bytes: size, limit }));
        }
        // The file may grow after the check: read one byte past the bound at most, which
        // `decode` then refuses.
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(limit + 1).read_to_end(&mut bytes).map_err(read_error)?;
        decode(&bytes, self.max_bytes).map(Some).map_err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::format::tests::snapshot;

    #[test]
    fn truncation_and_flipped_bytes_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path(), "ns/routes");
        cache.store(&snapshot(1)).unwrap();
        let good = std::fs::read(cache.path()).unwrap();
        std::fs::write(cache.path(), &good[..good.len() - 5]).unwrap();
        assert!(matches!(
            cache.load(),
            Err(CacheError::Unusable {
                why: DecodeError::Checksum,
                ..
            })
        ));
        let mut flipped = good.clone();
        let last = flipped.len() - 10;
        flipped[last] ^= 0x01;
        std::fs::write(cache.path(), &flipped).unwrap();
        let err = cache.load().unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn a_file_over_the_message_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path(), "ns/routes");
        cache.store(&snapshot(1)).unwrap();
        let size = std::fs::metadata(cache.path()).unwrap().len() as usize;
        let payload = size - crate::cache::format::HEADER_BYTES;
        assert!(
            cache
                .clone()
                .with_max_message_bytes(payload)
                .load()
                .unwrap()
                .is_some()
        );
        let err = cache.with_max_message_bytes(payload - 1).load().unwrap_err();
        assert!(
            matches!(err, CacheError::Unusable { why: DecodeError::TooLarge { bytes, .. }, .. } if bytes == size as u64),
            "{err}"
        );
    }
}
