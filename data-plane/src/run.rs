//! Wiring of `data-plane run`, and its graceful shutdown.
//!
//! Start order: bind every listener (so a taken port fails fast), install the SIGHUP handler,
//! apply the cache or the config file, start watching it, then serve. On SIGTERM or SIGINT:
//! readiness turns 503 at once; the proxy keeps accepting and serving for `--shutdown-delay`
//! (the application may still be draining through it; a second signal cuts the delay short);
//! then one `CancellationToken` stops the proxy, which drains in-flight requests for up to
//! `--shutdown-grace`; then the admin and health servers stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use routing_model::ParseLimits;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, auth::AdminToken};
use crate::applier::{Applier, ApplierHandle, ApplierSettings, Limits};
use crate::cache::SnapshotCache;
use crate::cli::RunArgs;
use crate::control_plane;
use crate::identity;
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
    // Before anything slow, so that a signal during startup is handled, not fatal (SIGHUP's
    // default action would end the process).
    let hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let mut signals = Signals::install()?;

    let proxy_listener = proxy::Listeners::bind(args.listen, workers)
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on --admin-listen {}", args.admin_listen))?;
    let health_listener = match args.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --health-listen {addr}"))?,
        ),
        None => None,
    };

    let cache = match (&args.cache_dir, &args.routing_config) {
        (Some(dir), Some(object)) => {
            Some(SnapshotCache::open(dir, object)?.with_max_message_bytes(args.max_message_bytes))
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
    source::signal::reload_on_sighup(hangup, applier.clone(), args.config.is_some(), shutdown.clone());

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
            if args.no_watch {
                None
            } else {
                let debounce = config_watch::Debounce {
                    quiet: args.reload_debounce,
                    max_wait: args.reload_max_wait,
                };
                Some(source::reload_on_change(
                    path,
                    debounce,
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
            id: args.id.clone().unwrap_or_else(identity::default_id),
            token_file: args.token_file.clone(),
            max_message_bytes: args.max_message_bytes,
            heartbeat: args.heartbeat,
            heartbeat_timeout: args.heartbeat_timeout,
            backoff_min: Duration::from_millis(100),
            backoff_max: args.reconnect_max,
        };
        tracing::info!(id = %settings.id, "following the control plane as this data plane id");
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
    let admin_state = AdminState {
        state,
        applier,
        token,
        metrics,
        draining: draining.clone(),
    };

    tracing::info!(listener = "proxy", addr = %proxy_listener.local_addr(), workers, "listening");
    tracing::info!(listener = "admin", addr = %admin_listener.local_addr()?, "listening");
    let admin_stop = CancellationToken::new();
    let mut servers = vec![spawn_server(
        "admin",
        admin_listener,
        admin::router(admin_state.clone()),
        admin_stop.clone(),
    )];
    if let Some(listener) = health_listener {
        tracing::info!(listener = "health", addr = %listener.local_addr()?, "listening");
        servers.push(spawn_server(
            "health",
            listener,
            admin::health_router(admin_state),
            admin_stop.clone(),
        ));
    }
    let proxy_task = proxy::start(proxy_listener, ctx, shutdown.clone(), args.shutdown_grace)
        .context("cannot start the proxy workers")?;

    signals.next().await;
    draining.store(true, Ordering::Relaxed);
    if args.shutdown_delay.is_zero() {
        tracing::info!("shutdown requested");
    } else {
        tracing::info!(delay = ?args.shutdown_delay, "shutdown requested; not ready any more, still proxying for --shutdown-delay");
        tokio::select! {
            () = tokio::time::sleep(args.shutdown_delay) => {}
            () = signals.next() => tracing::info!("second signal: ending the shutdown delay early"),
        }
    }
    shutdown.cancel();
    proxy_task.await.context("proxy task failed")?;
    admin_stop.cancel();
    for server in servers {
        server.await.context("admin task failed")??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves `router` on `listener` until `stop`, with each request's peer address available.
fn spawn_server(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .with_context(|| format!("the {name} server failed"))
    })
}

/// SIGTERM and SIGINT, installed once.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Applies the cached snapshot, if there is a good one; says whether it did.
async fn load_cache(cache: &SnapshotCache, applier: &ApplierHandle, metrics: &Metrics) -> bool {
    let path = cache.path().to_owned();
    let loaded = {
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || cache.load()).await
    };
    let snapshot = match loaded {
        Ok(Ok(Some(cached))) => cached.message,
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
