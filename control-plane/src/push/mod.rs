//! The snapshot push: data planes subscribe over WebSocket at `/v1/subscribe` and receive the
//! served snapshot of their RoutingConfig, then every newly accepted version.
//!
//! - [`auth`]: who a data plane is (static tokens or Kubernetes TokenReview) and what it may
//!   subscribe to;
//! - [`publisher`]: each snapshot encoded once, shared by every subscriber, latest-wins;
//! - [`session`]: one data plane's session, authenticated → hello → subscribed → closed;
//! - `routing_model::ledger`: what a session was sent, which its ACKs and NACKs must match;
//! - [`registry`]: what each data plane last reported, keyed by identity and id, for
//!   `/debug/dataplanes` and status.
//!
//! A slow data plane never delays the others: each session waits only on its own socket, keeps
//! at most one pending snapshot (the newest), and is dropped when a send does not complete in
//! time. Connections are capped, and the cap is checked before a token is reviewed, so a flood
//! of connections cannot turn into a flood of TokenReviews. What a data plane sends is bounded
//! by [`MAX_CLIENT_MESSAGE_BYTES`], whatever `--max-message-bytes` (the bound on what the
//! control plane sends) is.

pub mod auth;
pub mod publisher;
pub mod registry;
pub mod session;
pub mod updates;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use routing_model::protocol::MAX_CLIENT_MESSAGE_BYTES;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::tls::Remote;
use auth::Authenticator;
use publisher::Publisher;
use registry::Registry;

/// Limits and timings of the push.
#[derive(Debug, Clone, Copy)]
pub struct PushSettings {
    /// Largest message sent to a data plane (what a data plane sends is bounded by
    /// [`MAX_CLIENT_MESSAGE_BYTES`]).
    pub max_message_bytes: usize,
    /// How often both sides ping.
    pub heartbeat: Duration,
    /// Silence after which a session is dropped.
    pub heartbeat_timeout: Duration,
    /// Time allowed for one send before the data plane is considered stuck and dropped.
    pub send_timeout: Duration,
}

/// Everything the subscribe endpoint shares.
#[derive(Clone)]
pub struct PushState {
    /// Encoded snapshots per object.
    pub publisher: Arc<Publisher>,
    /// Per-data-plane reports.
    pub registry: Arc<Registry>,
    /// Who may connect.
    pub auth: Arc<Authenticator>,
    /// Connection cap.
    pub slots: Arc<Semaphore>,
    /// Limits and timings.
    pub settings: PushSettings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Sessions, so shutdown can wait for them (axum's graceful shutdown does not).
    pub sessions: TaskTracker,
    /// Fires on shutdown.
    pub shutdown: CancellationToken,
    /// Set once the source has loaded its initial state: before that every object would look
    /// missing, and a data plane told so would be marked orphaned and download its table again.
    pub ready: crate::source::Readiness,
}

/// `GET /v1/subscribe`: check the connection cap, authenticate, then upgrade. A missing or bad
/// token gets 401 before the upgrade, so no config byte reaches an unauthenticated client.
pub async fn subscribe(
    State(s): State<PushState>,
    ConnectInfo(Remote(remote)): ConnectInfo<Remote>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The cap first: a refused client costs no TokenReview.
    let Ok(slot) = s.slots.clone().try_acquire_owned() else {
        s.metrics.refused("too-many-connections");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "message": "too many data planes connected; retry later"})),
        )
            .into_response();
    };
    if !s.ready.is_ready() {
        s.metrics.refused("not-ready");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "message": "the control plane has not loaded its RoutingConfigs yet; retry later"})),
        )
            .into_response();
    }
    let identity = match s.auth.authenticate(&headers).await {
        Ok(identity) => identity,
        Err(e) => {
            s.metrics.refused("unauthenticated");
            tracing::info!(%remote, error = %e, "refused a data plane");
            return (
                StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"status": "error", "message": format!("Authentication required: {e}")})),
            )
                .into_response();
        }
    };
    let max = s.settings.max_message_bytes;
    upgrade
        // tungstenite zeroes up to this much before every read: sized for what data planes send
        // (ACKs of a few hundred bytes), not for what they receive.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max + 64 * 1024)
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let tracker = s.sessions.clone();
            tracker.track_future(async move {
                let metrics = s.metrics.clone();
                let peer = session::Authenticated { identity, remote };
                session::supervised(session::run(socket, peer, s), &metrics).await;
                drop(slot);
            })
        })
}
