//! Tunnels for requests that switch protocols (WebSocket and other `Upgrade`s).
//!
//! Once the cell answers 101 and the client has received it, both connections stop being HTTP:
//! the proxy copies bytes both ways until either side closes. The tunnel stays with the cell
//! that answered, whatever routing tables are applied meanwhile. Tunnels are tracked by their
//! worker, so a graceful shutdown waits for them (up to the grace period) as it waits for
//! requests.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

/// Starts copying between the client and the cell once both sides have switched protocols.
pub fn spawn(tracker: &TaskTracker, client: OnUpgrade, cell: OnUpgrade, placement: Box<str>) {
    tracker.spawn(async move {
        let (client, cell) = tokio::join!(client, cell);
        let (client, cell) = match (client, cell) {
            (Ok(client), Ok(cell)) => (client, cell),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(%placement, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut cell = TokioIo::new(cell);
        match tokio::io::copy_bidirectional(&mut client, &mut cell).await {
            Ok((to_cell, to_client)) => {
                tracing::debug!(%placement, to_cell, to_client, "tunnel closed");
            }
            Err(e) => tracing::debug!(%placement, error = %e, "tunnel ended with an error"),
        }
    });
}
