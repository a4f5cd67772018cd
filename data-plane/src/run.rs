//! Wiring of `data-plane run`, and its graceful shutdown.
//!
//! Start order: bind both listeners (so a taken port fails fast), apply the config file, start
//! watching it, then serve. On SIGTERM or SIGINT one `CancellationToken` stops everything:
//! readiness turns 503, the proxy stops accepting and drains in-flight requests for up to
//! `--shutdown-grace`, then the admin server stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use routing_model::ParseLimits;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, auth::AdminToken};
use crate::applier::Applier;
use crate::cli::RunArgs;
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyContext};
use crate::source;
use crate::state::{SharedState, Trigger};

/// Runs the data plane until SIGTERM/SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("data-plane")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let token = AdminToken::new(args.admin_token_file.clone())?;
    let shutdown = CancellationToken::new();
    let draining = Arc::new(AtomicBool::new(false));
    let metrics = Metrics::new();
    let state = Arc::new(SharedState::default());

    let proxy_listener = proxy::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on --admin-listen {}", args.admin_listen))?;

    let limits = ParseLimits {
        max_bytes: args.max_config_bytes,
    };
    let applier = Applier::spawn(state.clone(), metrics.clone(), args.config.clone(), limits);

    let _watch = match &args.config {
        Some(path) => {
            if let Err(e) = applier.reload_file(Trigger::Startup).await {
                tracing::warn!(error = %e, "no valid routing table at startup; answering 503 until a valid config arrives");
            }
            source::signal::reload_on_sighup(applier.clone(), shutdown.clone())
                .context("cannot install the SIGHUP handler")?;
            if args.no_watch {
                None
            } else {
                Some(source::reload_on_change(
                    path,
                    args.reload_debounce,
                    applier.clone(),
                    shutdown.clone(),
                )?)
            }
        }
        None => {
            tracing::warn!("started without --config: no routing table until one is applied");
            None
        }
    };

    let ctx = Arc::new(ProxyContext::new(
        state.clone(),
        metrics.clone(),
        args.upstream_timeout,
        args.connect_timeout,
    ));
    let admin_router = admin::router(AdminState {
        state,
        applier,
        token,
        metrics,
        draining: draining.clone(),
    });

    tracing::info!(listener = "proxy", addr = %proxy_listener.local_addr()?, "listening");
    tracing::info!(listener = "admin", addr = %admin_listener.local_addr()?, "listening");

    let admin_stop = CancellationToken::new();
    let admin_task = {
        let stop = admin_stop.clone();
        tokio::spawn(async move {
            axum::serve(admin_listener, admin_router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    let proxy_task = tokio::spawn(proxy::serve(
        proxy_listener,
        ctx,
        shutdown.clone(),
        args.shutdown_grace,
    ));

    wait_for_signal().await?;
    tracing::info!("shutdown requested");
    draining.store(true, Ordering::Relaxed);
    shutdown.cancel();
    proxy_task.await.context("proxy task failed")?;
    admin_stop.cancel();
    admin_task
        .await
        .context("admin task failed")?
        .context("admin server failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
