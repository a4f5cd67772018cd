//! Routing and forwarding of one request.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use super::errors::{Local, is_grpc};
use super::headers::{self, Peer};
use super::tunnel;
use crate::metrics::{Metrics, ProxyError};
use crate::state::SharedState;
use crate::tls::CaError;
use crate::upstream::WorkerUpstream;
use crate::upstream::body::UpstreamBody;
use crate::upstream::connect::Connector;
use crate::upstream::pool::Pools;

/// Body of every proxy response: the cell's body streamed through, or a short local one.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// How the proxy forwards, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time allowed for response headers.
    pub upstream_timeout: Duration,
    /// Time allowed to open a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Extra CAs (PEM) trusted for `https` cells.
    pub upstream_ca: Option<PathBuf>,
}

/// What every worker shares: the active table, metrics, settings.
pub struct ProxyContext {
    /// The active table.
    pub state: Arc<SharedState>,
    /// Metrics not tied to a placement.
    pub metrics: Arc<Metrics>,
    /// Time allowed for response headers.
    pub upstream_timeout: Duration,
    pub(super) connector: Arc<Connector>,
}

impl ProxyContext {
    /// The shared part of the proxy. Fails when `--upstream-ca` cannot be read.
    pub fn new(state: Arc<SharedState>, metrics: Arc<Metrics>, settings: &Settings) -> Result<Self, CaError> {
        let connector = Connector::new(settings.connect_timeout, settings.upstream_ca.as_deref())?;
        Ok(Self {
            state,
            metrics,
            upstream_timeout: settings.upstream_timeout,
            connector: Arc::new(connector),
        })
    }
}

/// One worker (one core): its connections to cells and its tunnels. A request is served by
/// one worker from start to end.
pub struct Worker {
    /// Which worker: the index of its metric shards and of its view of each upstream.
    pub index: usize,
    /// What all workers share.
    pub ctx: Arc<ProxyContext>,
    /// This worker's connections to cells.
    pub pools: Pools,
    /// This worker's open tunnels.
    pub tunnels: TaskTracker,
}

impl Worker {
    /// Worker `index` of `ctx`.
    pub fn new(index: usize, ctx: Arc<ProxyContext>) -> Self {
        Self {
            index,
            pools: Pools::new(ctx.connector.clone()),
            ctx,
            tunnels: TaskTracker::new(),
        }
    }
}

/// Routes and forwards one request. Never fails: errors become local responses.
pub async fn handle(
    req: Request<Incoming>,
    worker: Arc<Worker>,
    peer: Arc<Peer>,
) -> Result<Response<ProxyBody>, Infallible> {
    // One load, one probe. Only this worker's view of the chosen upstream outlives this block,
    // so a table swap during the request neither changes its route nor waits for it.
    let upstream: Arc<WorkerUpstream> = {
        let guard = worker.ctx.state.active.load();
        let Some(active) = guard.as_ref() else {
            worker.ctx.metrics.no_table.inc();
            return Ok(Local::NoTable.respond(is_grpc(req.headers())));
        };
        let customer = req.headers().get(&active.header).map(|v| v.as_bytes());
        active
            .table
            .route(customer)
            .placement
            .payload
            .for_worker(worker.index)
            .clone()
    };
    Ok(forward(req, &worker, &upstream, &peer).await)
}

async fn forward(
    mut req: Request<Incoming>,
    worker: &Worker,
    upstream: &WorkerUpstream,
    peer: &Peer,
) -> Response<ProxyBody> {
    let fail = |error: ProxyError| upstream.metrics.record_error(worker.index, error);
    if req.method() == Method::CONNECT {
        fail(ProxyError::BadRequest);
        return Local::Connect.respond(is_grpc(req.headers()));
    }
    let upgrade = headers::upgrade_protocol(req.headers(), req.version());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    // A gRPC client needs the proxy's errors as gRPC statuses.
    let grpc = is_grpc(req.headers());
    let (mut parts, body) = req.into_parts();
    let uri = match upstream_uri(upstream, &parts.uri) {
        Ok(uri) => uri,
        Err(detail) => {
            fail(ProxyError::BadRequest);
            return Local::BadRequest { detail }.respond(grpc);
        }
    };
    let original_host = parts.headers.remove(header::HOST).or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| header::HeaderValue::from_str(a.as_str()).ok())
    });
    let upgrades = upgrade.is_some();
    headers::prepare_request(
        &mut parts.headers,
        peer,
        original_host,
        &upstream.host_header,
        upgrade,
    );
    parts.uri = uri;
    let started = Instant::now();
    let pool = upstream.pool(&worker.pools);
    let timeout = worker.ctx.upstream_timeout;
    let sent = tokio::time::timeout(timeout, pool.send(Request::from_parts(parts, body), upgrades)).await;
    match sent {
        Err(_) => {
            fail(ProxyError::Timeout);
            Local::Timeout {
                placement: &upstream.placement,
                timeout_ms: timeout.as_millis(),
            }
            .respond(grpc)
        }
        Ok(Err(e)) => {
            fail(ProxyError::Unreachable);
            Local::Unreachable {
                placement: &upstream.placement,
                detail: e.to_string(),
            }
            .respond(grpc)
        }
        Ok(Ok(mut resp)) => {
            upstream
                .metrics
                .record_response(worker.index, resp.status().as_u16(), started.elapsed());
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            if switching && let Some(client) = client_upgrade {
                let cell = hyper::upgrade::on(&mut resp);
                tunnel::spawn(&worker.tunnels, client, cell, upstream.placement.clone());
            }
            let (mut parts, body) = resp.into_parts();
            headers::prepare_response(&mut parts.headers, switching);
            Response::from_parts(parts, Either::Left(body))
        }
    }
}

/// The upstream URI: the endpoint's scheme, authority and base path, then the request's path
/// and query.
fn upstream_uri(upstream: &WorkerUpstream, original: &Uri) -> Result<Uri, String> {
    let path_and_query = match original.path_and_query() {
        Some(pq) if upstream.base_path.is_empty() => pq.clone(),
        Some(pq) => join(&upstream.base_path, pq.as_str())?,
        None if upstream.base_path.is_empty() => PathAndQuery::from_static("/"),
        None => join(&upstream.base_path, "/")?,
    };
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| format!("cannot build the upstream URI: {e}"))
}

fn join(base: &str, path_and_query: &str) -> Result<PathAndQuery, String> {
    PathAndQuery::from_maybe_shared(Bytes::from(format!("{base}{path_and_query}")))
        .map_err(|e| format!("invalid request path: {e}"))
}
