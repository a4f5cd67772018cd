//! Wiring of `control-plane run`, and its graceful shutdown.
//!
//! One `CancellationToken` stops the source (the controller or the file watch), the leader
//! election (releasing the lease) and the HTTP server. Signals are handled here rather than by
//! `Controller::shutdown_on_signal`, which would take SIGINT/SIGTERM over for the whole process.
//!
//! Shutdown is bounded by `--shutdown-timeout`: every step runs against one deadline, and a step
//! still waiting for an unreachable apiserver then is abandoned (its Lease expires on its own).
//! The runtime itself gets one more second to drop what is left.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use routing_model::ParseLimits;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::RunArgs;
use crate::http::debug_access::DebugAccess;
use crate::http::{self, HttpState};
use crate::leader::{self, LeaseSettings};
use crate::metrics::Metrics;
use crate::push::auth::Authenticator;
use crate::push::publisher::Publisher;
use crate::push::registry::Registry;
use crate::push::{PushSettings, PushState};
use crate::report::FIELD_MANAGER;
use crate::report::replicas::ReplicaSettings;
use crate::snapshot::SnapshotStore;
use crate::source::file::FileSource;
use crate::source::kubernetes::KubernetesSource;
use crate::source::{ConfigSource, Readiness, SourceContext};
use crate::status_key::{self, StatusKey};
use crate::tls::{Remote, ServeListener};

