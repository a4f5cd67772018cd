//! One worker's connections to the cells, by origin (protocol and authority).
//!
//! Each proxy worker owns a [`Pools`]; nothing here is shared between cores, so the locks below
//! are only ever taken by one thread and never contended. Per origin:
//!
//! - HTTP/1.1: idle keep-alive connections, newest first. A request takes one, and its response
//!   body gives it back when the body ends ([`super::body::UpstreamBody`]); a body that ends
//!   early (the client went away) closes it instead. Requests that upgrade (WebSocket) use
//!   HTTP/1.1 connections and keep them.
//! - HTTP/2 (`h2c`, or `https` when the cell's ALPN picked `h2`): one multiplexed connection,
//!   opened by the first request that needs it while later ones wait for it.
//!
//! A request is sent straight on the connection it took: no pool task, no channel besides
//! hyper's own to the connection's task on the same thread. A pooled connection the cell closed
//! while idle is detected before the request is written (hyper hands the request back), and the
//! request goes out on the next connection instead: never twice.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use routing_model::endpoint::Protocol;
use rustls::pki_types::ServerName;

use super::body::UpstreamBody;
use super::connect::{self, Alpn, ConnectError, Connector, Stream};

/// Idle HTTP/1.1 connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle HTTP/1.1 connections kept per origin and worker.
const MAX_IDLE: usize = 1024;

/// Which connections can carry a request: the same protocol to the same authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginKey {
    protocol: Protocol,
    /// `host:port`, as written in the endpoint (ASCII; hosts compare case-insensitively).
    authority: Box<str>,
    /// The host without IPv6 brackets, for resolution and TLS.
    host: Box<str>,
    port: u16,
}

impl OriginKey {
    /// The origin of an endpoint.
    pub fn new(protocol: Protocol, authority: &Authority) -> Result<Self, String> {
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".to_owned());
        }
        Ok(Self {
            protocol,
            authority: authority.as_str().to_ascii_lowercase().into(),
            host: host.to_ascii_lowercase().into(),
            port: authority.port_u16().unwrap_or(protocol.default_port()),
        })
    }
}

/// Why a request could not be forwarded. The text ends up in the 502 body.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed before the response headers arrived.
    #[error("{}", chain(.0))]
    Http(#[from] hyper::Error),
    /// A new connection closed before the request could be written.
    #[error("the connection closed before the request could be sent")]
    NotSent,
    /// The cell switched protocols for a request that did not ask to.
    #[error("the cell answered 101 Switching Protocols to a request that did not ask to upgrade")]
    UnexpectedUpgrade,
}

/// An error with its causes, on one line: hyper's top-level messages alone are too vague.
fn chain(e: &hyper::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// One worker's connections to every origin it has forwarded to.
#[derive(Debug)]
pub struct Pools {
    connector: Arc<Connector>,
    origins: Mutex<HashMap<OriginKey, Arc<OriginPool>>>,
}

impl Pools {
    /// Empty pools opening connections with `connector`.
    pub fn new(connector: Arc<Connector>) -> Self {
        Self {
            connector,
            origins: Mutex::default(),
        }
    }

    /// The connections to `key`, created empty on first use.
    pub fn origin(&self, key: &OriginKey) -> Arc<OriginPool> {
        lock(&self.origins)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(OriginPool::new(key.clone(), self.connector.clone())))
            .clone()
    }

    /// Closes idle connections past their idle timeout and forgets closed ones.
    pub fn sweep(&self) {
        let origins: Vec<Arc<OriginPool>> = lock(&self.origins).values().cloned().collect();
        for origin in origins {
            origin.sweep();
        }
    }
}

/// Whether an `https` origin's cell picks HTTP/2, as learned from its first TLS connection.
const ALPN_UNKNOWN: u8 = 0;
const ALPN_H2: u8 = 1;
const ALPN_HTTP11: u8 = 2;

