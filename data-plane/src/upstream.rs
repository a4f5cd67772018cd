//! A placement's upstream, pre-parsed when a table is built so requests never parse URLs.

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

use crate::metrics::{Metrics, PlacementMetrics};

/// Everything the proxy needs to forward to one placement.
#[derive(Debug)]
pub struct Upstream {
    /// Placement name (for error bodies and logs).
    pub placement: Box<str>,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// The endpoint's path without a trailing slash; empty for `http://host:port`.
    pub base_path: Box<str>,
    /// The `Host` header sent upstream.
    pub host_header: HeaderValue,
    /// Request metric handles of this placement.
    pub metrics: PlacementMetrics,
}

/// Why an endpoint validated by the routing model still cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("endpoint `{endpoint}` of placement `{placement}` is not usable: {reason}")]
pub struct UpstreamError {
    placement: String,
    endpoint: String,
    reason: String,
}

impl Upstream {
    /// Parses a validated endpoint. Validation already checked scheme and host, so failures here
    /// mean the two URL parsers disagree; they are reported, never panicked on.
    pub fn new(placement: &str, endpoint: &str, metrics: &Metrics) -> Result<Self, UpstreamError> {
        let fail = |reason: String| UpstreamError {
            placement: placement.to_owned(),
            endpoint: endpoint.to_owned(),
            reason,
        };
        let uri: Uri = endpoint.parse().map_err(|e| fail(format!("{e}")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| fail("no scheme".to_owned()))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| fail("no host".to_owned()))?;
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|e| fail(format!("{e}")))?;
        Ok(Self {
            placement: placement.into(),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').into(),
            host_header,
            metrics: metrics.placement(placement),
        })
    }
}
