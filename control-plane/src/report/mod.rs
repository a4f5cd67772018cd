//! What the control plane decides and reports about each table, after sources have offered it
//! and the push has delivered it: the flow reads source → snapshot → push → report.
//!
//! - [`status`] and [`shard_status`]: what a RoutingConfig's and a RoutingShard's status should
//!   say, as pure functions of what was decided;
//! - [`writer`]: the leader's writes of those statuses (merge patches of what changed) and the
//!   Events of each decision;
//! - [`replicas`]: each replica's own data-plane counts in the status, and the replica Leases
//!   that say whose counts are live.
//!
//! Nothing here watches the API server or decides what to serve; `source` does that and calls
//! in here to say what it decided.

pub mod replicas;
pub mod shard_status;
pub mod status;
pub mod writer;

/// Field manager of everything this control plane writes (statuses, Leases, the injector's
/// certificate), so `managedFields` tell its writes from anyone else's.
pub const FIELD_MANAGER: &str = "cellroute-control-plane";
