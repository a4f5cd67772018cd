//! The data plane's session with the control plane.
//!
//! One WebSocket at a time. After a [`Hello`] that names the RoutingConfig and the snapshot
//! already applied, every pushed snapshot goes to the [`crate::applier`] and is answered with an
//! ACK or a NACK. Both sides ping; when nothing at all arrives for the heartbeat timeout (a
//! silent partition: no FIN, no RST) the session is dropped and re-dialed.
//!
//! Decoding and applying a large snapshot take a while (seconds for hundreds of thousands of
//! customers), and the session must keep heartbeating meanwhile, or either side would drop a
//! healthy session. So both run beside the session loop, never inside it: one decode at a time
//! on a blocking thread (the next frame is read once it is done), and one apply at a time in the
//! applier. Snapshots still apply in the order they arrived, and the newest wins: while one is
//! applying, at most one more waits; a newer one replaces it, and the replaced one is answered
//! with a NACK saying it was superseded, so every pushed snapshot gets its answer. Answers leave
//! in the order their messages arrived; [`answers`] decides when each is sent. NACK texts are
//! cut to [`MAX_NACK_ERROR_BYTES`].
//!
//! When an operator pins the local file (break-glass), the control plane's version is no longer
//! what this data plane serves; the session then starts over, so its hello tells the control
//! plane the truth (and the control plane's next snapshot is NACKed as pinned).
//!
//! Reconnects back off exponentially (via backon), capped, with *full* jitter: each wait is a
//! uniform random fraction of the exponential step, so a fleet that lost its control plane at
//! the same instant does not come back at the same instant. The proxy keeps serving the active
//! table throughout; losing the control plane never changes routing.

