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
use std::time::Duration;

use crate::applier::{Applier, ApplierHandle, ApplierSettings, Limits};
use crate::cache::SnapshotCache;
use crate::cli::RunArgs;
use crate::control_plane;
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyContext};
use crate::source;
use crate::state::{SharedState, Source, Trigger};

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
    let workers = args.workers.unwrap_or_else(proxy::default_workers);
    let metrics = Metrics::with_workers(workers);
    let state = Arc::new(SharedState::default());

    let proxy_listener = proxy::Listeners::bind(args.listen, workers)
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on --admin-listen {}", args.admin_listen))?;

    let cache = match (&args.cache_dir, &args.routing_config) {
        (Some(dir), Some(object)) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create --cache-dir {}", dir.display()))?;
            Some(SnapshotCache::new(dir, object))
        }
        _ => None,
    };
    let applier = Applier::spawn(ApplierSettings {
        state: state.clone(),
        metrics: metrics.clone(),
        config_path: args.config.clone(),
        limits: Limits {
            parse: ParseLimits {
                max_bytes: args.max_config_bytes,
            },
            max_customers: args.max_customers,
        },
        cache: cache.clone(),
    });

    // Start order, so the control plane is never needed to serve: the last-known-good cache,
    // else the local file, else nothing (503 until a table arrives).
    let from_cache = match &cache {
        Some(cache) => load_cache(cache, &applier, &metrics).await,
        None => false,
    };
    let _watch = match &args.config {
        Some(path) => {
            if !from_cache && let Err(e) = applier.reload_file(Trigger::Startup).await {
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

    if let (Some(url), Some(object)) = (&args.control_plane, &args.routing_config) {
        let tls = if url.starts_with("wss://") {
            Some(control_plane::tls_config(args.control_plane_ca.as_deref())?)
        } else {
            None
        };
        let settings = control_plane::Settings {
            tls,
            url: url.clone(),
            routing_config: object.clone(),
            id: args.id.clone().unwrap_or_else(default_id),
            token_file: args.token_file.clone(),
            max_message_bytes: args.max_message_bytes,
            heartbeat: args.heartbeat,
            heartbeat_timeout: args.heartbeat_timeout,
            backoff_min: Duration::from_millis(100),
            backoff_max: args.reconnect_max,
        };
        tokio::spawn(control_plane::run(
            settings,
            applier.clone(),
            state.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }

    let ctx = Arc::new(ProxyContext::new(
        state.clone(),
        metrics.clone(),
        &proxy::Settings {
            upstream_timeout: args.upstream_timeout,
            connect_timeout: args.connect_timeout,
            upstream_ca: args.upstream_ca.clone(),
        },
    )?);
    let admin_router = admin::router(AdminState {
        state,
        applier,
        token,
        metrics,
        draining: draining.clone(),
    });

    tracing::info!(listener = "proxy", addr = %proxy_listener.local_addr(), workers, "listening");
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
    let proxy_task = proxy::start(proxy_listener, ctx, shutdown.clone(), args.shutdown_grace)
        .context("cannot start the proxy workers")?;

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

/// Applies the cached snapshot, if there is a good one; says whether it did.
async fn load_cache(cache: &SnapshotCache, applier: &ApplierHandle, metrics: &Metrics) -> bool {
    let path = cache.path().to_owned();
    let loaded = {
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || cache.load()).await
    };
    let snapshot = match loaded {
        Ok(Ok(Some(snapshot))) => snapshot,
        Ok(Ok(None)) => return false,
        Ok(Err(e)) => {
            metrics.cache_load_failures.inc();
            tracing::warn!(error = %e, "not using the last-known-good cache; falling back to --config");
            return false;
        }
        Err(e) => {
            metrics.cache_load_failures.inc();
            tracing::warn!(error = %e, "reading the cache failed; falling back to --config");
            return false;
        }
    };
    match applier.apply_snapshot(Arc::new(snapshot), Source::Cache).await {
        Ok(applied) => {
            tracing::info!(cache = %path.display(), generation = applied.generation, "serving the last-known-good snapshot from the cache");
            true
        }
        Err(e) => {
            metrics.cache_load_failures.inc();
            tracing::warn!(cache = %path.display(), error = %e, "the cached snapshot is not valid; falling back to --config");
            false
        }
    }
}

fn default_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| format!("data-plane-{}", std::process::id()))
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
