//! Writing the cache file crash-safely, and leaving nothing behind when that fails.
//!
//! Temp files are named `.<cache file name>.<random>.tmp` in the cache directory: only this
//! module creates names of that shape, so [`SnapshotCache::remove_leftovers`] can remove the
//! ones an interrupted write left without touching anything else in the directory (another
//! RoutingConfig's cache, or an operator's files).

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::PathBuf;

use routing_model::protocol::SnapshotMessage;

use super::SnapshotCache;
use super::format::encode;

const TEMP_SUFFIX: &str = ".tmp";

/// The step of a persist that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating or writing the temp file (disk full, EIO).
    Write,
    /// fsync of the temp file.
    Sync,
    /// Renaming the temp file over the cache file.
    Rename,
    /// fsync of the directory after the rename: the new file is in place but may not survive a
    /// power loss.
    SyncDir,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Write => "write",
            Step::Sync => "fsync",
            Step::Rename => "rename",
            Step::SyncDir => "fsync the directory",
        }
    }
}

/// Why the cache could not be written. The data plane keeps serving from memory; the temp file
/// of the attempt has been removed.
#[derive(Debug, thiserror::Error)]
#[error("cannot persist the snapshot to {path} ({}): {source}", step.as_str())]
pub struct PersistError {
    path: PathBuf,
    step: Step,
    source: std::io::Error,
}

impl PersistError {
    /// True when the previous cache file is still the one on disk (every step before the rename).
    pub fn previous_intact(&self) -> bool {
        self.step != Step::SyncDir
    }
}

impl SnapshotCache {
    /// Persists a snapshot, crash-safely: temp file, fsync, rename, fsync of the directory.
    /// On failure the temp file is removed. Blocking: call from a blocking thread.
    pub fn store(&self, snapshot: &SnapshotMessage) -> Result<(), PersistError> {
        let fail = |step| {
            move |source| PersistError {
                path: self.path.clone(),
                step,
                source,
            }
        };
        let file = encode(snapshot);
        // Dropping a `NamedTempFile` removes it: every early return below cleans up.
        let mut temp = tempfile::Builder::new()
            .prefix(&self.temp_prefix())
            .suffix(TEMP_SUFFIX)
            .tempfile_in(self.dir())
            .map_err(fail(Step::Write))?;
        temp.write_all(&file).map_err(fail(Step::Write))?;
        temp.as_file().sync_all().map_err(fail(Step::Sync))?;
        // On failure the error hands the temp file back; dropping it removes it.
        temp.persist(&self.path)
            .map_err(|e| fail(Step::Rename)(e.error))?;
        std::fs::File::open(self.dir())
            .and_then(|dir| dir.sync_all())
            .map_err(fail(Step::SyncDir))
    }

    /// Removes temp files of interrupted writes; returns their names. Blocking.
    pub fn remove_leftovers(&self) -> std::io::Result<Vec<String>> {
        let prefix = self.temp_prefix();
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(self.dir())? {
            let entry = entry?;
            let name = entry.file_name();
            if !is_temp_name(&name, &prefix) || !entry.file_type()?.is_file() {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed.push(name.to_string_lossy().into_owned()),
                // Another process of the same cache removed or renamed it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// `.<cache file name>.`: the start of every temp file name of this cache.
    fn temp_prefix(&self) -> String {
        let name = self
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        format!(".{name}.")
    }
}

fn is_temp_name(name: &OsStr, prefix: &str) -> bool {
    let name = name.to_string_lossy();
    name.len() > prefix.len() + TEMP_SUFFIX.len() && name.starts_with(prefix) && name.ends_with(TEMP_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::format::tests::snapshot;

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn round_trips_and_replaces_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::open(dir.path(), "ns/routes").unwrap();
        assert!(cache.load().unwrap().is_none());
        cache.store(&snapshot(1)).unwrap();
        cache.store(&snapshot(2)).unwrap();
        assert_eq!(cache.load().unwrap().unwrap().message.snapshot.version, 2);
        assert_eq!(names(dir.path()), ["ns_routes.snapshot"]);
    }

    #[test]
    fn a_failed_rename_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path(), "ns/routes");
        // A non-empty directory where the cache file belongs: the rename fails.
        std::fs::create_dir_all(cache.path().join("occupied")).unwrap();
        let err = cache.store(&snapshot(1)).unwrap_err();
        assert!(err.previous_intact());
        assert!(err.to_string().contains("(rename)"), "{err}");
        assert_eq!(names(dir.path()), ["ns_routes.snapshot"]);
    }

    #[test]
    fn opening_removes_only_this_caches_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let keep = [
            "ns_routes.snapshot",
            "other_routes.snapshot",
            ".other_routes.snapshot.abc123.tmp",
            ".ns_routes.snapshot.tmp",
            "notes.tmp",
        ];
        for name in keep {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::write(dir.path().join(".ns_routes.snapshot.Xy9Zq1.tmp"), "partial").unwrap();
        SnapshotCache::open(dir.path(), "ns/routes").unwrap();
        let mut want: Vec<String> = keep.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(names(dir.path()), want);
    }
}
