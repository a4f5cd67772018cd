//! Staged rollout: what the control plane decides about a new table while it reaches the
//! fleet a share at a time (`spec.rollout`, see `routing_model::rollout` for the contract).
//!
//! A rollout is a small state machine whose whole state is `status.rollout`, written by the
//! leader before it acts on it (like the version of a table in `status.snapshot`), so a
//! restarted or new leader resumes at the recorded step, never skipping or repeating one:
//! - [`judge`]: the decision for one look at a running rollout (wait, next step, complete,
//!   halt, pause, resume, abort), a pure function of the spec, the recorded state, what the
//!   data planes report and the user's annotations;
//! - [`observe`]: what the data planes report, counted by cohort;
//! - [`record`]: the recorded state, as the status says it and as the leader signs it.
//!
//! While a rollout runs, the served table (`status.snapshot`) stays the previous one, which the
//! data planes outside the step's share keep; the new one is the store's canary. A halt or an
//! abort returns the previous table to every data plane as a new version (data planes never
//! take an older version), so the data planes that never got the bad table never see it.

pub mod judge;
pub mod observe;
pub mod record;

/// Annotation that holds a rollout at its step while its value is `paused`; removing it
/// resumes the rollout (the step's pause starts again).
pub const PAUSE_ANNOTATION: &str = "cellroute.dev/rollout";
/// Annotation whose value is a version: the rollout of that version skips its remaining steps
/// and goes to every data plane.
pub const PROMOTE_ANNOTATION: &str = "cellroute.dev/rollout-promote";
/// Annotation whose value is a version: the rollout of that version stops, and the data planes
/// that had it get the previous table back.
pub const ABORT_ANNOTATION: &str = "cellroute.dev/rollout-abort";
