//! Where a routing table came from and what caused it to be applied.
//!
//! Plain labels shared by [`crate::state`] (which records them), [`crate::metrics`] (which
//! exports the active source) and the admin API. They live apart from both so that metrics never
//! depend on the state that holds upstreams, which hold metric handles.

use serde::Serialize;

/// Where a table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The local `--config` file.
    File,
    /// A snapshot pushed by the control plane.
    ControlPlane,
    /// The last-known-good cache on disk.
    Cache,
    /// A version re-applied from history by `POST /admin/rollback`.
    Rollback,
}

impl Source {
    /// Every source, for metrics that show one as active.
    pub const ALL: [Source; 4] = [
        Source::File,
        Source::ControlPlane,
        Source::Cache,
        Source::Rollback,
    ];

    /// True when a success from `self` says the failure of `other` is over: the file for the
    /// file; the control plane and its cache (which holds the control plane's snapshots) for
    /// each other; a rollback for a rollback.
    pub fn same_origin(self, other: Source) -> bool {
        use Source::*;
        matches!(
            (self, other),
            (File, File) | (Rollback, Rollback) | (ControlPlane | Cache, ControlPlane | Cache)
        )
    }

    /// The label value used in metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::ControlPlane => "control-plane",
            Source::Cache => "cache",
            Source::Rollback => "rollback",
        }
    }
}

/// What caused an apply attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// Process start.
    Startup,
    /// The file watcher saw the config file change.
    Watch,
    /// SIGHUP.
    Sighup,
    /// `POST /admin/reload`.
    AdminReload,
    /// `POST /admin/rollback`.
    AdminRollback,
    /// `POST /admin/source` (break-glass switch between file and control plane).
    AdminSource,
    /// A snapshot pushed by the control plane.
    Push,
}

impl Trigger {
    /// The value used in logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Watch => "watch",
            Trigger::Sighup => "sighup",
            Trigger::AdminReload => "admin-reload",
            Trigger::AdminRollback => "admin-rollback",
            Trigger::AdminSource => "admin-source",
            Trigger::Push => "push",
        }
    }
}
