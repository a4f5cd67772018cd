//! The control plane's HTTP server on `--listen`. It serves:
//!
//! | endpoint | what it does |
//! |---|---|
//! | `GET /healthz` | liveness: 200 while the process runs |
//! | `GET /readyz` | 200 once the source has loaded its initial state (the first list, or the file) |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//! | `GET /debug/snapshots` | every served snapshot (object, lineage, version, hash) and the last rejection |
//!
//! The snapshot push to data planes (WebSocket) will share this server.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::Metrics;
use crate::snapshot::SnapshotStore;
use crate::source::Readiness;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The served snapshots.
    pub store: Arc<SnapshotStore>,
    /// Opens when the source is loaded.
    pub ready: Readiness,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/snapshots", get(snapshots))
        .with_state(state)
}

async fn readyz(State(s): State<HttpState>) -> Response {
    if s.ready.is_ready() {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "the initial list of RoutingConfigs has not been loaded yet"})),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
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
                    "customers": snap.config.spec().customer_to_placement.len(),
                    "placements": snap.config.spec().placement_to_endpoint.len(),
                })),
                "rejection": state.rejection,
            })
        })
        .collect();
    Json(json!({"snapshots": objects})).into_response()
}
