//! Watching one config file for changes, for every binary that hot-reloads a file.
//!
//! The watch is on the file's parent directory, not the file: editors save by writing a temp
//! file and renaming it over the original, and Kubernetes ConfigMap volumes swap a `..data`
//! symlink, and both replace the inode a file watch would be attached to. Events are debounced
//! (default 100 ms) so one save that touches the file several times causes one reload, and
//! events for unrelated or temporary files in the directory are ignored.
//!
//! [`read_limited`] reads the file the same way for every binary.
//!
//! The watch only *signals*: [`watch`] returns a channel that yields `()` per burst of
//! changes, and the caller re-reads and validates the file. A pending signal absorbs further
//! ones, so a slow reader never queues stale work.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

/// Reads the config file, at most `limit + 1` bytes: one byte over tells the caller the file is
/// too large without loading a huge file whole. Blocking.
pub fn read_limited(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Why the watch could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The path has no parent directory or file name.
    #[error("cannot watch {0}: the path has no parent directory or file name")]
    BadPath(PathBuf),
    /// The OS refused the watch.
    #[error("cannot watch directory {dir}: {source}")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
}

/// Keeps the watch alive; dropping it stops watching.
pub struct FileWatch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Which file names in the watched directories concern the config file.
#[derive(Debug, Clone)]
struct Relevance {
    names: Vec<OsString>,
}

impl Relevance {
    fn concerns(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return false;
        };
        if self.names.iter().any(|n| n == name) {
            return true;
        }
        let name = name.to_string_lossy();
        // Kubernetes ConfigMap volumes publish a new version by renaming `..data_tmp` over
        // `..data`; the config file itself is a symlink through `..data`.
        name.starts_with("..") && !is_temp_file(&name)
    }
}

/// Editor and tool temp files that must not trigger a reload on their own.
fn is_temp_file(name: &str) -> bool {
    name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name.starts_with(".#")
        || name == "4913"
}

/// Starts watching `config`. The receiver yields once per debounced burst of relevant changes;
/// it closes when the returned [`FileWatch`] is dropped.
pub fn watch(config: &Path, debounce: Duration) -> Result<(FileWatch, mpsc::Receiver<()>), WatchError> {
    let (dirs, relevance) = watch_targets(config)?;
    // A capacity of one coalesces bursts: a pending trigger already means "reload soon".
    let (tx, rx) = mpsc::channel::<()>(1);
    let filter = relevance.clone();
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            if events
                .iter()
                .any(|e| !e.kind.is_access() && e.paths.iter().any(|p| filter.concerns(p)))
            {
                let _ = tx.try_send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "file watch error");
            }
        }
    })
    .map_err(|source| WatchError::Watch {
        dir: dirs[0].clone(),
        source,
    })?;
    for dir in &dirs {
        debouncer
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                dir: dir.clone(),
                source,
            })?;
        tracing::info!(dir = %dir.display(), file = %config.display(), "watching config directory");
    }
    Ok((
        FileWatch {
            _debouncer: debouncer,
        },
        rx,
    ))
}

/// The directories to watch and the file names that matter in them: the config path's own
/// directory, plus the directory of its resolved target when it is a symlink elsewhere.
fn watch_targets(config: &Path) -> Result<(Vec<PathBuf>, Relevance), WatchError> {
    let bad = || WatchError::BadPath(config.to_owned());
    let name = config.file_name().ok_or_else(bad)?.to_owned();
    let dir = match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        Some(_) => PathBuf::from("."),
        None => return Err(bad()),
    };
    let mut dirs = vec![dir.clone()];
    let mut names = vec![name];
    if let Ok(target) = std::fs::canonicalize(config)
        && let (Some(tdir), Some(tname)) = (target.parent(), target.file_name())
    {
        let same_dir = std::fs::canonicalize(&dir).is_ok_and(|d| d == tdir);
        // Targets inside a `..data`-style subdirectory are covered by the `..` rule.
        let via_dotdot = tdir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".."));
        if !same_dir && !via_dotdot {
            dirs.push(tdir.to_owned());
        }
        names.push(tname.to_owned());
    }
    Ok((dirs, Relevance { names }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevance_ignores_temp_files_but_not_configmap_swaps() {
        let r = Relevance {
            names: vec!["routing.yaml".into()],
        };
        assert!(r.concerns(Path::new("/etc/x/routing.yaml")));
        assert!(r.concerns(Path::new("/etc/x/..data")));
        assert!(!r.concerns(Path::new("/etc/x/routing.yaml.swp")));
        assert!(!r.concerns(Path::new("/etc/x/.routing.yaml.swp")));
        assert!(!r.concerns(Path::new("/etc/x/other.yaml")));
        assert!(!r.concerns(Path::new("/etc/x/4913")));
    }
}