/// A worker's connections to one origin.
#[derive(Debug)]
pub struct OriginPool {
    key: OriginKey,
    connector: Arc<Connector>,
    server_name: Option<Result<ServerName<'static>, String>>,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<Incoming>>>,
    /// Held while opening the HTTP/2 connection, so concurrent requests share one.
    h2_connecting: tokio::sync::Mutex<()>,
    alpn: AtomicU8,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

/// A freshly opened connection.
enum Fresh {
    H1(http1::SendRequest<Incoming>),
    H2(http2::SendRequest<Incoming>),
}

impl OriginPool {
    fn new(key: OriginKey, connector: Arc<Connector>) -> Self {
        let server_name = (key.protocol == Protocol::Https)
            .then(|| connect::server_name(&key.host).map_err(|e| e.to_string()));
        Self {
            key,
            connector,
            server_name,
            idle: Mutex::default(),
            h2: Mutex::default(),
            h2_connecting: tokio::sync::Mutex::const_new(()),
            alpn: AtomicU8::new(ALPN_UNKNOWN),
        }
    }

    /// Sends `req` (absolute URI, `Host` set) and returns the response head with its body
    /// streaming. `upgrade` requests always go over HTTP/1.1.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Incoming>,
        upgrade: bool,
    ) -> Result<Response<UpstreamBody>, SendError> {
        if !upgrade {
            match self.key.protocol {
                Protocol::H2c => {
                    let h2 = match self.ready_h2() {
                        Some(h2) => h2,
                        None => self.connect_h2().await?,
                    };
                    return send_h2(h2, req).await;
                }
                Protocol::Https if self.alpn.load(Ordering::Relaxed) != ALPN_HTTP11 => {
                    if let Some(h2) = self.ready_h2() {
                        return send_h2(h2, req).await;
                    }
                    if self.alpn.load(Ordering::Relaxed) == ALPN_UNKNOWN || self.idle_is_empty() {
                        // Learn (or re-open) under the lock: if the cell picks h2, the requests
                        // waiting behind this one share the connection it opens.
                        let _connecting = self.h2_connecting.lock().await;
                        if let Some(h2) = self.ready_h2() {
                            return send_h2(h2, req).await;
                        }
                        if self.alpn.load(Ordering::Relaxed) != ALPN_HTTP11 {
                            match self.connect(Alpn::Any).await? {
                                Fresh::H2(h2) => return send_h2(h2, req).await,
                                Fresh::H1(sender) => {
                                    drop(_connecting);
                                    return match self.send_h1(sender, false, req, upgrade).await {
                                        Ok(resp) => Ok(resp),
                                        Err(Retry::Failed(e)) => Err(e),
                                        // Only reused connections hand a request back.
                                        Err(Retry::Again(_)) => Err(SendError::NotSent),
                                    };
                                }
                            }
                        }
                    }
                }
                Protocol::Http1 | Protocol::Https => {}
            }
        }
        // A new `https` connection still offers h2 unless this request upgrades: a cell that
        // starts speaking HTTP/2 is noticed.
        let alpn = if upgrade { Alpn::Http11Only } else { Alpn::Any };
        let mut req = req;
        loop {
            let (sender, reused) = match self.checkout_h1().await {
                Some(sender) => (sender, true),
                None => match self.connect(alpn).await? {
                    Fresh::H1(sender) => (sender, false),
                    Fresh::H2(h2) => return send_h2(h2, req).await,
                },
            };
            match self.send_h1(sender, reused, req, upgrade).await {
                Ok(resp) => return Ok(resp),
                Err(Retry::Again(back)) => req = *back,
                Err(Retry::Failed(e)) => return Err(e),
            }
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut sender: http1::SendRequest<Incoming>,
        reused: bool,
        mut req: Request<Incoming>,
        upgrade: bool,
    ) -> Result<Response<UpstreamBody>, Retry> {
        *req.version_mut() = Version::HTTP_11;
        match sender.try_send_request(req).await {
            Ok(resp) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if !upgrade {
                        return Err(Retry::Failed(SendError::UnexpectedUpgrade));
                    }
                    // The connection now belongs to the tunnel.
                    return Ok(resp.map(|b| UpstreamBody::new(b, None)));
                }
                let reuse = Some((self.clone(), sender));
                Ok(resp.map(|b| UpstreamBody::new(b, reuse)))
            }
            Err(mut e) => match e.take_message() {
                // The pooled connection was closed before the request went out: try the next.
                Some(back) if reused => Err(Retry::Again(Box::new(back))),
                _ => Err(Retry::Failed(e.into_error().into())),
            },
        }
    }

    fn ready_h2(&self) -> Option<http2::SendRequest<Incoming>> {
        let h2 = lock(&self.h2);
        h2.as_ref().filter(|s| s.is_ready()).cloned()
    }

    fn idle_is_empty(&self) -> bool {
        lock(&self.idle).is_empty()
    }

    /// The shared HTTP/2 connection of an `h2c` origin, opened if there is none.
    async fn connect_h2(&self) -> Result<http2::SendRequest<Incoming>, SendError> {
        let _connecting = self.h2_connecting.lock().await;
        if let Some(h2) = self.ready_h2() {
            return Ok(h2);
        }
        match self.connect(Alpn::Any).await? {
            Fresh::H2(h2) => Ok(h2),
            Fresh::H1(_) => unreachable!("h2c origins are dialled with HTTP/2"),
        }
    }

    /// An idle HTTP/1.1 connection that is ready for a request, if there is one.
    async fn checkout_h1(&self) -> Option<http1::SendRequest<Incoming>> {
        loop {
            let Idle { mut sender, since } = lock(&self.idle).pop()?;
            if since.elapsed() > IDLE_TIMEOUT || sender.is_closed() {
                continue;
            }
            // A connection handed back as its response body ended becomes ready once its task
            // has read the end of that response, on this thread, without waiting on the network.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Hands a connection back for the next request.
    pub(super) fn put(&self, sender: http1::SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn sweep(&self) {
        lock(&self.idle).retain(|i| i.since.elapsed() <= IDLE_TIMEOUT && !i.sender.is_closed());
        let mut h2 = lock(&self.h2);
        if h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
            *h2 = None;
        }
    }

    /// Opens a connection and starts its task on this worker's runtime.
    async fn connect(&self, alpn: Alpn) -> Result<Fresh, SendError> {
        let tls = match &self.server_name {
            None => None,
            Some(Ok(name)) => Some((name, alpn)),
            Some(Err(e)) => {
                return Err(ConnectError::ServerName(e.clone()).into());
            }
        };
        let stream = self.connector.connect(&self.key.host, self.key.port, tls).await?;
        let h2 = match self.key.protocol {
            // h2c requests that upgrade need HTTP/1.1; everything else to h2c is HTTP/2.
            Protocol::H2c => alpn == Alpn::Any,
            Protocol::Https => {
                let h2 = connect::negotiated_h2(&stream);
                if alpn == Alpn::Any {
                    self.alpn
                        .store(if h2 { ALPN_H2 } else { ALPN_HTTP11 }, Ordering::Relaxed);
                }
                h2
            }
            Protocol::Http1 => false,
        };
        if h2 {
            let h2 = self.handshake_h2(stream).await?;
            *lock(&self.h2) = Some(h2.clone());
            Ok(Fresh::H2(h2))
        } else {
            Ok(Fresh::H1(self.handshake_h1(stream).await?))
        }
    }

    async fn handshake_h1(&self, stream: Stream) -> Result<http1::SendRequest<Incoming>, SendError> {
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
        let authority = self.key.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %authority, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn handshake_h2(&self, stream: Stream) -> Result<http2::SendRequest<Incoming>, SendError> {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        let authority = self.key.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %authority, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// What a failed HTTP/1.1 send means for the request.
enum Retry {
    /// It was never written: send it on another connection.
    Again(Box<Request<Incoming>>),
    /// It failed for good.
    Failed(SendError),
}

async fn send_h2(
    mut sender: http2::SendRequest<Incoming>,
    mut req: Request<Incoming>,
) -> Result<Response<UpstreamBody>, SendError> {
    *req.version_mut() = Version::HTTP_2;
    // HTTP/2 carries the authority as `:authority`, from the URI (RFC 9113 section 8.3.1).
    req.headers_mut().remove(header::HOST);
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|b| UpstreamBody::new(b, None)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
