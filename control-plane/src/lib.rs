//! The cellroute control plane.
//!
//! It validates RoutingConfigs (each with the RoutingShards labelled for it: one table) with the
//! shared `routing-model` rules and keeps, per table, the last valid snapshot to serve. One module per concern:
//! - [`source`]: where RoutingConfigs come from (Kubernetes, or a file) behind one trait;
//! - [`snapshot`]: the served snapshots, one per object, versions that never go backwards;
//! - [`rollout`]: staged rollout of a new table, a share of the data planes at a time, halted
//!   and reverted by its analysis;
//! - [`report`]: what the control plane decided, as it reports it: statuses, Events, and each
//!   replica's data-plane counts;
//! - [`leader`]: the lease that picks the one replica writing status and Events;
//! - [`served_spec`] and [`status_key`]: the record of the served table in the status, signed,
//!   so every replica serves it under the same version and recovers only what this control plane
//!   accepted;
//! - [`push`]: the WebSocket snapshot push to data planes, with ACK/NACK and auth;
//! - [`http`]: health, readiness, metrics, debug endpoints and the push endpoint;
//! - [`inject`]: the sidecar injector, a mutating admission webhook on its own HTTPS listener;
//! - [`split`] and [`split_cmd`]: `control-plane split`, one large routing file into a
//!   RoutingConfig and RoutingShards that `kubectl apply` accepts;
//! - [`metrics`], [`cli`], [`crd`] (the generated CRDs), [`run`] (wiring and shutdown).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cli;
pub mod crd;
pub mod http;
pub mod inject;
pub mod leader;
pub mod merge_patch;
pub mod metrics;
pub mod push;
pub mod report;
pub mod rollout;
pub mod run;
pub mod served_spec;
pub mod snapshot;
pub mod source;
pub mod split;
pub mod split_cmd;
pub mod status_key;
pub mod tls;
pub mod validate_cmd;
