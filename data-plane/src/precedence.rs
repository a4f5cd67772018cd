//! Source precedence: who decides the routing table, decided in one place.
//!
//! A data plane is in one of three [`Mode`]s:
//! - **local**: no control-plane snapshot is active; the `--config` file decides;
//! - **managed**: a control-plane snapshot (pushed, or loaded from the cache) is active; the
//!   control plane decides, and local changes are refused so that what the control plane shows
//!   as applied is what this data plane serves;
//! - **pinned-to-file**: an operator forced the local file (break-glass); pushed snapshots are
//!   refused until the pin is released.
//!
//! Every path that could change the table asks [`decide`] first, with the [`Change`] it wants:
//! a push, the cache load at startup, a file reload (watch, SIGHUP, `POST /admin/reload`),
//! `POST /admin/rollback`, and the two directions of `POST /admin/source`. The answer is the
//! mode to enter once the change applied, or the [`Refusal`] to report (409 on the admin API,
//! a NACK on the push). The applier is the only caller; it runs one change at a time, so the
//! mode it reads is the mode the change applies in.
//!
//! | mode \ change  | push      | cache     | file reload | rollback | pin file | follow CP | release |
//! |----------------|-----------|-----------|-------------|----------|----------|-----------|---------|
//! | local          | → managed | → managed | local       | local    | → pinned | → managed | local   |
//! | managed        | managed   | managed   | refused     | refused  | → pinned | managed   | managed |
//! | pinned-to-file | refused   | refused   | pinned      | pinned   | pinned   | → managed | → local |

use crate::state::Mode;

/// A change some path wants to make to the routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A snapshot pushed by the control plane.
    Push,
    /// The last-known-good cache, at startup.
    CacheLoad,
    /// The `--config` file, re-read (startup, watch, SIGHUP, `POST /admin/reload`).
    FileReload,
    /// `POST /admin/rollback`: re-apply a version from history.
    Rollback,
    /// `POST /admin/source {"source":"file"}`: break-glass, apply and pin the local file.
    PinFile,
    /// `POST /admin/source {"source":"control-plane"}` with a pushed snapshot to return to.
    FollowControlPlane,
    /// `POST /admin/source {"source":"control-plane"}` before any snapshot was pushed: only the
    /// pin is released; nothing is applied.
    ReleasePin,
}

/// Why a change is refused in the current mode. Nothing was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A local file change while the control plane manages routing.
    #[error(
        "the control plane manages this data plane's routing, so local file changes are not applied; force the file with POST /admin/source {{\"source\":\"file\"}}"
    )]
    ManagedFile,
    /// A local rollback while the control plane manages routing: the control plane would keep
    /// showing the data plane as applying its version, and undo the rollback on the next push.
    #[error(
        "the control plane manages this data plane's routing, so a local rollback is not applied (the control plane would still show its version as applied here, and undo the rollback on its next push); roll back the RoutingConfig instead, or pin the local file first with POST /admin/source {{\"source\":\"file\"}}"
    )]
    ManagedRollback,
    /// A pushed (or cached) snapshot while an operator pinned the data plane to its file.
    #[error(
        "an operator pinned this data plane to its local file (POST /admin/source); control-plane snapshots are not applied until it is released"
    )]
    Pinned,
}

/// Whether `change` may apply in `mode`, and the mode the data plane is in once it has applied.
/// A change that fails to apply leaves the mode as it was.
pub fn decide(mode: Mode, change: Change) -> Result<Mode, Refusal> {
    use Change::*;
    use Mode::*;
    match (mode, change) {
        (PinnedToFile, Push | CacheLoad) => Err(Refusal::Pinned),
        (_, Push | CacheLoad | FollowControlPlane) => Ok(Managed),
        (Managed, FileReload) => Err(Refusal::ManagedFile),
        (Managed, Rollback) => Err(Refusal::ManagedRollback),
        (mode, FileReload | Rollback) => Ok(mode),
        (_, PinFile) => Ok(PinnedToFile),
        (PinnedToFile, ReleasePin) => Ok(Local),
        (mode, ReleasePin) => Ok(mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_in_the_module_doc_holds() {
        use Change::*;
        use Mode::*;
        let changes = [
            Push,
            CacheLoad,
            FileReload,
            Rollback,
            PinFile,
            FollowControlPlane,
            ReleasePin,
        ];
        let expect: [(Mode, [Result<Mode, Refusal>; 7]); 3] = [
            (
                Local,
                [
                    Ok(Managed),
                    Ok(Managed),
                    Ok(Local),
                    Ok(Local),
                    Ok(PinnedToFile),
                    Ok(Managed),
                    Ok(Local),
                ],
            ),
            (
                Managed,
                [
                    Ok(Managed),
                    Ok(Managed),
                    Err(Refusal::ManagedFile),
                    Err(Refusal::ManagedRollback),
                    Ok(PinnedToFile),
                    Ok(Managed),
                    Ok(Managed),
                ],
            ),
            (
                PinnedToFile,
                [
                    Err(Refusal::Pinned),
                    Err(Refusal::Pinned),
                    Ok(PinnedToFile),
                    Ok(PinnedToFile),
                    Ok(PinnedToFile),
                    Ok(Managed),
                    Ok(Local),
                ],
            ),
        ];
        for (mode, row) in expect {
            for (change, want) in changes.iter().zip(row) {
                assert_eq!(decide(mode, *change), want, "{mode:?} + {change:?}");
            }
        }
    }
}
