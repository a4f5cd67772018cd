//! An echo "cell": the upstream the data plane routes to in tests, demos and benchmarks.
//!
//! Every answer is a JSON object saying which cell answered and exactly what it received:
//!
//! ```json
//! {"cell": "cell-a", "method": "POST", "path": "/x", "query": "a=1",
//!  "headers": {"host": "127.0.0.1:40123", "x-forwarded-for": "127.0.0.1"}, "body": "hello"}
//! ```
//!
//! so a test can tell from one response both where the proxy sent the request and what it
//! forwarded (`version` is the HTTP version it arrived in: `HTTP/1.1`, `HTTP/2.0`). Some paths
//! behave specially: `/slow?ms=N` answers after N milliseconds (for timeouts and graceful
//! shutdown), `/status/NNN` answers with that status code, `/stream?chunks=N` answers N chunks
//! of a body without a length (chunked over HTTP/1.1), and `/duplex` streams the request body
//! back as it arrives, frame by frame (for streaming both ways). Header names are lowercased;
//! repeated headers are joined with `", "`; `query` is `null` when the request had none.
//!
//! The cell never fails a request on its own: any error a test sees comes from the proxy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Longest delay `/slow` accepts, so that a typo cannot hang a test for hours.
const MAX_SLOW_MS: u64 = 60_000;

/// Request counters of one cell, shared with its connection tasks.
#[derive(Debug, Default)]
pub struct Counters {
    received: AtomicU64,
    served: AtomicU64,
}

impl Counters {
    /// Requests whose head has arrived, including ones still being answered.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Requests answered completely.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

/// A running echo cell on the current tokio runtime; stops accepting when dropped.
#[derive(Debug)]
pub struct EchoCell {
    name: String,
    addr: SocketAddr,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl EchoCell {
    /// Starts a cell called `name` on an ephemeral loopback port.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound, which leaves the test nothing to run against.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo cell on 127.0.0.1:0");
        Self::on(listener, name)
    }

    /// Serves a cell called `name` on an already bound listener.
    ///
    /// # Panics
    ///
    /// When the listener has no local address.
    pub fn on(listener: TcpListener, name: &str) -> Self {
        let addr = listener.local_addr().expect("echo listener address");
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(serve(listener, Arc::from(name), Arc::clone(&counters)));
        Self {
            name: name.to_owned(),
            addr,
            counters,
            accept,
        }
    }

    /// The name the cell reports in the `cell` field.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, as a RoutingConfig endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests whose head has arrived, including ones still being answered.
    pub fn received(&self) -> u64 {
        self.counters.received()
    }

    /// Requests answered completely.
    pub fn served(&self) -> u64 {
        self.counters.served()
    }
}

impl Drop for EchoCell {
    fn drop(&mut self) {
        // Open connections end with the test's runtime; new ones are no longer accepted.
        self.accept.abort();
    }
}

/// Accepts connections forever, serving each with the echo handler (HTTP/1.1 and HTTP/2).
pub async fn serve(listener: TcpListener, name: Arc<str>, counters: Arc<Counters>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // Typically EMFILE under a benchmark: back off instead of spinning or exiting.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, Arc::clone(&name), Arc::clone(&counters)));
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2, on any byte stream: TCP, TLS) with the echo
/// handler until it closes.
pub async fn serve_connection<I>(io: I, name: Arc<str>, counters: Arc<Counters>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, Arc::clone(&name), Arc::clone(&counters)));
    // A client hanging up mid-request is normal (timeouts, shutdown tests): ignore it.
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Body of every echo answer.
type EchoBody = BoxBody<Bytes, hyper::Error>;

fn full(bytes: impl Into<Bytes>) -> EchoBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    counters: Arc<Counters>,
) -> Result<Response<EchoBody>, Infallible> {
    counters.received.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    if parts.uri.path() == "/duplex" {
        counters.served.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::new(body.boxed()));
    }
    if parts.uri.path() == "/stream" {
        let chunks = query_param(parts.uri.query(), "chunks")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .min(10_000);
        let frames = (0..chunks).map(|i| Ok(hyper::body::Frame::data(Bytes::from(format!("chunk {i}\n")))));
        counters.served.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::new(
            StreamBody::new(futures_util::stream::iter(frames)).boxed(),
        ));
    }
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path();
    let query = parts.uri.query();

    if path == "/slow" {
        let ms = query_param(query, "ms")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms.min(MAX_SLOW_MS))).await;
    }
    let status = path
        .strip_prefix("/status/")
        // `/status/500/anything`: an endpoint path prefix makes every request of a placement
        // answer that status.
        .and_then(|rest| rest.split('/').next())
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);

    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(key.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let echo = serde_json::json!({
        "cell": &*name,
        "method": parts.method.as_str(),
        "version": format!("{:?}", parts.version),
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let response = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(echo.to_string()))
        .expect("static response parts are valid");
    counters.served.fetch_add(1, Ordering::SeqCst);
    Ok(response)
}

fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// A loopback URL where nothing listens, for "upstream unreachable" tests.
///
/// It binds an ephemeral port and releases it; the kernel hands ports out in sequence, so the
/// port stays free for the length of a test in practice.
///
/// # Panics
///
/// When no loopback port can be bound.
pub fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a throwaway port");
    let addr = listener.local_addr().expect("throwaway address");
    drop(listener);
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_the_request_and_honours_slow_and_status() {
        let cell = EchoCell::start("cell-x").await;
        let http = crate::client::http_client();
        let reply = http
            .post(format!("{}/a/b?c=1", cell.url()))
            .header("X-Thing", "one")
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        let echo: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(echo["cell"], "cell-x");
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/a/b");
        assert_eq!(echo["query"], "c=1");
        assert_eq!(echo["headers"]["x-thing"], "one");
        assert_eq!(echo["body"], "payload");

        let started = std::time::Instant::now();
        let slow = http
            .get(format!("{}/slow?ms=200", cell.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(slow.status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(200));
        let teapot = http
            .get(format!("{}/status/418", cell.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(teapot.status(), 418);
        assert_eq!((cell.received(), cell.served()), (3, 3));
    }

    #[test]
    fn query_params_are_found_by_key() {
        assert_eq!(query_param(Some("a=1&ms=250"), "ms"), Some("250"));
        assert_eq!(query_param(Some("msx=1"), "ms"), None);
        assert_eq!(query_param(None, "ms"), None);
    }
}
