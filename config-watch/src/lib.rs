//! Watching one config file for changes, for every binary that hot-reloads a file.
//!
//! The watch is on the file's parent directory, not the file: editors save by writing a temp
//! file and renaming it over the original, and Kubernetes ConfigMap volumes swap a `..data`
//! symlink, and both replace the inode a file watch would be attached to. Events for unrelated
//! or temporary files in the directory are ignored.
//!
//! Relevant events are coalesced by a [`Debounce`]: a burst of events causes one signal once the
//! directory has been quiet for `quiet` (one save that touches the file several times causes one
//! reload), but never later than `max_wait` after the burst's first event. The maximum matters
//! for a file that is rewritten faster than the quiet period, forever (a generator replacing it
//! every 50 ms): a plain debounce restarts its timer on every event and would never fire, so the
//! newest file would never be applied. notify-debouncer-full behaves that way, which is why the
//! coalescing is done here, on plain `notify` events, in one small task.
//!
//! [`read_limited`] reads the file the same way for every binary, and its size error names the
//! file's real size.
//!
//! The watch only *signals*: [`watch`] returns a channel that yields `()` per burst of
//! changes, and the caller re-reads and validates the file. A pending signal absorbs further
//! ones, so a slow reader never queues stale work.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch as latest};
use tokio::time::Instant;

/// Why a config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed (missing file, permissions, I/O error).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than the limit; it was not read whole.
    #[error("{path} is {size} bytes, over the limit of {limit} bytes (raise it with --max-config-bytes)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// How large it is.
        size: FileSize,
        /// The limit in force.
        limit: usize,
    },
}

/// The size of a file that was too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSize {
    /// The file's length as the file system reports it.
    Exact(u64),
    /// A file without a known length (a pipe, a `/proc` file): at least this many bytes.
    AtLeast(u64),
}

impl fmt::Display for FileSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileSize::Exact(n) => write!(f, "{n}"),
            FileSize::AtLeast(n) => write!(f, "at least {n}"),
        }
    }
}

impl ReadError {
    /// True when the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads the config file, refusing one larger than `limit` bytes without loading it: the
/// file's length is checked first, and the read itself stops one byte past the limit (a file
/// that grows while it is read, or one without a length). The error carries the real size.
/// Blocking.
pub fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let too_large = |size| ReadError::TooLarge {
        path: path.to_owned(),
        size,
        limit,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_file() && meta.len() > limit as u64 {
        return Err(too_large(FileSize::Exact(meta.len())));
    }
    let mut bytes = Vec::with_capacity(if meta.is_file() { meta.len() as usize } else { 0 });
    (&mut file)
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > limit {
        // It grew while being read: report what it is now, if the file system knows.
        let size = match file.metadata() {
            Ok(now) if now.is_file() && now.len() > limit as u64 => FileSize::Exact(now.len()),
            _ => FileSize::AtLeast(bytes.len() as u64),
        };
        return Err(too_large(size));
    }
    Ok(bytes)
}

/// How relevant file events are coalesced into one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Signal once no relevant event has arrived for this long.
    pub quiet: Duration,
    /// Signal at the latest this long after the first event of a burst, however many follow.
    pub max_wait: Duration,
}

impl Debounce {
    /// The defaults of both binaries: 100 ms of quiet, at most 1 s.
    pub const DEFAULT: Debounce = Debounce {
        quiet: Duration::from_millis(100),
        max_wait: Duration::from_secs(1),
    };
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

/// Keeps the watch alive; dropping it stops watching (and closes the signal channel).
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
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

/// Starts watching `config`. The receiver yields once per coalesced burst of relevant changes
/// (see [`Debounce`]); it closes when the returned [`FileWatch`] is dropped.
///
/// Must be called within a Tokio runtime: the coalescing runs as a task on it.
pub fn watch(config: &Path, debounce: Debounce) -> Result<(FileWatch, mpsc::Receiver<()>), WatchError> {
    let (dirs, relevance) = watch_targets(config)?;
    // Every relevant event bumps a counter; the coalescing task only needs to know "something
    // happened since I last looked", so a flood of events costs no memory.
    let (events_tx, events_rx) = latest::channel(0u64);
    let mut watcher =
        notify::recommended_watcher(move |result: notify::Result<notify::Event>| match result {
            Ok(event) => {
                if !event.kind.is_access() && event.paths.iter().any(|p| relevance.concerns(p)) {
                    events_tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) => tracing::warn!(error = %e, "file watch error"),
        })
        .map_err(|source| WatchError::Watch {
            dir: dirs[0].clone(),
            source,
        })?;
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                dir: dir.clone(),
                source,
            })?;
        tracing::info!(dir = %dir.display(), file = %config.display(), "watching config directory");
    }
    // A capacity of one coalesces bursts: a pending signal already means "reload soon".
    let (tx, rx) = mpsc::channel::<()>(1);
    tokio::spawn(coalesce(events_rx, tx, debounce));
    Ok((FileWatch { _watcher: watcher }, rx))
}

