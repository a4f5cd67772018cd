//! The cellroute data plane: a sidecar reverse proxy that routes each request to the cell that
//! owns its customer.
//!
//! Architecture, one module per concern:
//! - [`cli`]: flags and environment variables;
//! - [`state`]: the active routing table behind one `ArcSwap`, its history and last error;
//! - [`precedence`]: who decides the table (local file, control plane, break-glass pin), in one
//!   decision function every change asks;
//! - [`applier`]: the single task through which every change is applied, in a total order;
//! - [`compile`]: a validated config to the table the proxy serves (shared with `validate`);
//! - [`source`]: where configs come from (the local file, its watcher, SIGHUP);
//! - [`control_plane`]: the session with the control plane (snapshots in, ACK/NACK out);
//! - [`cache`]: the crash-safe last-known-good snapshot on disk, and the task writing it;
//! - [`identity`]: this data plane's id as the control plane sees it;
//! - [`proxy`]: the request path, one worker per core: one `ArcSwap` load, one hash probe,
//!   forward (HTTP/1.x, HTTP/2, gRPC, upgrades);
//! - [`admin`]: health, readiness, metrics and the admin API (and the probe-only health
//!   listener);
//! - [`upstream`]: the cells a table routes to, and each worker's connections to them;
//! - [`metrics`]: every Prometheus metric, registered in one place (request metrics sharded
//!   per worker);
//! - [`provenance`]: where a table came from and why it was applied (labels shared by state
//!   and metrics);
//! - [`tls`]: TLS client settings (system roots plus a flag's CAs) for the control plane and
//!   `https` cells;
//! - [`run`]: wiring and graceful shutdown.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod applier;
pub mod cache;
pub mod cli;
pub mod compile;
pub mod control_plane;
pub mod identity;
pub mod metrics;
pub mod precedence;
pub mod provenance;
pub mod proxy;
pub mod run;
pub mod source;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod validate_cmd;