pub mod answers;
pub mod health;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::{SinkExt, StreamExt};
use routing_model::protocol::{
    CAP_DELTA, CAP_FULL_SNAPSHOT, CAP_GZIP, CAP_HEALTH, CAP_TOO_LARGE, ClientMessage, Hello,
    MAX_NACK_ERROR_BYTES, MissingReason, PROTOCOL_VERSION, SUBSCRIBE_PATH, ServerMessage, SnapshotRef,
    truncate,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::applier::{Applied, ApplierHandle, ApplyError};
use crate::metrics::Metrics;
use crate::state::{SharedState, Source, unix_seconds};
use crate::tls;
pub use crate::tls::CaError;
use answers::{Answers, Arrival, Push};

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

/// TLS client settings trusting the system's roots and, if given, the CAs in `ca_file`.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, CaError> {
    const FLAG: &str = "--control-plane-ca";
    Ok(Arc::new(tls::client_config(
        FLAG,
        tls::root_store(FLAG, ca_file)?,
    )?))
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
    #[error(
        "the control plane's snapshot is no longer active here (break-glass); starting over so the control plane learns it"
    )]
    Withdrawn,
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
            Err(SessionError::Withdrawn) => {
                tracing::info!(control_plane = %settings.url, "{}", SessionError::Withdrawn);
                continue;
            }
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
    let activity = Activity::new();
    let connect = async {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(tungstenite::Error::Io)?;
        // A snapshot's last segment must not wait for a delayed ACK.
        tcp.set_nodelay(true).map_err(tungstenite::Error::Io)?;
        let watched = Watched {
            inner: tcp,
            activity: activity.clone(),
        };
        tokio_tungstenite::client_async_tls_with_config(request, watched, Some(config), connector).await
    };
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
            CAP_DELTA.to_owned(),
            CAP_HEALTH.to_owned(),
        ],
        max_message_bytes: Some(settings.max_message_bytes as u64),
    });
    sink.send(text(&hello)).await?;
    tracing::info!(control_plane = %settings.url, routing_config = %settings.routing_config, "connected to the control plane");

    let mut ping = tokio::time::interval(settings.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Snapshots applied outside a push reply (an operator releasing break-glass re-applies the
    // newest pushed one) are ACKed too, so the control plane's view does not go stale.
    let mut applied = state.applied_snapshots();
    let mut answers = Answers::new(applied.borrow_and_update().clone());
    let mut decoding: Option<tokio::task::JoinHandle<Result<ServerMessage, SessionError>>> = None;
    let mut applying: Option<Applying> = None;
    // Health reports, once the welcome says the control plane takes them.
    let mut reporting = false;
    let mut reports = health::Reports::default();
    let mut report_tick = tokio::time::interval(health::INTERVAL);
    report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                return Ok(());
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let next = applied.borrow_and_update().clone();
                match next {
                    // Withdrawn: the hello of a new session tells the control plane the truth.
                    None if answers.acked().is_some() => {
                        let _ = sink.send(Message::Close(None)).await;
                        return Err(SessionError::Withdrawn);
                    }
                    Some(snapshot) => {
                        if let Some(ack) = answers.reapplied(snapshot) {
                            metrics.snapshot_acks.inc();
                            state.update_sync(|s| s.last_nack = None);
                            sink.send(text(&ack)).await?;
                        }
                    }
                    None => {}
                }
            }
            _ = report_tick.tick(), if reporting => {
                let active = state.active.load().as_ref().and_then(|a| a.snapshot.clone());
                if let Some(report) = reports.next(active, metrics.request_health()) {
                    sink.send(text(&report)).await?;
                }
            }
            _ = ping.tick() => {
                // Any byte from the control plane is a sign of life: a large snapshot can take
                // longer to arrive than the timeout. While a message is being decoded nothing is
                // read, so silence then is not a sign.
                if decoding.is_none() && activity.quiet_for() > settings.heartbeat_timeout {
                    return Err(SessionError::Silent(settings.heartbeat_timeout));
                }
                sink.send(Message::Ping(Default::default())).await?;
            }
            frame = stream.next(), if decoding.is_none() => {
                let Some(frame) = frame else {
                    return Err(SessionError::Closed("connection closed".into()));
                };
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
                decoding = Some(decode(wire, settings.max_message_bytes));
            }
            decoded = join(decoding.as_mut()) => {
                decoding = None;
                activity.touch();
                let decoded = decoded.map_err(|e| SessionError::Protocol(format!("decoding failed: {e}")))?;
                match decoded? {
                    message @ (ServerMessage::Snapshot(_) | ServerMessage::Delta(_)) => {
                        metrics.snapshots_received.inc();
                        set_orphaned(state, metrics, false);
                        let push = match message {
                            ServerMessage::Delta(delta) => {
                                metrics.deltas_received.inc();
                                Push::Delta(delta)
                            }
                            ServerMessage::Snapshot(snapshot) => Push::Full(snapshot),
                            _ => unreachable!("matched above"),
                        };
                        match answers.snapshot(push) {
                            Arrival::Apply(snapshot) => applying = Some(Applying::start(snapshot, applier)),
                            Arrival::Waits => {}
                            Arrival::Replaced { older, newer } => {
                                metrics.snapshots_superseded.inc();
                                tracing::info!(
                                    version = older.version,
                                    newer,
                                    "skipped a control-plane snapshot a newer one replaced"
                                );
                            }
                        }
                    }
                    message => {
                        if let ServerMessage::Welcome(welcome) = &message {
                            reporting = welcome.capabilities.iter().any(|c| c == CAP_HEALTH);
                        }
                        // A too-large notice's NACK, sent once everything before it is answered.
                        if let Some(reply) = handle(message, state, metrics)?
                            && let Some(reply) = answers.refuse(reply)
                        {
                            sink.send(text(&reply)).await?;
                        }
                    }
                }
            }
            result = join(applying.as_mut().map(|a| &mut a.task)) => {
                let snapshot = applying.take().map(|a| a.snapshot).expect("an apply was running");
                let result = result.unwrap_or_else(|e| Err(ApplyError::Panicked(e.to_string())));
                let (due, next) = answers.finished(answer(snapshot, result, state, metrics));
                for reply in &due {
                    sink.send(text(reply)).await?;
                }
                if let Some(next) = next {
                    applying = Some(Applying::start(next, applier));
                }
            }
        }
    }
}

