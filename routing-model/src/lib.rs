//! The routing model shared by every cellroute binary.
//!
//! A RoutingConfig maps customers to placements (cells) and placements to endpoint URLs. This
//! crate owns the one definition of what a *valid* RoutingConfig is, so that the control plane
//! and every data plane accept and reject exactly the same inputs:
//!
//! - [`manifest`]: the serde types of the manifest users `kubectl apply` (and data planes read
//!   from a file);
//! - [`parse`]: bytes to manifest, with the hardening a file from anywhere needs (size limit,
//!   UTF-8, duplicate keys, alias bombs, unknown fields);
//! - [`validate`]: manifest to [`ValidatedConfig`], the only way to obtain one, reporting every
//!   problem at once with the offending key;
//! - [`table`]: a [`ValidatedConfig`] compiled into an immutable [`RoutingTable`] whose lookup
//!   is a single hash probe;
//! - [`compose`]: one table from a RoutingConfig and its RoutingShards, checked with the same
//!   rules, each error naming its object;
//! - [`diff`]: what changed between two configs, for audit logs and history;
//! - [`delta`]: a change between two versions as data planes receive it (a merge patch);
//! - [`digest`]: the content hash as a hash tree, updated in the time of a change;
//! - [`endpoint`]: endpoint URLs, parsed the one way validation and the proxy both use;
//! - [`protocol`]: the WebSocket messages between control plane and data planes;
//! - [`ledger`]: which ACKs and NACKs a session may receive, given what it was sent;
//! - [`rollout`]: `spec.rollout` (staged delivery of a new table), its rules, and cohorts.
//!
//! - [`crd`] (feature `kube`): the `RoutingConfig` custom resource and its status, derived from
//!   the same spec type, for the control plane and `crdgen`.
//!
//! This crate never does I/O: callers read bytes and decide what to do with errors.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod compose;
pub mod compression;
#[cfg(feature = "kube")]
pub mod crd;
pub mod delta;
pub mod diff;
pub mod digest;
pub mod endpoint;
pub mod hash;
pub mod ledger;
pub mod manifest;
pub mod parse;
mod plain_map;
pub mod protocol;
pub mod rollout;
pub mod schema;
pub mod table;
pub mod validate;

pub use diff::{ConfigDiff, DiffSummary};
pub use hash::ContentHash;
pub use manifest::{CustomerMap, RoutingConfigManifest, RoutingConfigSpec};
pub use parse::{ConfigError, ParseError, ParseLimits, load};
pub use table::{Route, RoutingTable};
pub use validate::{ValidatedConfig, ValidationError, ValidationErrors, Warning};
