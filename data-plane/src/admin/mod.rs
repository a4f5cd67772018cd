//! The admin server. It listens on `--admin-listen` (default `127.0.0.1:9901`), separate from
//! the proxy port, and serves:
//!
//! | endpoint | what it does |
//! |---|---|
//! | `GET /healthz` | liveness: 200 while the process runs |
//! | `GET /readyz` | 200 once a valid table is active; 503 before that and while draining |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//! | `GET /admin/config` | active generation, content hash, source, applied-at, spec, last error |
//! | `GET /admin/history` | the last 10 applied versions with a diff summary each |
//! | `POST /admin/reload` | re-read the `--config` file now (bearer token) |
//! | `POST /admin/rollback[?generation=N]` | re-apply the previous version, or version N (bearer token) |
//! | `POST /admin/source` | break-glass: `{"source":"file"}` pins the local file, `{"source":"control-plane"}` releases it (bearer token) |
//!
//! The POST endpoints need `Authorization: Bearer <token>` matching `--admin-token-file`; only
//! then is what they read parsed ([`request`]), and a bad body or query is a 400 naming the
//! field.
//! What names customers and endpoints (the `spec` of `/admin/config`, the `diff`s of
//! `/admin/history`, error texts that quote them) is shown only to a loopback peer or with the
//! admin token; anyone else who reaches the port gets the same documents without them.
//!
//! With `--health-listen`, [`health_router`] serves `GET /healthz` and `GET /readyz` alone on a
//! second address, so probes from outside the pod work while this port stays on loopback.
//!
//! Nothing here may change routing except through the [`crate::applier`].

pub mod auth;
pub mod request;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::applier::{Applied, ApplierHandle, ApplyError};
use crate::metrics::Metrics;
use crate::state::{SharedState, Trigger, unix_seconds};
use auth::AdminToken;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The active table and its history.
    pub state: Arc<SharedState>,
    /// Where changes go.
    pub applier: ApplierHandle,
    /// The admin token.
    pub token: AdminToken,
    /// All metrics.
    pub metrics: Arc<Metrics>,
    /// Set once shutdown begins, so readiness fails while draining.
    pub draining: Arc<AtomicBool>,
}

/// What replaces a text that would name customers or endpoints, for peers without access.
const REDACTED: &str = "(hidden: shown to loopback peers and with the admin token)";

impl AdminState {
    /// Whether this request may see customer ids, endpoints and error texts: from a loopback
    /// peer, or with the admin token.
    fn may_see_routes(&self, peer: SocketAddr, headers: &HeaderMap) -> bool {
        peer.ip().to_canonical().is_loopback() || self.token.check(headers).is_ok()
    }
}

