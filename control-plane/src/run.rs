//! Wiring of `control-plane run`, and its graceful shutdown.
//!
//! One `CancellationToken` stops the source (the controller or the file watch), the leader
//! election (releasing the lease) and the HTTP server. Signals are handled here rather than by
//! `Controller::shutdown_on_signal`, which would take SIGINT/SIGTERM over for the whole process.

use std::sync::Arc;

use anyhow::Context as _;
use routing_model::ParseLimits;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::http::{self, HttpState};
use crate::leader::{self, LeaseSettings};
use crate::metrics::Metrics;
use crate::snapshot::SnapshotStore;
use crate::source::file::FileSource;
use crate::source::kubernetes::{FIELD_MANAGER, KubernetesSource};
use crate::source::{ConfigSource, Readiness, SourceContext};

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

    let mut leader_task = None;
    let source: Box<dyn ConfigSource> = match &args.from_file {
        Some(path) => Box::new(FileSource {
            path: path.clone(),
            debounce: args.reload_debounce,
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
            Box::new(KubernetesSource {
                client,
                namespace: args.namespace.clone(),
                leader: leading,
                reporter: format!("{FIELD_MANAGER}/{identity}"),
            })
        }
    };
    let source_task = tokio::spawn(source.run(SourceContext {
        store: store.clone(),
        ready: ready.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    }));

    let router = http::router(HttpState {
        store,
        ready,
        metrics,
    });
    tracing::info!(listener = "http", addr = %listener.local_addr()?, "listening");
    let http_task = {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
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
    http_task
        .await
        .context("http task failed")?
        .context("http server failed")?;
    source_result.context("source task failed")??;
    tracing::info!("stopped");
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "control-plane".to_owned());
    format!("{host}-{}", std::process::id())
}
