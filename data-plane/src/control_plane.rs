//! The data plane's session with the control plane.
//!
//! One WebSocket at a time. After a [`Hello`] that names the RoutingConfig and the snapshot
//! already applied, every pushed snapshot goes to the [`crate::applier`] and is answered with an
//! ACK or a NACK. Both sides ping; when nothing at all arrives for the heartbeat timeout (a
//! silent partition: no FIN, no RST) the session is dropped and re-dialed.
//!
//! Reconnects back off exponentially (via backon), capped, with *full* jitter: each wait is a
//! uniform random fraction of the exponential step, so a fleet that lost its control plane at
//! the same instant does not come back at the same instant. The proxy keeps serving the active
//! table throughout; losing the control plane never changes routing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::{SinkExt, StreamExt};
use routing_model::protocol::{
    CAP_FULL_SNAPSHOT, CAP_GZIP, CAP_TOO_LARGE, ClientMessage, Hello, MissingReason, PROTOCOL_VERSION,
    SUBSCRIBE_PATH, ServerMessage,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::applier::ApplierHandle;
use crate::metrics::Metrics;
use crate::state::{SharedState, Source, unix_seconds};

/// How to reach and talk to the control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL, `ws://host:port` or `wss://host:port` (the subscribe path is appended).
    pub url: String,
    /// `namespace/name` of the RoutingConfig to serve.
    pub routing_config: String,
    /// This data plane's id (its pod name).
    pub id: String,
    /// Bearer token file, re-read on every connect (projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// How often to ping.
    pub heartbeat: Duration,
    /// Silence after which the session is considered dead.
    pub heartbeat_timeout: Duration,
    /// First reconnect step.
    pub backoff_min: Duration,
    /// Longest reconnect step.
    pub backoff_max: Duration,
    /// TLS settings for `wss://` (system roots plus any `--control-plane-ca`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why the TLS client settings could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot use --control-plane-ca {path}: {why}")]
pub struct CaError {
    path: String,
    why: String,
}

/// TLS client settings trusting the system's roots and, if given, the CAs in `ca_file`.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, CaError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let fail = |why: String| CaError {
            path: path.display().to_string(),
            why,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no certificate found".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError {
                path: String::new(),
                why: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot read the token file {0}: {1}")]
    Token(PathBuf, std::io::Error),
    #[error("invalid control-plane URL `{0}`: {1}")]
    Url(String, String),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("no message from the control plane for {0:?} (heartbeat timeout)")]
    Silent(Duration),
    #[error("the control plane closed the session: {0}")]
    Closed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Keeps a session with the control plane open until shutdown.
