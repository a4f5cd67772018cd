//! Wiring of `control-plane run`, and its graceful shutdown.
//!
//! One `CancellationToken` stops the source (the controller or the file watch), the leader
//! election (releasing the lease) and the HTTP server. Signals are handled here rather than by
//! `Controller::shutdown_on_signal`, which would take SIGINT/SIGTERM over for the whole process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use routing_model::ParseLimits;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::RunArgs;
use crate::http::{self, HttpState};
use crate::leader::{self, LeaseSettings};
use crate::metrics::Metrics;
use crate::push::auth::Authenticator;
use crate::push::publisher::Publisher;
use crate::push::registry::Registry;
use crate::push::{PushSettings, PushState};
use crate::snapshot::SnapshotStore;
use crate::source::file::FileSource;
use crate::source::kubernetes::{FIELD_MANAGER, KubernetesSource};
use crate::source::replicas::ReplicaSettings;
use crate::source::{ConfigSource, Readiness, SourceContext};
use crate::tls::{Remote, ServeListener};

/// Runs the control plane until SIGTERM/SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("control-plane")
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let store = Arc::new(SnapshotStore::default());
    let ready = Readiness::default();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;

    let registry = Arc::new(Registry::default());
    let mut leader_task = None;
    let mut own_lease_task = None;
    let mut kube_client = None;
    let source: Box<dyn ConfigSource> = match &args.from_file {
        Some(path) => Box::new(FileSource {
            path: path.clone(),
            debounce: args.reload_debounce,
            max_wait: args.reload_max_wait,
            limits: ParseLimits {
                max_bytes: args.max_config_bytes,
            },
        }),
        None => {
            let client = kube::Client::try_default().await.context(
                "cannot reach Kubernetes: run in a cluster, set KUBECONFIG, or serve a file with --from-file",
            )?;
            let identity = args.identity.clone().unwrap_or_else(default_identity);
            let (leading, task) = leader::elect(
                client.clone(),
                LeaseSettings {
                    namespace: args.lease_namespace.clone(),
                    name: args.lease_name.clone(),
                    identity: identity.clone(),
                    duration_secs: args.lease_duration,
                },
                metrics.clone(),
                shutdown.clone(),
            )
            .await
            .context("cannot start leader election")?;
            leader_task = Some(task);
            kube_client = Some(client.clone());
            let replica = ReplicaSettings {
                identity: identity.clone(),
                lease_namespace: args.lease_namespace.clone(),
                lease_name: args.lease_name.clone(),
                lease_duration: args.lease_duration,
            };
            own_lease_task = Some(
                leader::hold_own(
                    client.clone(),
                    LeaseSettings {
                        namespace: args.lease_namespace.clone(),
                        name: replica.lease_of(&identity),
                        identity: identity.clone(),
                        duration_secs: args.lease_duration,
                    },
                    shutdown.clone(),
                )
                .await
                .context("cannot take this replica's own Lease")?,
            );
            Box::new(KubernetesSource {
                client,
                namespace: args.namespace.clone(),
                leader: leading,
                reporter: format!("{FIELD_MANAGER}/{identity}"),
                registry: registry.clone(),
                replica,
            })
        }
    };
    let source_task = tokio::spawn(source.run(SourceContext {
        store: store.clone(),
        ready: ready.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    }));

    let auth = authenticator(&args, kube_client)?;
    let publisher = Publisher::new(store.clone(), metrics.clone());
    tokio::spawn(publisher.clone().run(shutdown.clone()));
    let sessions = TaskTracker::new();
    let push = PushState {
        publisher,
        registry,
        auth: Arc::new(auth),
        slots: Arc::new(Semaphore::new(args.max_connections)),
        settings: PushSettings {
            max_message_bytes: args.max_message_bytes,
            heartbeat: args.heartbeat,
            heartbeat_timeout: args.heartbeat_timeout,
            send_timeout: args.send_timeout,
        },
        metrics: metrics.clone(),
        sessions: sessions.clone(),
        shutdown: shutdown.clone(),
    };
    let router = http::router(HttpState {
        store,
        ready,
        metrics,
        push,
    });
    let addr = listener.local_addr()?;
    let listener = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => ServeListener::tls(listener, cert, key)?,
        _ => ServeListener::Plain(listener),
    };
    let scheme = if matches!(listener, ServeListener::Tls { .. }) {
        "https"
    } else {
        "http"
    };
    tracing::info!(listener = "http", %addr, scheme, "listening");
    let http_task = {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<Remote>())
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut source_task = source_task;
    let source_result = tokio::select! {
        _ = term.recv() => None,
        _ = int.recv() => None,
        result = &mut source_task => Some(result),
    };
    tracing::info!("shutting down");
    shutdown.cancel();
    let source_result = match source_result {
        Some(r) => r,
        None => source_task.await,
    };
    if let Some(task) = leader_task {
        let _ = task.await;
    }
    if let Some(task) = own_lease_task {
        let _ = task.await;
    }
    // axum's graceful shutdown does not wait for WebSocket sessions; they watch the same token.
    sessions.close();
    if tokio::time::timeout(Duration::from_secs(5), sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some data-plane sessions did not close within 5s");
    }
    http_task
        .await
        .context("http task failed")?
        .context("http server failed")?;
    source_result.context("source task failed")??;
    tracing::info!("stopped");
    Ok(())
}

/// Picks how data planes authenticate: a static token file, TokenReview in a cluster, or (when
/// explicitly allowed) nobody.
fn authenticator(args: &RunArgs, client: Option<kube::Client>) -> anyhow::Result<Authenticator> {
    if args.allow_unauthenticated {
        tracing::warn!("--allow-unauthenticated: any client may subscribe to any RoutingConfig");
        return Ok(Authenticator::Anonymous);
    }
    if let Some(path) = &args.static_token_file {
        return Authenticator::from_file(path)
            .with_context(|| format!("cannot use --static-token-file {}", path.display()));
    }
    match client {
        Some(client) => Ok(Authenticator::TokenReview {
            client,
            cross_namespace: args.allow_cross_namespace,
        }),
        None => anyhow::bail!(
            "data planes need a way to authenticate: pass --static-token-file FILE (or --allow-unauthenticated for a local demo)"
        ),
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "control-plane".to_owned());
    format!("{host}-{}", std::process::id())
}
