//! Where routing configs come from, and what makes the data plane re-read them.
//!
//! Every source only *triggers* the [`crate::applier`]; it never touches the active table.

pub mod file_watch;
pub mod signal;
