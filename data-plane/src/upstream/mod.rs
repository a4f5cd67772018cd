//! A placement's upstream (its cell), pre-parsed when a table is built so requests never parse
//! URLs, and the connections the proxy keeps to it.
//!
//! An [`Upstream`] belongs to one routing table and is shared by every proxy worker. Each worker
//! forwards through its own [`WorkerUpstream`]: copies of the addresses and headers it sends, so
//! the reference counts a request touches live on that worker's cache lines, never on one shared
//! by every core. Connections belong to the worker too ([`pool`]): a request is served by the
//! worker that accepted its client connection, from start to end, on one thread.
//!
//! - [`pool`]: per-worker connections to each origin (HTTP/1.1 keep-alive, one multiplexed
//!   HTTP/2 connection);
//! - [`connect`]: TCP, and TLS with ALPN;
//! - [`body`]: the response body that hands its HTTP/1.1 connection back when it ends.

pub mod body;
pub mod connect;
pub mod pool;

use std::sync::{Arc, OnceLock};

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use routing_model::endpoint::{Endpoint, Protocol};

use crate::metrics::{Metrics, PlacementMetrics};
use pool::{OriginKey, OriginPool, Pools};

/// Everything the proxy needs to forward to one placement, for every worker.
#[derive(Debug)]
pub struct Upstream {
    /// Placement name (for error bodies and logs).
    pub placement: Box<str>,
    /// What the proxy speaks to the cell.
    pub protocol: Protocol,
    /// Host and port.
    pub authority: Authority,
    /// Request metric handles of this placement.
    pub metrics: PlacementMetrics,
    workers: Box<[Arc<WorkerUpstream>]>,
}

/// One worker's view of an [`Upstream`]: what a request forwarded by that worker reads.
#[derive(Debug)]
pub struct WorkerUpstream {
    /// Placement name (for error bodies and logs).
    pub placement: Box<str>,
    /// What the proxy speaks to the cell.
    pub protocol: Protocol,
    /// The forwarded request's scheme: `http` (for `http` and `h2c`) or `https`.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// The endpoint's path without a trailing slash; empty for `http://host:port`.
    pub base_path: Box<str>,
    /// The `Host` header sent upstream over HTTP/1.1 (HTTP/2 carries it as `:authority`).
    pub host_header: HeaderValue,
    /// Request metric handles of this placement (this worker writes its own shard).
    pub metrics: PlacementMetrics,
    /// Which worker this is.
    pub worker: usize,
    key: OriginKey,
    pool: OnceLock<Arc<OriginPool>>,
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
        let fail = |reason: String| UpstreamError {
            placement: placement.to_owned(),
            endpoint: endpoint.to_owned(),
            reason,
        };
        let parsed = Endpoint::parse(endpoint).map_err(fail)?;
        let key = OriginKey::new(parsed.protocol, &parsed.authority).map_err(fail)?;
        let placement_metrics = metrics.placement(placement);
        let workers = (0..metrics.workers())
            .map(|worker| {
                // Fresh allocations per worker: cloning these per request must not touch a
                // reference count another core is bumping too.
                Ok(Arc::new(WorkerUpstream {
                    placement: placement.into(),
                    protocol: parsed.protocol,
                    scheme: parsed.scheme.clone(),
                    authority: Authority::try_from(parsed.authority.as_str())
                        .map_err(|e| fail(e.to_string()))?,
                    base_path: parsed.base_path.as_str().into(),
                    host_header: HeaderValue::from_bytes(parsed.host_header.as_bytes())
                        .map_err(|e| fail(e.to_string()))?,
                    metrics: placement_metrics.clone(),
                    worker,
                    key: key.clone(),
                    pool: OnceLock::new(),
                }))
            })
            .collect::<Result<Vec<_>, UpstreamError>>()?
            .into_boxed_slice();
        Ok(Self {
            placement: placement.into(),
            protocol: parsed.protocol,
            authority: parsed.authority,
            metrics: placement_metrics,
            workers,
        })
    }

    /// Worker `worker`'s view of this upstream.
    pub fn for_worker(&self, worker: usize) -> &Arc<WorkerUpstream> {
        &self.workers[worker.min(self.workers.len() - 1)]
    }
}

impl WorkerUpstream {
    /// The connections to this upstream's origin in `pools` (the worker's own), resolved on the
    /// first request and kept.
    pub fn pool(&self, pools: &Pools) -> &Arc<OriginPool> {
        self.pool.get_or_init(|| pools.origin(&self.key))
    }
}