/// When bytes last arrived from the control plane.
#[derive(Debug, Clone)]
struct Activity {
    base: Instant,
    /// Milliseconds since `base`.
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last.fetch_max(now, AtomicOrdering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(AtomicOrdering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// The connection to the control plane, noting every read that brought bytes.
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A pushed snapshot being applied, beside the session loop.
struct Applying {
    snapshot: SnapshotRef,
    task: tokio::task::JoinHandle<Result<Applied, ApplyError>>,
}

impl Applying {
    fn start(push: Push, applier: &ApplierHandle) -> Self {
        let reference = push.snapshot().clone();
        let applier = applier.clone();
        Self {
            snapshot: reference,
            task: tokio::spawn(async move {
                match push {
                    Push::Full(snapshot) => {
                        applier
                            .apply_snapshot(Arc::new(snapshot), Source::ControlPlane)
                            .await
                    }
                    Push::Delta(delta) => applier.apply_delta(Arc::new(delta)).await,
                }
            }),
        }
    }
}

/// Waits for the task in `slot`, or forever when there is none (a disabled `select!` branch).
async fn join<T>(slot: Option<&mut tokio::task::JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match slot {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// A control-plane message as it arrived.
enum Wire {
    Text(tungstenite::Utf8Bytes),
    /// gzip-compressed JSON text (the `gzip` capability).
    Gzip(tungstenite::Bytes),
}

/// Decompresses and parses a message away from the async workers: a 100k-customer snapshot
/// takes tens of milliseconds, and neither proxied requests nor the heartbeat may queue behind it.
fn decode(wire: Wire, limit: usize) -> tokio::task::JoinHandle<Result<ServerMessage, SessionError>> {
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
}

/// The answer to an applied (or refused) push.
fn answer(
    snapshot: SnapshotRef,
    result: Result<Applied, ApplyError>,
    state: &SharedState,
    metrics: &Metrics,
) -> ClientMessage {
    match result {
        Ok(_) => {
            metrics.snapshot_acks.inc();
            state.update_sync(|s| s.last_nack = None);
            ClientMessage::Ack { snapshot }
        }
        Err(e) => nack(snapshot, &e.to_string(), e.wants_full_snapshot(), state, metrics),
    }
}

/// A NACK of `snapshot`, its text cut to what the protocol allows, counted and remembered.
fn nack(
    snapshot: SnapshotRef,
    error: &str,
    resync: bool,
    state: &SharedState,
    metrics: &Metrics,
) -> ClientMessage {
    metrics.snapshot_nacks.inc();
    let error = bounded(error);
    tracing::warn!(version = snapshot.version, %error, "refused a control-plane snapshot (NACK); the active table is unchanged");
    state.update_sync(|s| s.last_nack = Some(format!("version {}: {error}", snapshot.version)));
    ClientMessage::Nack {
        snapshot,
        error,
        resync,
    }
}

/// `error` cut to [`MAX_NACK_ERROR_BYTES`], the `…` that marks the cut included.
fn bounded(error: &str) -> String {
    truncate(error, MAX_NACK_ERROR_BYTES - '…'.len_utf8())
}

/// Handles one control-plane message other than a snapshot; returns the reply to send, if any.
fn handle(
    message: ServerMessage,
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
        // Applied beside the session loop; see `session`.
        ServerMessage::Snapshot(_) | ServerMessage::Delta(_) => Ok(None),
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
        ServerMessage::Error { message } => {
            Err(SessionError::Closed(truncate(&message, MAX_NACK_ERROR_BYTES)))
        }
        ServerMessage::TooLarge {
            snapshot,
            bytes,
            limit,
            ..
        } => {
            metrics.snapshots_received.inc();
            let error = format!(
                "snapshot version {} is {bytes} bytes, over this data plane's --max-message-bytes {limit}; not applied",
                snapshot.version
            );
            Ok(Some(nack(snapshot, &error, false, state, metrics)))
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
