//! TLS client settings for the two places the data plane speaks TLS: `wss://` to the control
//! plane and `https` cells. Both trust the system's roots plus the PEM CAs of a flag, and both
//! must refuse a CA file the same way.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why the TLS client settings could not be built, naming the flag whose file is at fault.
#[derive(Debug, thiserror::Error)]
#[error("cannot use {flag} {path}: {why}")]
pub struct CaError {
    flag: &'static str,
    path: String,
    why: String,
}

/// The system's root certificates plus every certificate in `ca_file` (given with `flag`); a
/// file that cannot be read, holds no certificate or a bad one is an error.
pub fn root_store(flag: &'static str, ca_file: Option<&Path>) -> Result<rustls::RootCertStore, CaError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let fail = |why: String| CaError {
            flag,
            path: path.display().to_string(),
            why,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no certificate found".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// Client settings (ring, safe protocol versions, no client certificate) trusting `roots`.
pub fn client_config(
    flag: &'static str,
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, CaError> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CaError {
        flag,
        path: String::new(),
        why: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}