pub async fn run(
    settings: Settings,
    applier: ApplierHandle,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    state.update_sync(|s| {
        s.control_plane = Some(settings.url.clone());
        s.routing_config = Some(settings.routing_config.clone());
    });
    let backoff = ExponentialBuilder::new()
        .with_min_delay(settings.backoff_min)
        .with_max_delay(settings.backoff_max)
        .with_factor(2.0)
        .without_max_times();
    let mut steps = backoff.build();
    loop {
        let started = Instant::now();
        let ended = session(&settings, &applier, &state, &metrics, &shutdown).await;
        state.update_sync(|s| s.connected = false);
        metrics.control_plane_connected.set(0);
        if shutdown.is_cancelled() {
            return;
        }
        match ended {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(control_plane = %settings.url, error = %e, "control-plane session ended; serving the current table and reconnecting")
            }
        }
        // A session that lived a while was healthy: start the next wait from the bottom.
        if started.elapsed() > settings.backoff_max {
            steps = backoff.build();
        }
        let step = steps.next().unwrap_or(settings.backoff_max);
        let wait = step.mul_f64(rand::random::<f64>());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn session(
    settings: &Settings,
    applier: &ApplierHandle,
    state: &SharedState,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let url = format!("{}{SUBSCRIBE_PATH}", settings.url.trim_end_matches('/'));
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| SessionError::Url(settings.url.clone(), e.to_string()))?;
    if let Some(path) = &settings.token_file {
        let token = std::fs::read_to_string(path).map_err(|e| SessionError::Token(path.clone(), e))?;
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            SessionError::Url(
                settings.url.clone(),
                "the token is not a valid header value".into(),
            )
        })?;
        request.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_message_bytes))
        .max_frame_size(Some(settings.max_message_bytes))
        .read_buffer_size(64 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(settings.max_message_bytes + 64 * 1024);
    let connector = settings.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let connect = tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    let (ws, _) = tokio::time::timeout(settings.heartbeat_timeout, connect)
        .await
        .map_err(|_| SessionError::ConnectTimeout(settings.heartbeat_timeout))??;
    let (mut sink, mut stream) = ws.split();
    metrics.control_plane_sessions.inc();
    metrics.control_plane_connected.set(1);
    touch(state, metrics);
    state.update_sync(|s| s.connected = true);

    let applied = state.active.load().as_ref().and_then(|a| a.snapshot.clone());
    let hello = ClientMessage::Hello(Hello {
        data_plane: settings.id.clone(),
        routing_config: settings.routing_config.clone(),
        applied,
        protocol: PROTOCOL_VERSION,
        capabilities: vec![
            CAP_FULL_SNAPSHOT.to_owned(),
            CAP_GZIP.to_owned(),
            CAP_TOO_LARGE.to_owned(),
        ],
        max_message_bytes: Some(settings.max_message_bytes as u64),
    });
    sink.send(text(&hello)).await?;
    tracing::info!(control_plane = %settings.url, routing_config = %settings.routing_config, "connected to the control plane");

    let mut ping = tokio::time::interval(settings.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    // Snapshots applied outside a push reply (an operator releasing break-glass re-applies the
    // newest pushed one) are ACKed too, so the control plane's view does not go stale.
    let mut applied = state.applied_snapshots();
    let mut acked = applied.borrow_and_update().clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                return Ok(());
            }
            changed = applied.changed() => {
                let next = applied.borrow_and_update().clone();
                if changed.is_ok() && next.is_some() && next != acked {
                    acked = next.clone();
                    if let Some(snapshot) = next {
                        metrics.snapshot_acks.inc();
                        state.update_sync(|s| s.last_nack = None);
                        sink.send(text(&ClientMessage::Ack { snapshot })).await?;
                    }
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > settings.heartbeat_timeout {
                    return Err(SessionError::Silent(settings.heartbeat_timeout));
                }
                sink.send(Message::Ping(Default::default())).await?;
            }
            frame = stream.next() => {
                let Some(frame) = frame else {
                    return Err(SessionError::Closed("connection closed".into()));
                };
                last_seen = Instant::now();
                touch(state, metrics);
                let wire = match frame? {
                    Message::Text(body) => Wire::Text(body),
                    // Only snapshots are sent compressed, and only because we offered gzip.
                    Message::Binary(bytes) => Wire::Gzip(bytes),
                    Message::Close(frame) => {
                        let reason = frame.map_or_else(|| "no reason given".to_owned(), |f| format!("{} ({})", f.reason, f.code));
                        return Err(SessionError::Closed(reason));
                    }
                    // Pongs to our pings, and pings (tungstenite queues the pong itself).
                    _ => continue,
                };
                let message = decode(wire, settings.max_message_bytes).await?;
                if let Some(reply) = handle(message, applier, state, metrics).await? {
                    if let ClientMessage::Ack { snapshot } = &reply {
                        acked = Some(snapshot.clone());
                    }
                    sink.send(text(&reply)).await?;
                }
            }
        }
    }
}

/// A control-plane message as it arrived.
enum Wire {
    Text(tungstenite::Utf8Bytes),
    /// gzip-compressed JSON text (the `gzip` capability).
    Gzip(tungstenite::Bytes),
}

