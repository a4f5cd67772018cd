//! Who may read `/debug/*`: peers on a loopback address, and others only with the bearer token
//! of `--debug-token-file`.
//!
//! The debug endpoints show every served table's identity, every data plane's id, address,
//! identity and last NACK: enough to map a fleet. Behind a Service they would be readable by any
//! pod, so a non-loopback peer needs the token. The file is re-read on every request, so the
//! token can be rotated without a restart; tokens are compared as SHA-256 digests in constant
//! time. Refusals are `403` with a message saying how to get access.

use std::net::IpAddr;
use std::path::PathBuf;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest token file read (a token is a line; anything longer is not one).
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Why the token file is unusable at startup.
#[derive(Debug, thiserror::Error)]
pub enum DebugTokenFileError {
    /// It cannot be read.
    #[error("cannot read --debug-token-file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It holds nothing but whitespace, or more than a token.
    #[error("--debug-token-file {0} must hold one token (1 to 4096 bytes)")]
    NotAToken(PathBuf),
}

/// Why a request for `/debug/*` was refused; the message says how to get access.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DebugRefusal {
    /// No token file is configured, and the peer is not on loopback.
    #[error(
        "/debug/* is served to loopback peers only; to read it from elsewhere, start the control plane with --debug-token-file FILE (or CELLROUTE_DEBUG_TOKEN_FILE) and send `Authorization: Bearer <the token in FILE>`"
    )]
    LoopbackOnly,
    /// No bearer token was sent.
    #[error(
        "/debug/* needs `Authorization: Bearer <token>` with the token in the control plane's --debug-token-file"
    )]
    Missing,
    /// The bearer token is not the one in the file.
    #[error("the bearer token is not the one in the control plane's --debug-token-file")]
    Invalid,
    /// The file cannot be read now (it was readable at startup).
    #[error(
        "the control plane cannot read its --debug-token-file; fix the file, or read /debug/* from loopback"
    )]
    Unreadable,
}

/// The access rule for `/debug/*`.
#[derive(Debug, Clone, Default)]
pub struct DebugAccess {
    token_file: Option<PathBuf>,
}

impl DebugAccess {
    /// Checks the file once at startup, so a bad path fails fast rather than on first use.
    pub fn new(token_file: Option<PathBuf>) -> Result<Self, DebugTokenFileError> {
        if let Some(path) = &token_file {
            read_token(path)
                .map_err(|source| DebugTokenFileError::Read {
                    path: path.clone(),
                    source,
                })?
                .ok_or_else(|| DebugTokenFileError::NotAToken(path.clone()))?;
        }
        Ok(Self { token_file })
    }

    /// Admits loopback peers, and others presenting the current token.
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), DebugRefusal> {
        if is_loopback(peer) {
            return Ok(());
        }
        let path = self.token_file.as_ref().ok_or(DebugRefusal::LoopbackOnly)?;
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(routing_model::protocol::bearer_token)
            .ok_or(DebugRefusal::Missing)?;
        let expected = match read_token(path) {
            Ok(Some(token)) => token,
            Ok(None) | Err(_) => {
                tracing::warn!(file = %path.display(), "cannot read --debug-token-file; refusing /debug/* to non-loopback peers");
                return Err(DebugRefusal::Unreadable);
            }
        };
        let a = Sha256::digest(presented.as_bytes());
        let b = Sha256::digest(expected.as_bytes());
        if bool::from(a.ct_eq(&b)) {
            Ok(())
        } else {
            Err(DebugRefusal::Invalid)
        }
    }
}

/// `127.0.0.0/8`, `::1`, and `127.0.0.0/8` mapped into IPv6 (a dual-stack listener's view).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The token in `path`, trimmed; `None` when it is empty or larger than a token can be.
fn read_token(path: &std::path::Path) -> std::io::Result<Option<String>> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    let token = text.trim();
    if token.is_empty() || text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Ok(None);
    }
    Ok(Some(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn loopback_is_admitted_and_others_need_the_current_token() {
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        for local in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = local.parse().unwrap();
            assert_eq!(
                DebugAccess::default().check(ip, &HeaderMap::new()),
                Ok(()),
                "{local}"
            );
        }
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            DebugAccess::default().check(mapped, &bearer("x")),
            Err(DebugRefusal::LoopbackOnly)
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("debug-token");
        std::fs::write(&path, "first\n").unwrap();
        let access = DebugAccess::new(Some(path.clone())).unwrap();
        assert_eq!(
            access.check(remote, &HeaderMap::new()),
            Err(DebugRefusal::Missing)
        );
        assert_eq!(access.check(remote, &bearer("wrong")), Err(DebugRefusal::Invalid));
        assert_eq!(access.check(remote, &bearer("first")), Ok(()));
        // Rotated: the new token works at once, the old one no longer.
        std::fs::write(&path, "second").unwrap();
        assert_eq!(access.check(remote, &bearer("first")), Err(DebugRefusal::Invalid));
        assert_eq!(access.check(remote, &bearer("second")), Ok(()));
        // Emptied or removed: refused, never admitted.
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(access.check(remote, &bearer("")), Err(DebugRefusal::Missing));
        assert_eq!(
            access.check(remote, &bearer("second")),
            Err(DebugRefusal::Unreadable)
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            access.check(remote, &bearer("second")),
            Err(DebugRefusal::Unreadable)
        );
    }

    #[test]
    fn a_bad_token_file_fails_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(matches!(
            DebugAccess::new(Some(missing)),
            Err(DebugTokenFileError::Read { .. })
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(matches!(
            DebugAccess::new(Some(empty)),
            Err(DebugTokenFileError::NotAToken(_))
        ));
        let huge = dir.path().join("huge");
        std::fs::write(&huge, "x".repeat(10_000)).unwrap();
        assert!(matches!(
            DebugAccess::new(Some(huge)),
            Err(DebugTokenFileError::NotAToken(_))
        ));
    }
}
