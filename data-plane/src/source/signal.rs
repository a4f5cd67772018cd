//! SIGHUP: the classic "re-read your config" signal.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::applier::ApplierHandle;
use crate::state::Trigger;

/// Reloads the config file on every SIGHUP until shutdown.
pub fn reload_on_sighup(applier: ApplierHandle, shutdown: CancellationToken) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                got = hup.recv() => {
                    if got.is_none() { break; }
                    tracing::info!("SIGHUP received; reloading the config file");
                    let _ = applier.reload_file(Trigger::Sighup).await;
                }
            }
        }
    });
    Ok(())
}