/// Decompresses and parses a message away from the async workers: a 100k-customer snapshot
/// takes tens of milliseconds, and proxied requests must not queue behind it.
async fn decode(wire: Wire, limit: usize) -> Result<ServerMessage, SessionError> {
    tokio::task::spawn_blocking(move || {
        let unpacked;
        let text = match &wire {
            Wire::Text(body) => body.as_str(),
            Wire::Gzip(bytes) => {
                unpacked = routing_model::compression::gunzip(bytes, limit)
                    .map_err(|e| SessionError::Protocol(e.to_string()))?;
                unpacked.as_str()
            }
        };
        serde_json::from_str(text).map_err(|e| SessionError::Protocol(format!("unreadable message: {e}")))
    })
    .await
    .map_err(|e| SessionError::Protocol(format!("decoding failed: {e}")))?
}

/// Handles one control-plane message; returns the reply to send, if any.
async fn handle(
    message: ServerMessage,
    applier: &ApplierHandle,
    state: &SharedState,
    metrics: &Metrics,
) -> Result<Option<ClientMessage>, SessionError> {
    match message {
        ServerMessage::Welcome(welcome) => {
            tracing::debug!(
                protocol = welcome.protocol,
                up_to_date = welcome.up_to_date,
                "welcomed by the control plane"
            );
            if welcome.up_to_date {
                set_orphaned(state, metrics, false);
            }
            Ok(None)
        }
        ServerMessage::Snapshot(snapshot) => {
            metrics.snapshots_received.inc();
            set_orphaned(state, metrics, false);
            let reference = snapshot.snapshot.clone();
            match applier
                .apply_snapshot(Arc::new(snapshot), Source::ControlPlane)
                .await
            {
                Ok(_) => {
                    metrics.snapshot_acks.inc();
                    Ok(Some(ClientMessage::Ack { snapshot: reference }))
                }
                Err(e) => {
                    metrics.snapshot_nacks.inc();
                    let error = e.to_string();
                    tracing::warn!(version = reference.version, %error, "refused a control-plane snapshot (NACK); the active table is unchanged");
                    state.update_sync(|s| {
                        s.last_nack = Some(format!("version {}: {error}", reference.version))
                    });
                    Ok(Some(ClientMessage::Nack {
                        snapshot: reference,
                        error,
                    }))
                }
            }
        }
        ServerMessage::Missing {
            routing_config,
            reason,
        } => {
            let why = match reason {
                MissingReason::Deleted => "was deleted",
                MissingReason::NotFound => "has no valid version on the control plane",
            };
            tracing::warn!(%routing_config, "the RoutingConfig {why}; keeping the last-known-good table (orphaned)");
            set_orphaned(state, metrics, true);
            Ok(None)
        }
        ServerMessage::Error { message } => Err(SessionError::Closed(message)),
        ServerMessage::TooLarge {
            snapshot,
            bytes,
            limit,
            ..
        } => {
            metrics.snapshots_received.inc();
            metrics.snapshot_nacks.inc();
            let error = format!(
                "snapshot version {} is {bytes} bytes, over this data plane's --max-message-bytes {limit}; not applied",
                snapshot.version
            );
            tracing::warn!(version = snapshot.version, %error, "refused a control-plane snapshot (NACK); the active table is unchanged");
            state.update_sync(|s| s.last_nack = Some(error.clone()));
            Ok(Some(ClientMessage::Nack { snapshot, error }))
        }
    }
}

fn set_orphaned(state: &SharedState, metrics: &Metrics, orphaned: bool) {
    state.update_sync(|s| s.orphaned = orphaned);
    metrics.orphaned.set(i64::from(orphaned));
}

fn touch(state: &SharedState, metrics: &Metrics) {
    let now = unix_seconds(SystemTime::now());
    metrics.control_plane_last_contact.set(now);
    state.update_sync(|s| s.last_contact = Some(now));
}

fn text(message: &ClientMessage) -> Message {
    // Serializing these plain structs cannot fail.
    Message::text(serde_json::to_string(message).expect("message serializes"))
}