/// Turns a stream of event notifications into one signal per burst: after `quiet` without an
/// event, or `max_wait` after the burst began, whichever comes first. Ends when the watcher is
/// dropped (the event sender goes away) or the receiver of the signals is.
async fn coalesce(mut events: latest::Receiver<u64>, signals: mpsc::Sender<()>, debounce: Debounce) {
    loop {
        if events.changed().await.is_err() {
            return;
        }
        let hard = Instant::now() + debounce.max_wait;
        let mut quiet_until = Instant::now() + debounce.quiet;
        loop {
            tokio::select! {
                changed = events.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    quiet_until = Instant::now() + debounce.quiet;
                }
                () = tokio::time::sleep_until(quiet_until.min(hard)) => break,
            }
        }
        match signals.try_send(()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
            Err(mpsc::error::TrySendError::Closed(())) => return,
        }
    }
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

    const D: Debounce = Debounce {
        quiet: Duration::from_millis(100),
        max_wait: Duration::from_millis(1000),
    };

    /// Sends an event every `every` until `until` (virtual time), counting signals and the
    /// instants they arrived, relative to the start.
    async fn run(every: Duration, until: Duration) -> Vec<Duration> {
        let (events, rx) = latest::channel(0u64);
        let (tx, mut signals) = mpsc::channel(1);
        tokio::spawn(coalesce(rx, tx, D));
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            while start.elapsed() < until {
                events.send_modify(|n| *n += 1);
                tokio::time::sleep(every).await;
            }
            // Keep the sender alive a while, so the last burst ends by quiet, not by close.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut at = Vec::new();
        while let Ok(Some(())) = tokio::time::timeout(Duration::from_secs(3), signals.recv()).await {
            at.push(start.elapsed());
        }
        writer.abort();
        at
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_burst_signals_once_after_the_quiet_period() {
        let at = run(Duration::from_millis(10), Duration::from_millis(45)).await;
        assert_eq!(at.len(), 1, "{at:?}");
        // Last event at 40 ms, then 100 ms of quiet.
        assert!(
            at[0] >= Duration::from_millis(140) && at[0] < Duration::from_millis(200),
            "{at:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_still_signals_every_max_wait() {
        // An event every 50 ms for 5 s: the quiet period never comes.
        let at = run(Duration::from_millis(50), Duration::from_secs(5)).await;
        assert!(at.len() >= 5, "a signal at least once per max_wait: {at:?}");
        assert!(at[0] <= D.max_wait + Duration::from_millis(10), "{at:?}");
        for pair in at.windows(2) {
            assert!(
                pair[1] - pair[0] <= D.max_wait + Duration::from_millis(60),
                "{at:?}"
            );
        }
    }

    #[test]
    fn a_size_error_names_the_real_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, vec![b'#'; 20_000]).unwrap();
        let err = read_limited(&path, 1000).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::TooLarge {
                    size: FileSize::Exact(20_000),
                    limit: 1000,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("is 20000 bytes, over the limit of 1000 bytes"),
            "{text}"
        );
        assert_eq!(read_limited(&path, 20_000).unwrap().len(), 20_000);
        assert!(
            read_limited(&dir.path().join("missing"), 10)
                .unwrap_err()
                .is_not_found()
        );
    }
}
