//! Snapshot identities for `--from-file`, kept across restarts in a small state file.
//!
//! A version is a counter, never a clock reading, so a clock stepped back changes nothing. It
//! rises by one for every new content and stays the same for the same content, including across
//! restarts: a control plane restarted on an unchanged file serves the version data planes
//! already have (they are up to date and download nothing), and older content after a restart
//! gets a higher version, not a lower one.
//!
//! The lineage is `file:<absolute path>#<epoch>`, the epoch random per lineage. The state file
//! (`<state dir>/file-<digest of the path>.json`: lineage, version, content hash) is written
//! crash-safely (temp file, fsync, rename, fsync of the directory) *before* a version is served.
//! When it cannot be written, the version is served under a fresh lineage that was never
//! recorded, so whatever a later process serves is another lineage, which data planes always
//! accept, and never a clash with a version they already hold. A lost or unreadable state file
//! starts a new lineage the same way. Either case is logged as a warning that says what it
//! costs: one full download per data plane after the next restart.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use routing_model::ContentHash;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hex digits of a lineage's epoch.
pub const EPOCH_HEX: usize = 16;

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    /// The absolute path of the served file (a state file is only used for its own file).
    source: String,
    lineage: String,
    version: i64,
    hash: ContentHash,
}

/// The identity of the file's versions, and where it is recorded.
#[derive(Debug)]
pub struct Versions {
    source: String,
    state_file: Option<PathBuf>,
    lineage: String,
    /// The last version handed out (0 before the first).
    version: i64,
    /// Its content.
    hash: Option<ContentHash>,
    /// Whether the state file holds `lineage`.
    durable: bool,
}

/// `file:<absolute path>`, the part of every lineage of `source` before its epoch.
pub fn lineage_base(source: &Path) -> String {
    let absolute = std::path::absolute(source).unwrap_or_else(|_| source.to_owned());
    format!("file:{}", absolute.display())
}

/// The longest lineage `source` can have, for sizing a snapshot before it exists.
pub fn longest_lineage(source: &Path) -> String {
    format!("{}#{}", lineage_base(source), "f".repeat(EPOCH_HEX))
}

