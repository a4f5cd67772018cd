//! The request path.
//!
//! Serving model: one worker per core (`--workers`), each an OS thread with its own
//! current-thread tokio runtime, its own listening socket on the proxy address
//! (`SO_REUSEPORT`, [`listen`]), its own connections to the cells and its own metric shards.
//! A client connection, its requests and the upstream connections serving them stay on one
//! thread, as in nginx's worker model: no work stealing, no cross-core wake-ups, no shared
//! pool lock. The one thing every worker reads is the routing table's `ArcSwap`.
//!
//! Per request: one `ArcSwap` load of the active table, one hash probe for the customer, then
//! forwarding on one of the worker's upstream connections. Nothing on this path depends on the
//! size of the table. Clients speak HTTP/1.0, HTTP/1.1 or HTTP/2 (prior knowledge); cells get
//! what their endpoint's scheme says (`http`, `h2c`, `https` with ALPN). Upgrades (WebSocket)
//! are tunnelled ([`tunnel`]).
//!
//! Shutdown: every worker stops accepting at once, then drains its connections and tunnels for
//! at most the grace period.

mod errors;
mod handler;
mod headers;
mod listen;
mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use handler::{ProxyBody, ProxyContext, Settings, Worker};
pub use listen::Listeners;

/// How often a worker closes upstream connections that sat idle too long.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Workers when `--workers` is not given: the CPUs this process may run on (its affinity mask
/// and cgroup quota), at least one.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Starts one worker thread per listener. The returned task (on the caller's runtime) ends when
/// every worker has stopped: after `shutdown` fires and each has drained for at most `grace`.
pub fn start(
    listeners: Listeners,
    ctx: Arc<ProxyContext>,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut done = Vec::new();
    for (index, socket) in listeners.into_sockets().into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let worker = Arc::new(Worker::new(index, ctx.clone()));
        let shutdown = shutdown.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("proxy-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => serve(listener, worker, shutdown, grace).await,
                        Err(e) => tracing::error!(worker = index, error = %e, "cannot use the proxy socket"),
                    }
                });
                // Dropping the runtime closes whatever outlived the grace period.
                drop(runtime);
                let _ = tx.send(());
            })?;
        done.push(rx);
    }
    Ok(tokio::spawn(async move {
        for rx in done {
            let _ = rx.await;
        }
    }))
}

/// One worker: accepts on its own socket until `shutdown` fires, then drains for at most
/// `grace`.
async fn serve(listener: TcpListener, worker: Arc<Worker>, shutdown: CancellationToken, grace: Duration) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let sweeper = {
        let worker = worker.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = every.tick() => worker.pools.sweep(),
                }
            }
        })
    };
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let peer = Arc::new(headers::Peer::new(remote));
        let worker_for_conn = worker.clone();
        let service = service_fn(move |req| handler::handle(req, worker_for_conn.clone(), peer.clone()));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    sweeper.abort();
    worker.tunnels.close();
    tracing::info!(worker = worker.index, grace = ?grace, "proxy stopped accepting; draining in-flight requests");
    let drained = async {
        tokio::join!(graceful.shutdown(), worker.tunnels.wait());
    };
    tokio::select! {
        () = drained => tracing::info!(worker = worker.index, "all proxy connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(worker = worker.index, "grace period over; closing remaining connections"),
    }
}
