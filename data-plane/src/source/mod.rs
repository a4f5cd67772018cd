//! Where routing configs come from, and what makes the data plane re-read them.
//!
//! Every source only *triggers* the [`crate::applier`]; it never touches the active table.
//!
//! A watched file may be read while it is being written: an editor or a script that rewrites it
//! in place can be caught between the truncate and the last write, and a reader sees half a
//! document. That is not a failed reload. So the first read after a burst of file events defers
//! its failure ([`OnFailure::Defer`]): if another event arrives within one more debounce
//! interval, the file is read again; only once the file has been quiet for that interval and is
//! still invalid is the failure recorded (counted in `config_reload_failure_total`, audited,
//! shown as `last_error`). SIGHUP and `POST /admin/reload` are explicit and record at once.

pub mod signal;

use std::path::Path;

use config_watch::{Debounce, FileWatch, WatchError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::applier::{ApplierHandle, OnFailure};
use crate::state::Trigger;

/// Reloads the config file whenever it changes on disk, until shutdown or until the returned
/// watch is dropped.
pub fn reload_on_change(
    config: &Path,
    debounce: Debounce,
    applier: ApplierHandle,
    shutdown: CancellationToken,
) -> Result<FileWatch, WatchError> {
    let (watch, changes) = config_watch::watch(config, debounce)?;
    tokio::spawn(follow(changes, debounce, applier, shutdown));
    Ok(watch)
}

async fn follow(
    mut changes: mpsc::Receiver<()>,
    debounce: Debounce,
    applier: ApplierHandle,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = changes.recv() => if got.is_none() { return },
        }
        // Read, and while the file is invalid, wait for it to settle before calling it a failure.
        loop {
            match applier.reload_file_then(Trigger::Watch, OnFailure::Defer).await {
                Err(e) if e.is_content_error() => {}
                // Applied, unchanged, or refused by the mode (logged by the applier).
                _ => break,
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = changes.recv() => if got.is_none() { return },
                () = tokio::time::sleep(debounce.quiet) => {
                    // Quiet for one more interval and still invalid: a real failure. Counted,
                    // logged and shown by the applier.
                    let _ = applier.reload_file(Trigger::Watch).await;
                    break;
                }
            }
        }
    }
}
