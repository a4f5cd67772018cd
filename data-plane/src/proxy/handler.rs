//! Routing and forwarding of one request.

use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::{errors, headers};
use crate::metrics::Metrics;
use crate::state::SharedState;
use crate::upstream::Upstream;

/// Body of every proxy response: the upstream's body streamed through, or a short local one.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The pooled client used for every upstream.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// What the request path shares.
pub struct ProxyContext {
    /// The active table.
    pub state: Arc<SharedState>,
    /// The pooled upstream client.
    pub client: UpstreamClient,
    /// Time allowed for response headers.
    pub upstream_timeout: Duration,
    /// Metrics not tied to a placement.
    pub metrics: Arc<Metrics>,
}

impl ProxyContext {
    /// Builds the upstream client: pooled keep-alive connections, `connect_timeout` per
    /// connection attempt, TLS for `https` endpoints with the system's root certificates.
    pub fn new(
        state: Arc<SharedState>,
        metrics: Arc<Metrics>,
        upstream_timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no usable system root certificates; using the bundled Mozilla roots for https upstreams");
                hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
            }
        };
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Self {
            state,
            client,
            upstream_timeout,
            metrics,
        }
    }
}

/// Routes and forwards one request. Never fails: errors become 5xx responses.
pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ProxyContext>,
    remote: SocketAddr,
) -> Result<Response<ProxyBody>, Infallible> {
    // One load, one probe. Only the chosen upstream's Arc outlives this block, so a table swap
    // during the request neither changes its route nor waits for it.
    let upstream: Arc<Upstream> = {
        let guard = ctx.state.active.load();
        let Some(active) = guard.as_ref() else {
            ctx.metrics.no_table.inc();
            return Ok(errors::no_table());
        };
        let customer = req.headers().get(&active.header).map(|v| v.as_bytes());
        active.table.route(customer).placement.payload.clone()
    };
    let started = Instant::now();
    let response = forward(req, &ctx, &upstream, remote).await;
    upstream
        .metrics
        .record(response.status().as_u16(), started.elapsed().as_secs_f64());
    Ok(response)
}

async fn forward(
    req: Request<Incoming>,
    ctx: &ProxyContext,
    upstream: &Upstream,
    remote: SocketAddr,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let uri = match upstream_uri(upstream, &parts.uri) {
        Ok(uri) => uri,
        Err(detail) => return errors::bad_request(detail),
    };
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| header::HeaderValue::from_str(a.as_str()).ok())
    });
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, remote, original_host);
    parts.headers.insert(header::HOST, upstream.host_header.clone());
    parts.uri = uri;
    // Upstreams are spoken to over HTTP/1.1 whatever the client used.
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);
    match tokio::time::timeout(ctx.upstream_timeout, ctx.client.request(upstream_req)).await {
        Err(_) => errors::timeout(&upstream.placement, ctx.upstream_timeout.as_millis()),
        Ok(Err(e)) => errors::unreachable(&upstream.placement, error_chain(&e)),
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
    }
}

/// The upstream URI: the endpoint's scheme, authority and base path, then the request's path
/// and query.
fn upstream_uri(upstream: &Upstream, original: &Uri) -> Result<Uri, String> {
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

/// An error with its causes, on one line: hyper's top-level messages alone are too vague.
fn error_chain(e: &hyper_util::client::legacy::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