fn fresh_lineage(base: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = Sha256::new();
    hasher.update(base.as_bytes());
    hasher.update(nanos.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    // Two lineages made in one process within one clock tick still differ.
    static MADE: AtomicU64 = AtomicU64::new(0);
    hasher.update(MADE.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let digest = hasher.finalize();
    let epoch: String = digest
        .iter()
        .take(EPOCH_HEX / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{base}#{epoch}")
}

impl Versions {
    /// The versions of `source`, continuing what `state_dir` recorded (no directory: every start
    /// is a new lineage).
    pub fn open(state_dir: Option<&Path>, source: &Path) -> Self {
        let base = lineage_base(source);
        let absolute = base.trim_start_matches("file:").to_owned();
        let state_file = state_dir.map(|dir| {
            let digest = Sha256::digest(absolute.as_bytes());
            let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            dir.join(format!("file-{name}.json"))
        });
        let fresh = |why: String| {
            tracing::warn!(source = %absolute, "{why}; starting a new lineage: every data plane downloads the table once (point --state-dir at a writable directory to keep versions across restarts)");
            Self {
                source: absolute.clone(),
                state_file: state_file.clone(),
                lineage: fresh_lineage(&base),
                version: 0,
                hash: None,
                durable: false,
            }
        };
        let Some(path) = &state_file else {
            return fresh(
                "no --state-dir (and no default state directory): versions are not kept across restarts"
                    .to_owned(),
            );
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(source = %absolute, state_file = %path.display(), "no file-mode state yet; starting a new lineage");
                return fresh_quiet(&absolute, &base, state_file.clone());
            }
            Err(e) => return fresh(format!("cannot read the file-mode state {}: {e}", path.display())),
        };
        match serde_json::from_str::<Recorded>(&text) {
            Ok(r) if r.source == absolute && r.lineage.starts_with(&format!("{base}#")) && r.version > 0 => {
                tracing::info!(source = %absolute, lineage = %r.lineage, version = r.version, "continuing the recorded file-mode versions");
                Self {
                    source: absolute,
                    state_file,
                    lineage: r.lineage,
                    version: r.version,
                    hash: Some(r.hash),
                    durable: true,
                }
            }
            Ok(r) => fresh(format!(
                "the file-mode state {} is for {} ({}), not this file",
                path.display(),
                r.source,
                r.lineage
            )),
            Err(e) => fresh(format!(
                "the file-mode state {} is unreadable ({e})",
                path.display()
            )),
        }
    }

    /// The identity content `hash` would be served under: the current one for the same
    /// content, else the next version. Records nothing.
    pub fn peek(&self, hash: Option<ContentHash>) -> (String, i64) {
        if hash.is_some() && hash == self.hash {
            (self.lineage.clone(), self.version)
        } else {
            (self.lineage.clone(), self.version + 1)
        }
    }

    /// The identity content `hash` is served under, recorded in the state file first when it is
    /// new. When recording fails, a fresh lineage that no state file holds (see the module doc).
    pub fn commit(&mut self, hash: ContentHash) -> (String, i64) {
        if self.hash == Some(hash) {
            return (self.lineage.clone(), self.version);
        }
        let next = Recorded {
            source: self.source.clone(),
            lineage: self.lineage.clone(),
            version: self.version + 1,
            hash,
        };
        match self.write(&next) {
            Ok(()) => self.durable = true,
            Err(e) => {
                if self.durable {
                    self.lineage = fresh_lineage(&lineage_base(Path::new(&self.source)));
                    self.version = 0;
                    self.durable = false;
                }
                tracing::warn!(
                    source = %self.source,
                    error = %e,
                    lineage = %self.lineage,
                    "cannot record the file-mode version; serving it under a lineage that is not recorded: after a restart every data plane downloads the table once (point --state-dir at a writable directory)"
                );
            }
        }
        self.version += 1;
        self.hash = Some(hash);
        (self.lineage.clone(), self.version)
    }

    fn write(&self, recorded: &Recorded) -> Result<(), String> {
        let path = self
            .state_file
            .as_ref()
            .ok_or_else(|| "no --state-dir".to_owned())?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let text = serde_json::to_string(recorded).map_err(|e| e.to_string())?;
        // A temp file beside it, fsynced, renamed over it, then the directory fsynced; dropped
        // (and removed) on any failure, so no temp file outlives a failed write.
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let mut file = tempfile::Builder::new()
            .prefix(".cellroute-state-")
            .tempfile_in(dir)
            .map_err(fail)?;
        file.write_all(text.as_bytes()).map_err(fail)?;
        file.as_file().sync_all().map_err(fail)?;
        file.persist(path).map_err(|e| fail(e.error))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
    }
}

fn fresh_quiet(absolute: &str, base: &str, state_file: Option<PathBuf>) -> Versions {
    Versions {
        source: absolute.to_owned(),
        state_file,
        lineage: fresh_lineage(base),
        version: 0,
        hash: None,
        durable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> ContentHash {
        serde_json::from_str(&format!("\"sha256:{}\"", format!("{n:02x}").repeat(32))).unwrap()
    }

    #[test]
    fn versions_survive_a_restart_and_do_not_move_for_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("routing.yaml");
        let mut first = Versions::open(Some(dir.path()), &source);
        let (lineage, v1) = first.commit(hash(1));
        assert_eq!(v1, 1);
        assert!(
            lineage.starts_with(&format!("{}#", lineage_base(&source))),
            "{lineage}"
        );
        assert_eq!(lineage.len(), longest_lineage(&source).len());
        assert_eq!(first.commit(hash(1)), (lineage.clone(), 1));
        assert_eq!(first.commit(hash(2)), (lineage.clone(), 2));

        // A new process: the same content keeps its version, older content gets a higher one.
        let mut again = Versions::open(Some(dir.path()), &source);
        assert_eq!(again.peek(Some(hash(2))), (lineage.clone(), 2));
        assert_eq!(again.commit(hash(2)), (lineage.clone(), 2));
        assert_eq!(again.commit(hash(1)), (lineage.clone(), 3));
        assert_eq!(again.peek(None), (lineage.clone(), 4));
    }

    #[test]
    fn a_lost_or_foreign_state_file_starts_a_new_lineage() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("routing.yaml");
        let (lineage, _) = Versions::open(Some(dir.path()), &source).commit(hash(1));
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                std::fs::write(&path, "{not json").unwrap();
            }
        }
        let (other, version) = Versions::open(Some(dir.path()), &source).commit(hash(1));
        assert_ne!(other, lineage);
        assert_eq!(version, 1);
        // Another file's state is not this file's.
        let elsewhere = dir.path().join("other.yaml");
        let (third, _) = Versions::open(Some(dir.path()), &elsewhere).commit(hash(1));
        assert_ne!(third, other);
    }

    #[test]
    fn a_state_that_cannot_be_written_moves_to_an_unrecorded_lineage() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("routing.yaml");
        let state = dir.path().join("state");
        let mut versions = Versions::open(Some(&state), &source);
        let (recorded, _) = versions.commit(hash(1));
        // The state directory becomes a file: nothing can be written in it any more.
        std::fs::remove_dir_all(&state).unwrap();
        std::fs::write(&state, "not a directory").unwrap();
        let (moved, version) = versions.commit(hash(2));
        assert_ne!(moved, recorded, "an unrecorded version kept the recorded lineage");
        assert_eq!(version, 1);
        // Still unwritable: the unrecorded lineage simply continues.
        assert_eq!(versions.commit(hash(3)), (moved.clone(), 2));
        // Without any state directory, every process is a new lineage.
        let (a, _) = Versions::open(None, &source).commit(hash(1));
        let (b, _) = Versions::open(None, &source).commit(hash(1));
        assert_ne!(a, b);
    }
}
