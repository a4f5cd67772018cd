//! Serving `wss://`: a listener that terminates TLS (rustls) before axum sees the connection.
//!
//! Handshakes run in their own tasks with a deadline, so a client that connects and never
//! finishes its handshake cannot hold up anyone else's accept.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unusable.
    #[error("cannot read certificates from --tls-cert {path}: {why}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The key file is unusable.
    #[error("cannot read the private key from --tls-key {path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the pair.
    #[error("the TLS certificate and key do not work together: {0}")]
    Config(#[from] rustls::Error),
}

/// The control plane's listener: plain TCP, or TLS on top of it.
pub enum ServeListener {
    /// `ws://`.
    Plain(TcpListener),
    /// `wss://`: handshaken streams arrive on the channel.
    Tls {
        /// Completed handshakes.
        accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        /// The bound address.
        local: SocketAddr,
    },
}

impl ServeListener {
    /// Wraps `tcp` in TLS with the given PEM certificate chain and key.
    pub fn tls(tcp: TcpListener, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Cert {
                path: cert.display().to_string(),
                why: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Cert {
                path: cert.display().to_string(),
                why: "no certificate found".to_owned(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            why: e.to_string(),
        })?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::with_config(tcp, Arc::new(config)).map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            why: e.to_string(),
        })
    }

    /// Wraps `tcp` in TLS with a ready rustls configuration (for example one whose certificate
    /// resolver swaps in renewed certificates, as the injector's does).
    pub fn with_config(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let acceptor = TlsAcceptor::from(config);
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(128);
        tokio::spawn(async move {
            loop {
                let (stream, remote) = match TcpListener::accept(&tcp).await {
                    Ok(pair) => no_delay(pair),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, remote)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self::Tls { accepted, local })
    }
}

/// Turns Nagle's algorithm off: a snapshot's last partial segment must not wait for the data
/// plane's delayed ACK (up to 40 ms on Linux), and the push is latency-bound, not packet-bound.
fn no_delay((stream, remote): (TcpStream, SocketAddr)) -> (TcpStream, SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%remote, error = %e, "cannot set TCP_NODELAY");
    }
    (stream, remote)
}

impl Listener for ServeListener {
    type Io = Either<TcpStream, TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self {
            Self::Plain(tcp) => loop {
                match TcpListener::accept(tcp).await {
                    Ok(pair) => {
                        let (stream, remote) = no_delay(pair);
                        return (Either::Left(stream), remote);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            Self::Tls { accepted, .. } => match accepted.recv().await {
                Some((stream, remote)) => (Either::Right(stream), remote),
                // The accept task only ends with the process; wait forever rather than spin.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match self {
            Self::Plain(tcp) => tcp.local_addr(),
            Self::Tls { local, .. } => Ok(*local),
        }
    }
}

/// The client's address, as handlers see it.
#[derive(Debug, Clone, Copy)]
pub struct Remote(pub SocketAddr);

impl Connected<IncomingStream<'_, ServeListener>> for Remote {
    fn connect_info(stream: IncomingStream<'_, ServeListener>) -> Self {
        Remote(*stream.remote_addr())
    }
}
