//! The control plane's HTTP server on `--listen`. It serves:
//!
//! | endpoint | what it does |
//! |---|---|
//! | `GET /healthz` | liveness: 200 while the process runs |
//! | `GET /readyz` | 200 once the source has loaded its initial state (the first list, or the file) and, with the injector on, once the injector serves a certificate whose CA the API server trusts |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//! | `GET /debug/snapshots` | every served snapshot (object, lineage, version, hash) and the last rejection |
//! | `GET /debug/dataplanes` | every data plane: SYNCED / STALE / REJECTED / DISCONNECTED, like `istioctl proxy-status` |
//! | `GET /v1/subscribe` | the WebSocket snapshot push (bearer token; see `PROTOCOL.md`) |
//!
//! `/debug/*` is served to loopback peers, and to others only with the bearer token of
//! `--debug-token-file` (see [`debug_access`]).

pub mod debug_access;

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::Metrics;
use crate::push::{self, PushState};
use crate::snapshot::{ObjectKey, SnapshotStore};
use crate::source::Readiness;
use crate::tls::Remote;
use debug_access::DebugAccess;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The served snapshots.
    pub store: Arc<SnapshotStore>,
    /// Opens when the source is loaded.
    pub ready: Readiness,
    /// With the injector on: opens once it serves a certificate and its CA is published (a
    /// replica the API server cannot call must not receive the webhook Service's traffic).
    pub inject_ready: Option<Readiness>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The push endpoint's state.
    pub push: PushState,
    /// Who may read `/debug/*`.
    pub debug: DebugAccess,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    // `route_layer` guards the routes added before it: the debug endpoints only.
    Router::new()
        .route("/debug/snapshots", get(snapshots))
        .route("/debug/dataplanes", get(dataplanes))
        .route_layer(middleware::from_fn_with_state(state.clone(), debug_guard))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            routing_model::protocol::SUBSCRIBE_PATH,
            get(push::subscribe).with_state(state.push.clone()),
        )
        .with_state(state)
}

/// Refuses `/debug/*` to a non-loopback peer without the debug token: 403, saying how to get
/// access.
async fn debug_guard(
    State(s): State<HttpState>,
    ConnectInfo(Remote(peer)): ConnectInfo<Remote>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match s.debug.check(peer.ip(), &headers) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            s.metrics.debug_refused.inc();
            (
                StatusCode::FORBIDDEN,
                Json(json!({"status": "error", "message": refusal.to_string()})),
            )
                .into_response()
        }
    }
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let reason = if !s.ready.is_ready() {
        "the initial list of RoutingConfigs has not been loaded yet"
    } else if s.inject_ready.as_ref().is_some_and(|r| !r.is_ready()) {
        "the injector has no serving certificate the API server trusts yet (see the log)"
    } else {
        return Json(json!({"ready": true})).into_response();
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"ready": false, "reason": reason})),
    )
        .into_response()
}

async fn metrics(State(s): State<HttpState>) -> Response {
    refresh_data_plane_states(&s);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn snapshots(State(s): State<HttpState>) -> Response {
    let objects: Vec<_> = s
        .store
        .list()
        .into_iter()
        .map(|(key, state)| {
            json!({
                "object": key.to_string(),
                "served": state.served.as_ref().map(|snap| json!({
                    "lineage": snap.lineage,
                    "version": snap.version,
                    "hash": snap.hash,
                    "accepted_at": snap.accepted_at.duration_since(std::time::SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
                    "customers": snap.config.spec().customer_to_placement.len(),
                    "placements": snap.config.spec().placement_to_endpoint.len(),
                })),
                "rejection": state.rejection,
            })
        })
        .collect();
    Json(json!({"snapshots": objects})).into_response()
}

/// Sets `cellroute_data_planes{state}` from the registry, so alerts can fire on data planes
/// that are stale or rejecting.
fn refresh_data_plane_states(s: &HttpState) {
    use crate::metrics::StateLabels;
    use crate::push::registry::SyncState;
    let mut counts = std::collections::BTreeMap::<&str, i64>::new();
    for name in ["synced", "stale", "rejected", "orphaned", "disconnected"] {
        counts.insert(name, 0);
    }
    for record in s.push.registry.list() {
        let served = s.store.served_ref(&ObjectKey::parse(&record.routing_config));
        let state = match record.state(served.as_ref()) {
            SyncState::Synced => "synced",
            SyncState::Stale => "stale",
            SyncState::Rejected => "rejected",
            SyncState::Orphaned => "orphaned",
            SyncState::Disconnected => "disconnected",
        };
        *counts.entry(state).or_default() += 1;
    }
    for (state, n) in counts {
        s.metrics
            .data_planes
            .get_or_create(&StateLabels {
                state: state.to_owned(),
            })
            .set(n);
    }
}

async fn dataplanes(State(s): State<HttpState>) -> Response {
    let planes: Vec<_> = s
        .push
        .registry
        .list()
        .into_iter()
        .map(|record| {
            let served = s.store.served_ref(&ObjectKey::parse(&record.routing_config));
            json!({
                "id": record.id,
                "state": record.state(served.as_ref()),
                "routing_config": record.routing_config,
                "served": served,
                "record": record,
            })
        })
        .collect();
    Json(json!({"dataplanes": planes})).into_response()
}
