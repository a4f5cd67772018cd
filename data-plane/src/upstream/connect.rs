//! Opening a connection to a cell: TCP (no Nagle), and for `https` a TLS handshake whose ALPN
//! offer depends on what the connection is for.
//!
//! `--connect-timeout` bounds name resolution, the TCP connect and the TLS handshake together:
//! a cell that accepts TCP but never finishes TLS is as unreachable as one that refuses it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::tls::{self, CaError};

/// ALPN identifiers (RFC 7301).
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A connected byte stream to a cell: plain TCP (`http`, `h2c`) or TLS over TCP (`https`).
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// What a new TLS connection will carry, which decides its ALPN offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// Any request: offer `h2` and `http/1.1`, the cell chooses.
    Any,
    /// A request that upgrades the connection (WebSocket): offer only `http/1.1`.
    Http11Only,
}

/// Why a connection could not be opened. The text ends up in the 502 body.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Resolution or TCP connect failed.
    #[error("connect to {addr} failed: {source}")]
    Tcp {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--connect-timeout` passed.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The TLS handshake failed (certificate, protocol).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// The handshake error.
        source: std::io::Error,
    },
    /// The cell's host is not a valid TLS server name.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
}

/// How connections to cells are opened; shared by every worker.
pub struct Connector {
    connect_timeout: Duration,
    /// ALPN `h2, http/1.1`.
    tls_any: TlsConnector,
    /// ALPN `http/1.1`.
    tls_http11: TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Connections time out after `connect_timeout`; TLS trusts the system's roots and the CAs
    /// in `extra_ca` (PEM), if given.
    pub fn new(connect_timeout: Duration, extra_ca: Option<&Path>) -> Result<Self, CaError> {
        let base = client_config(extra_ca)?;
        let with_alpn = |protocols: &[&[u8]]| {
            let mut config = base.clone();
            config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(config))
        };
        Ok(Self {
            connect_timeout,
            tls_any: with_alpn(&[ALPN_H2, ALPN_HTTP11]),
            tls_http11: with_alpn(&[ALPN_HTTP11]),
        })
    }

    /// Opens a TCP connection to `host:port`, then TLS if `tls` is given (with `server_name`).
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        tls: Option<(&ServerName<'static>, Alpn)>,
    ) -> Result<Stream, ConnectError> {
        let addr = || format!("{host}:{port}");
        let open = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|source| ConnectError::Tcp { addr: addr(), source })?;
            let _ = tcp.set_nodelay(true);
            let Some((name, alpn)) = tls else {
                return Ok(Either::Left(tcp));
            };
            let connector = match alpn {
                Alpn::Any => &self.tls_any,
                Alpn::Http11Only => &self.tls_http11,
            };
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|source| ConnectError::Tls { addr: addr(), source })?;
            Ok(Either::Right(Box::new(tls)))
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .map_err(|_| ConnectError::Timeout {
                addr: addr(),
                timeout: self.connect_timeout,
            })?
    }
}

/// Whether TLS negotiated HTTP/2 on `stream` (never for plain TCP).
pub fn negotiated_h2(stream: &Stream) -> bool {
    match stream {
        Either::Left(_) => false,
        Either::Right(tls) => tls.get_ref().1.alpn_protocol() == Some(ALPN_H2),
    }
}

/// The TLS server name of `host` (an IP address or a DNS name).
pub fn server_name(host: &str) -> Result<ServerName<'static>, ConnectError> {
    ServerName::try_from(host.to_owned()).map_err(|_| ConnectError::ServerName(host.to_owned()))
}

fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, CaError> {
    const FLAG: &str = "--upstream-ca";
    let roots = tls::root_store(FLAG, extra_ca)?;
    if roots.is_empty() {
        tracing::warn!(
            "no system root certificates found; https cells are trusted only through --upstream-ca"
        );
    }
    tls::client_config(FLAG, roots)
}
