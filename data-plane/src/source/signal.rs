//! SIGHUP: the classic "re-read your config" signal.
//!
//! The handler is installed whatever the flags: without it, SIGHUP's default action terminates
//! the process, and a sidecar started without `--config` would die of one stray signal.

use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::applier::ApplierHandle;
use crate::state::Trigger;

/// Reloads the config file on every SIGHUP (`hup`, installed by the caller as early as it can)
/// until shutdown; with no `--config` file, logs that there is nothing to reload.
pub fn reload_on_sighup(
    mut hup: Signal,
    applier: ApplierHandle,
    has_config: bool,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                got = hup.recv() => {
                    if got.is_none() { break; }
                    if !has_config {
                        tracing::info!("SIGHUP received; there is no --config file to reload, nothing to do");
                        continue;
                    }
                    tracing::info!("SIGHUP received; reloading the config file");
                    let _ = applier.reload_file(Trigger::Sighup).await;
                }
            }
        }
    });
}