/// The probe-only router of `--health-listen`: `GET /healthz` and `GET /readyz`, nothing else.
/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn health_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The admin router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`: what
/// it shows depends on the peer's address.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/config", get(config))
        .route("/admin/history", get(history))
        .route("/admin/reload", post(reload))
        .route("/admin/rollback", post(rollback))
        .route("/admin/source", post(source))
        .with_state(state)
}

async fn readyz(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "draining for shutdown"})),
        )
            .into_response();
    }
    match s.state.active.load().as_ref() {
        Some(active) => Json(json!({"ready": true, "config_generation": active.generation})).into_response(),
        None => {
            let reason = match s.state.last_error() {
                None => "no valid routing table has been applied yet".to_owned(),
                Some(e) if s.may_see_routes(peer, &headers) => {
                    format!(
                        "no valid routing table has been applied yet; last error: {}",
                        e.error
                    )
                }
                Some(_) => "no valid routing table has been applied yet; see last_error in GET /admin/config"
                    .to_owned(),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"ready": false, "reason": reason})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    if let Some(last) = s.state.sync().last_contact {
        let age = (unix_seconds(SystemTime::now()) - last).max(0.0);
        s.metrics.control_plane_contact_age.set(age);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn config(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let full = s.may_see_routes(peer, &headers);
    let mut last_error = s.state.last_error();
    if !full && let Some(e) = &mut last_error {
        REDACTED.clone_into(&mut e.error);
    }
    let active = s.state.active.load_full();
    let status = if active.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = match active {
        Some(active) => json!({
            "config_generation": active.generation,
            "hash": active.config.hash(),
            "source": active.source,
            "source_detail": active.source_detail,
            "applied_at": unix_seconds(active.applied_at),
            "customers": active.table.customers(),
            "placements": active.table.placements().len(),
            "warnings": active.config.warnings(),
            "spec": active.config.spec(),
            "snapshot": active.snapshot,
            "mode": s.state.mode(),
            "control_plane": control_plane_view(&s.state, full),
            "last_error": last_error,
        }),
        None => json!({
            "config_generation": 0,
            "hash": null,
            "source": null,
            "spec": null,
            "mode": s.state.mode(),
            "control_plane": control_plane_view(&s.state, full),
            "last_error": last_error,
        }),
    };
    if !full {
        body["spec"] = serde_json::Value::Null;
        body["redacted"] = json!(REDACTED);
    }
    (status, Json(body)).into_response()
}

fn control_plane_view(state: &SharedState, full: bool) -> serde_json::Value {
    let sync = state.sync();
    if sync.control_plane.is_none() {
        return serde_json::Value::Null;
    }
    let age = sync
        .last_contact
        .map(|t| (unix_seconds(SystemTime::now()) - t).max(0.0));
    json!({
        "url": sync.control_plane,
        "routing_config": sync.routing_config,
        "connected": sync.connected,
        "last_contact": sync.last_contact,
        "seconds_since_contact": age,
        "orphaned": sync.orphaned,
        "last_nack": if full { sync.last_nack } else { sync.last_nack.map(|_| REDACTED.to_owned()) },
    })
}

async fn history(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let mut entries = s.state.history();
    if s.may_see_routes(peer, &headers) {
        return Json(json!({"entries": entries})).into_response();
    }
    // The diffs name customers and endpoints; what changed when, and by how much, stays.
    for e in &mut entries {
        e.diff = None;
    }
    Json(json!({"entries": entries, "redacted": REDACTED})).into_response()
}

fn unauthorized(e: &auth::AuthError) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"status": "error", "message": format!("Authentication required: {e}")})),
    )
        .into_response()
}

fn now() -> u64 {
    unix_seconds(SystemTime::now()) as u64
}

async fn reload(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(e) = s.token.check(&headers) {
        return unauthorized(&e);
    }
    match s.applier.reload_file(Trigger::AdminReload).await {
        Ok(Applied {
            generation, changed, ..
        }) => Json(json!({
            "status": "success",
            "message": "Configuration reloaded successfully",
            "config_generation": generation,
            "changed": changed,
            "timestamp": now(),
        }))
        .into_response(),
        Err(e) => failure("Configuration reload failed", &e),
    }
}

async fn rollback(State(s): State<AdminState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    const FAILED: &str = "Configuration rollback failed";
    if let Err(e) = s.token.check(&headers) {
        return unauthorized(&e);
    }
    let generation = match request::rollback_query(query.as_deref()) {
        Ok(g) => g,
        Err(e) => return bad_request(FAILED, &e),
    };
    match s.applier.rollback(generation).await {
        Ok(Applied {
            generation,
            changed,
            rolled_back_to,
            ..
        }) => Json(json!({
            "status": "success",
            "message": "Configuration rolled back",
            "config_generation": generation,
            "rolled_back_to": rolled_back_to,
            "changed": changed,
            "timestamp": now(),
        }))
        .into_response(),
        Err(e) => failure(FAILED, &e),
    }
}

async fn source(State(s): State<AdminState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    const FAILED: &str = "Source switch failed";
    if let Err(e) = s.token.check(&headers) {
        return unauthorized(&e);
    }
    let source = match request::source_body(&body) {
        Ok(source) => source,
        Err(e) => return bad_request(FAILED, &e),
    };
    match s.applier.set_source(source).await {
        Ok(Applied {
            generation, changed, ..
        }) => Json(json!({
            "status": "success",
            "message": "Source switched",
            "mode": s.state.mode(),
            "config_generation": generation,
            "changed": changed,
            "timestamp": now(),
        }))
        .into_response(),
        Err(e) => failure(FAILED, &e),
    }
}

/// A request whose body or query does not parse; the error names the field.
fn bad_request(message: &str, e: &request::RequestError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"status": "error", "message": message, "error": e.to_string()})),
    )
        .into_response()
}

fn failure(message: &str, e: &ApplyError) -> Response {
    let status = match e {
        ApplyError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ApplyError::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ApplyError::Refused(_) | ApplyError::NoSnapshot => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    (
        status,
        Json(json!({"status": "error", "message": message, "error": e.to_string()})),
    )
        .into_response()
}
