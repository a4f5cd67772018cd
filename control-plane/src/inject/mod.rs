//! The sidecar injector: a mutating admission webhook, on its own HTTPS listener
//! (`--inject-listen`), that adds the data-plane sidecar to pods that ask for it.
//!
//! - [`annotations`]: the annotations and labels users set (the contract);
//! - [`config`]: the sidecar's defaults, from the chart (`--inject-config`);
//! - [`sidecar`]: the container and volumes, as the chart's named templates render them;
//! - [`decide`]: inject, leave alone or refuse one pod, and the JSON patch;
//! - [`cert`]: the serving certificate (made and renewed by the control plane, or cert-manager's)
//!   and the webhook's `caBundle`;
//! - [`server`]: the AdmissionReview endpoints, metrics and Events.
//!
//! It never changes a pod that did not ask (through its annotation or its namespace's label),
//! and it never admits a pod that asked with a value it cannot honour: it refuses it, naming
//! the annotation.

pub mod annotations;
pub mod cert;
pub mod config;
pub mod decide;
pub mod server;
pub mod sidecar;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::runtime::events::{Recorder, Reporter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::source::Readiness;
use crate::tls::ServeListener;
use config::{NativeSidecar, SidecarConfig};
use decide::Injector;

/// Kubernetes minor version from which native sidecars are on by default.
pub const NATIVE_SIDECAR_MIN_MINOR: u32 = 29;

/// How the injector runs (from `control-plane run`'s `--inject-*` flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The HTTPS listener.
    pub listen: SocketAddr,
    /// The sidecar's defaults.
    pub config: PathBuf,
    /// The serving certificate's source (without the client, added by [`start`]).
    pub certificate: CertificateSettings,
    /// How often the certificate is checked.
    pub check: Duration,
    /// The only namespace injected, when the control plane watches one.
    pub watch_namespace: Option<String>,
    /// This replica's identity, for Events.
    pub identity: String,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum CertificateSettings {
    /// Made by the control plane.
    Managed {
        /// Namespace of the Secret.
        namespace: String,
        /// The Secret.
        secret: String,
        /// The MutatingWebhookConfiguration whose caBundle to keep.
        webhook: String,
        /// Names in the certificate.
        names: Vec<String>,
        /// Validity of each serving certificate.
        validity: Duration,
    },
    /// From PEM files.
    Files {
        /// The chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
}

/// Whether `native` asks for a native sidecar on the API server `client` talks to.
async fn native_sidecars(native: NativeSidecar, client: &kube::Client) -> bool {
    match native {
        NativeSidecar::True => true,
        NativeSidecar::False => false,
        NativeSidecar::Auto => match client.apiserver_version().await {
            Ok(info) => {
                let minor: u32 = info
                    .minor
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .unwrap_or(0);
                let native = info.major == "1" && minor >= NATIVE_SIDECAR_MIN_MINOR;
                tracing::info!(version = %info.git_version, native, "sidecar form chosen from the API server's version");
                native
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the API server's version; injecting plain sidecar containers");
                false
            }
        },
    }
}

/// Starts the injector: reads its configuration, binds its listener and starts serving (with
/// no certificate until the first one is set up: handshakes fail until then, and `ready` opens
/// once one is served and its CA published). Errors here stop the control plane, as a bad
/// `--listen` does; certificate problems do not (they are retried).
pub async fn start(
    settings: Settings,
    client: kube::Client,
    metrics: Arc<Metrics>,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let config = SidecarConfig::load(&settings.config)?;
    let native = native_sidecars(config.native_sidecar, &client).await;
    let tcp = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on --inject-listen {}", settings.listen))?;
    let resolver = Arc::new(cert::Resolver::default());
    let mut tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS setup")?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr = tcp.local_addr()?;
    let listener = ServeListener::with_config(tcp, Arc::new(tls))?;

    let source = match settings.certificate {
        CertificateSettings::Managed {
            namespace,
            secret,
            webhook,
            names,
            validity,
        } => cert::Source::Managed {
            client: client.clone(),
            namespace,
            secret,
            webhook,
            names,
            validity,
        },
        CertificateSettings::Files { cert, key } => cert::Source::Files { cert, key },
    };
    tokio::spawn(cert::keep(
        source,
        resolver,
        settings.check,
        metrics.clone(),
        ready,
        shutdown.clone(),
    ));

    let recorder = Recorder::new(
        client,
        Reporter {
            controller: crate::report::FIELD_MANAGER.to_owned(),
            instance: Some(settings.identity),
        },
    );
    let router = server::router(server::InjectState {
        injector: Arc::new(Injector {
            config,
            native,
            watch_namespace: settings.watch_namespace,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
        metrics,
        recorder: Some(recorder),
    });
    tracing::info!(listener = "inject", %addr, scheme = "https", native, "listening");
    Ok(tokio::spawn(async move {
        axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }))
}
