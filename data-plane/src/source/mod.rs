//! Where routing configs come from, and what makes the data plane re-read them.
//!
//! Every source only *triggers* the [`crate::applier`]; it never touches the active table.

pub mod signal;

use std::path::Path;
use std::time::Duration;

use config_watch::{FileWatch, WatchError};
use tokio_util::sync::CancellationToken;

use crate::applier::ApplierHandle;
use crate::state::Trigger;

/// Reloads the config file whenever it changes on disk, until shutdown or until the returned
/// watch is dropped.
pub fn reload_on_change(
    config: &Path,
    debounce: Duration,
    applier: ApplierHandle,
    shutdown: CancellationToken,
) -> Result<FileWatch, WatchError> {
    let (watch, mut changes) = config_watch::watch(config, debounce)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                got = changes.recv() => {
                    if got.is_none() { break; }
                    // Failures are counted, logged and shown by the applier.
                    let _ = applier.reload_file(Trigger::Watch).await;
                }
            }
        }
    });
    Ok(watch)
}
