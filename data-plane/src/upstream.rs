//! A placement's upstream, pre-parsed when a table is built so requests never parse URLs.

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use routing_model::endpoint::Endpoint;

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
    /// Builds a placement's upstream from its endpoint, parsed with the same
    /// [`Endpoint::parse`] that validation runs, so an endpoint that validated always builds.
    pub fn new(placement: &str, endpoint: &str, metrics: &Metrics) -> Result<Self, UpstreamError> {
        let parsed = Endpoint::parse(endpoint).map_err(|reason| UpstreamError {
            placement: placement.to_owned(),
            endpoint: endpoint.to_owned(),
            reason,
        })?;
        Ok(Self {
            placement: placement.into(),
            scheme: parsed.scheme,
            authority: parsed.authority,
            base_path: parsed.base_path.into(),
            host_header: parsed.host_header,
            metrics: metrics.placement(placement),
        })
    }
}