/// Runs the control plane until SIGTERM/SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("control-plane")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(args));
    // Tasks abandoned at the deadline (a request to an unreachable apiserver) must not hold the
    // exit: dropping the runtime would wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    // A bad --debug-token-file fails the start, not the first request.
    let debug = DebugAccess::new(args.debug_token_file.clone())?;
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let store = Arc::new(SnapshotStore::new(args.max_message_bytes));
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
            state_dir: args.state_dir.clone().or_else(default_state_dir),
        }),
        None => {
            let client = kube::Client::try_default().await.context(
                "cannot reach Kubernetes: run in a cluster, set KUBECONFIG, or serve a file with --from-file",
            )?;
            let identity = args.identity.clone().unwrap_or_else(default_identity);
            let key_secret = status_key::secret_name(&args.lease_name);
            let status_key = StatusKey::load_or_create(&client, &args.lease_namespace, &key_secret).await?;
            tracing::info!(secret = %format!("{}/{key_secret}", args.lease_namespace), key_id = status_key.id(), "status key loaded");
            // Half the budget each: release is the last step, and a hung one must leave time.
            let release_timeout = args.shutdown_timeout / 2;
            let (leading, task) = leader::elect(
                client.clone(),
                LeaseSettings {
                    namespace: args.lease_namespace.clone(),
                    name: args.lease_name.clone(),
                    identity: identity.clone(),
                    duration_secs: args.lease_duration,
                    release_timeout,
                    labels: Default::default(),
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
                        release_timeout,
                        labels: replica.lease_labels(),
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
                status_key: Arc::new(status_key),
            })
        }
    };
    let source_task = tokio::spawn(source.run(SourceContext {
        store: store.clone(),
        ready: ready.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    }));

    let inject_ready = args.inject_listen.is_some().then(Readiness::default);
    let inject_task = match (&inject_ready, &kube_client) {
        (Some(inject_ready), Some(client)) => Some(
            crate::inject::start(
                inject_settings(&args)?,
                client.clone(),
                metrics.clone(),
                inject_ready.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        (Some(_), None) => {
            anyhow::bail!("--inject-listen needs a cluster: it cannot be used with --from-file")
        }
        (None, _) => None,
    };
    let auth = authenticator(&args, kube_client, metrics.clone())?;
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
        ready: ready.clone(),
    };
    let router = http::router(HttpState {
        store,
        ready,
        inject_ready,
        metrics,
        push,
        debug,
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
    tracing::info!(timeout = ?args.shutdown_timeout, "shutting down");
    shutdown.cancel();
    let deadline = tokio::time::Instant::now() + args.shutdown_timeout;
    // axum's graceful shutdown does not wait for WebSocket sessions; they watch the same token.
    sessions.close();
    let sessions_closed = async {
        let bound = deadline.min(tokio::time::Instant::now() + Duration::from_secs(5));
        if tokio::time::timeout_at(bound, sessions.wait()).await.is_err() {
            tracing::warn!("some data-plane sessions did not close within 5s");
        }
    };
    // Every step runs at once against the one deadline.
    let (source_result, leader_done, own_lease_done, http_result, ()) = tokio::join!(
        bounded(deadline, "the RoutingConfig source", async {
            match source_result {
                Some(r) => r,
                None => (&mut source_task).await,
            }
        }),
        bounded(deadline, "the leader lease", join_opt(leader_task)),
        bounded(deadline, "the replica lease", join_opt(own_lease_task)),
        bounded(deadline, "the HTTP server", http_task),
        sessions_closed,
    );
    let _ = (leader_done, own_lease_done);
    source_task.abort();
    if let Some(result) = http_result {
        result
            .context("http task failed")?
            .context("http server failed")?;
    }
    if let Some(result) = source_result {
        result.context("source task failed")??;
    }
    if let Some(task) = inject_task
        && let Some(result) = bounded(deadline, "the injector", task).await
    {
        result
            .context("injector task failed")?
            .context("injector server failed")?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// `step` if it finishes by `deadline`; `None` (and a warning naming it) otherwise.
async fn bounded<T>(
    deadline: tokio::time::Instant,
    what: &str,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    match tokio::time::timeout_at(deadline, step).await {
        Ok(done) => Some(done),
        Err(_) => {
            tracing::warn!(
                step = what,
                "shutdown step did not finish within --shutdown-timeout; exiting without it"
            );
            None
        }
    }
}

async fn join_opt(task: Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = task {
        let _ = task.await;
    }
}

/// Picks how data planes authenticate: a static token file, TokenReview in a cluster, or (when
/// explicitly allowed) nobody.
fn authenticator(
    args: &RunArgs,
    client: Option<kube::Client>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Authenticator> {
    if args.allow_unauthenticated {
        tracing::warn!("--allow-unauthenticated: any client may subscribe to any RoutingConfig");
        return Ok(Authenticator::Anonymous);
    }
    if let Some(path) = &args.static_token_file {
        return Authenticator::from_file(path)
            .with_context(|| format!("cannot use --static-token-file {}", path.display()));
    }
    match client {
        Some(client) => Ok(Authenticator::token_review(
            client,
            args.allow_cross_namespace,
            metrics,
        )),
        None => anyhow::bail!(
            "data planes need a way to authenticate: pass --static-token-file FILE (or --allow-unauthenticated for a local demo)"
        ),
    }
}

/// The injector's settings from the `--inject-*` flags.
fn inject_settings(args: &RunArgs) -> anyhow::Result<crate::inject::Settings> {
    use crate::inject::{CertificateSettings, Settings};
    let certificate = match (
        &args.inject_tls_cert,
        &args.inject_tls_key,
        &args.inject_webhook_config,
        &args.inject_cert_secret,
    ) {
        (Some(cert), Some(key), _, _) => CertificateSettings::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, None, Some(webhook), Some(secret)) => {
            if args.inject_cert_dns_names.iter().all(|n| n.trim().is_empty()) {
                anyhow::bail!(
                    "--inject-cert-dns-names is empty: name the host the API server calls the injector by (the Service's DNS name)"
                );
            }
            CertificateSettings::Managed {
                namespace: args.lease_namespace.clone(),
                secret: secret.clone(),
                webhook: webhook.clone(),
                names: args
                    .inject_cert_dns_names
                    .iter()
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect(),
                validity: args.inject_cert_validity,
            }
        }
        _ => anyhow::bail!(
            "--inject-listen needs a serving certificate: --inject-webhook-config and --inject-cert-secret (the control plane makes it), or --inject-tls-cert and --inject-tls-key"
        ),
    };
    if args.inject_cert_validity < Duration::from_secs(10) {
        anyhow::bail!("--inject-cert-validity must be at least 10s");
    }
    Ok(Settings {
        listen: args.inject_listen.expect("checked by the caller"),
        config: args.inject_config.clone().expect("clap requires --inject-config"),
        certificate,
        check: args.inject_cert_check.max(Duration::from_millis(100)),
        // Sidecars outside the watched namespace could not subscribe to anything here, unless
        // cross-namespace subscriptions are allowed.
        watch_namespace: args.namespace.clone().filter(|_| !args.allow_cross_namespace),
        identity: args.identity.clone().unwrap_or_else(default_identity),
    })
}

/// Where file-mode versions are recorded without `--state-dir`: systemd's `StateDirectory=`,
/// else the XDG state directory.
fn default_state_dir() -> Option<std::path::PathBuf> {
    let env = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dirs) = env("STATE_DIRECTORY") {
        // systemd lists several directories separated by colons; the first is ours.
        let first = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return Some(first.into());
    }
    if let Some(xdg) = env("XDG_STATE_HOME") {
        return Some(std::path::PathBuf::from(xdg).join("cellroute"));
    }
    env("HOME").map(|home| std::path::PathBuf::from(home).join(".local/state/cellroute"))
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "control-plane".to_owned());
    format!("{host}-{}", std::process::id())
}
