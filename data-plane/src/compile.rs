//! From a validated config to the routing table the proxy serves: this data plane's own limits,
//! one pre-parsed upstream per placement, and the customer header.
//!
//! This is the one function every path runs after the shared validation: the applier before a
//! swap, and `data-plane validate` as a dry run, so "validate passes" means "a reload applies".
//! It never touches the active table.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use routing_model::{ParseLimits, RoutingTable, ValidatedConfig};

use crate::metrics::Metrics;
use crate::upstream::{Upstream, UpstreamError};

/// Limits on what this data plane accepts, beyond the shared validation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Parse limits of config documents (`--max-config-bytes`).
    pub parse: ParseLimits,
    /// Most customers a table may hold on this data plane (`--max-customers`).
    pub max_customers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            parse: ParseLimits::default(),
            max_customers: routing_model::validate::MAX_CUSTOMERS,
        }
    }
}

/// Why a valid config still cannot be served by this data plane.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// More customers than `--max-customers`.
    #[error(
        "spec.customerToPlacement: {customers} customers, over this data plane's --max-customers {limit}"
    )]
    TooManyCustomers {
        /// Customers in the config.
        customers: usize,
        /// The limit in force.
        limit: usize,
    },
    /// An endpoint could not be turned into an upstream.
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// The customer header is not a legal header name (validation should have refused it).
    #[error("spec.customerHeader: `{header}` is not a valid header name: {why}")]
    Header {
        /// The header.
        header: String,
        /// The parser's complaint.
        why: String,
    },
}

/// A table ready to be swapped in.
pub struct Compiled {
    /// The table the proxy routes with.
    pub table: Arc<RoutingTable<Arc<Upstream>>>,
    /// The customer header, parsed once.
    pub header: HeaderName,
}

/// Checks this data plane's limits on `config` (cheap; runs before the identical-content check).
pub fn check_limits(config: &ValidatedConfig, limits: &Limits) -> Result<(), CompileError> {
    let customers = config.spec().customer_to_placement.len();
    if customers > limits.max_customers {
        return Err(CompileError::TooManyCustomers {
            customers,
            limit: limits.max_customers,
        });
    }
    Ok(())
}

/// Compiles `config` into a routing table. Blocking (a large table takes a while): call it from
/// a blocking thread. `metrics` provides the per-placement request metrics of the upstreams.
pub fn compile(
    config: &ValidatedConfig,
    limits: &Limits,
    metrics: &Metrics,
) -> Result<Compiled, CompileError> {
    check_limits(config, limits)?;
    let upstreams = config
        .spec()
        .placement_to_endpoint
        .iter()
        .map(|(name, endpoint)| Ok((name.as_str(), Arc::new(Upstream::new(name, endpoint, metrics)?))))
        .collect::<Result<HashMap<_, _>, UpstreamError>>()?;
    let table = RoutingTable::build(config, |name, _| upstreams[name].clone());
    let header =
        HeaderName::from_bytes(table.customer_header().as_bytes()).map_err(|e| CompileError::Header {
            header: table.customer_header().to_owned(),
            why: e.to_string(),
        })?;
    Ok(Compiled {
        table: Arc::new(table),
        header,
    })
}
