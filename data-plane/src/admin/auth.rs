//! Bearer-token check for the admin POST endpoints.
//!
//! The token file is re-read on every request so a rotated Secret takes effect without a
//! restart. Tokens are compared as SHA-256 digests in constant time, so neither the content nor
//! the length of the expected token leaks through timing.

use std::path::PathBuf;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a request was not authenticated; the text goes after "Authentication required: ".
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The data plane was started without `--admin-token-file`.
    #[error("admin endpoints are disabled because no --admin-token-file was configured")]
    NotConfigured,
    /// The token file exists in the configuration but cannot be read now.
    #[error("the admin token file {0} cannot be read")]
    Unreadable(String),
    /// No `Authorization: Bearer` header.
    #[error("send the admin token as `Authorization: Bearer <token>`")]
    Missing,
    /// The presented token does not match.
    #[error("the bearer token is not valid")]
    Invalid,
}

/// Where the admin token lives.
#[derive(Debug, Clone)]
pub struct AdminToken {
    path: Option<PathBuf>,
}

/// Why the token file is unusable at startup.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It cannot be read.
    #[error("cannot read --admin-token-file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It holds nothing but whitespace.
    #[error("--admin-token-file {0} is empty")]
    Empty(PathBuf),
}

impl AdminToken {
    /// Checks the file once at startup so a bad path fails fast rather than on first use.
    pub fn new(path: Option<PathBuf>) -> Result<Self, TokenFileError> {
        if let Some(p) = &path {
            let text = std::fs::read_to_string(p).map_err(|source| TokenFileError::Read {
                path: p.clone(),
                source,
            })?;
            if text.trim().is_empty() {
                return Err(TokenFileError::Empty(p.clone()));
            }
        }
        Ok(Self { path })
    }

    /// Accepts the request only with the current token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let path = self.path.as_ref().ok_or(AuthError::NotConfigured)?;
        let expected =
            std::fs::read_to_string(path).map_err(|_| AuthError::Unreadable(path.display().to_string()))?;
        let expected = expected.trim();
        if expected.is_empty() {
            return Err(AuthError::Unreadable(path.display().to_string()));
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(routing_model::protocol::bearer_token)
            .ok_or(AuthError::Missing)?;
        let a = Sha256::digest(presented.as_bytes());
        let b = Sha256::digest(expected.as_bytes());
        if bool::from(a.ct_eq(&b)) {
            Ok(())
        } else {
            Err(AuthError::Invalid)
        }
    }
}
