//! The echo cell behind TLS, for `https://` endpoints: a CA and a server certificate for
//! `localhost` and 127.0.0.1 made for the test (rcgen), and an ALPN offer the test chooses, so
//! a test can show which HTTP version the data plane negotiated.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::echo::{Counters, serve_connection};

/// A running TLS echo cell; stops accepting when dropped.
#[derive(Debug)]
pub struct TlsCell {
    addr: SocketAddr,
    ca_pem: String,
    task: JoinHandle<()>,
}

impl TlsCell {
    /// Starts an echo cell called `name` whose TLS offers `alpn` (for example `["h2",
    /// "http/1.1"]`, or `["http/1.1"]`, or nothing).
    ///
    /// # Panics
    ///
    /// When the certificates cannot be made or no loopback port can be bound.
    pub async fn start(name: &str, alpn: &[&str]) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cellroute test CA");
        let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(cert.der().to_vec())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .expect("server TLS config");
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind TLS cell");
        let addr = listener.local_addr().expect("TLS cell address");
        let name: Arc<str> = Arc::from(name);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let name = name.clone();
                let counters = counters.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve_connection(tls, name, counters).await;
                    }
                });
            }
        });
        Self {
            addr,
            ca_pem: ca.pem(),
            task,
        }
    }

    /// Its endpoint for a RoutingConfig, by name (the certificate is for `localhost`).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Writes the CA certificate (PEM) to `path`, for `--upstream-ca`.
    ///
    /// # Panics
    ///
    /// When the file cannot be written.
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem).expect("write the test CA");
    }
}

impl Drop for TlsCell {
    fn drop(&mut self) {
        self.task.abort();
    }
}
