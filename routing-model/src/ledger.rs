//! What one session was sent, so that its ACKs and NACKs can be checked against it.
//!
//! A data plane may answer only for a snapshot this session sent it (a snapshot or a too-large
//! notice), or for the one its hello said it has when that is what is served. Each can be
//! answered once, in order: an answer for one entry retires every older one (the data plane
//! handles messages in order, so an older answer can no longer be on its way). Two answers are
//! legitimate on one entry: a NACK and then an ACK, because an operator releasing break-glass
//! makes the data plane apply the snapshot it refused while pinned, and ACK it.
//!
//! Anything else is a [`Violation`]: an ACK or NACK for something never sent, or a replay of
//! one already given. The control plane's session counts it and changes nothing. These are rules
//! of the protocol (PROTOCOL.md, "ACK and NACK only for what this session was sent"), so they
//! live beside it, where the fuzz target and both binaries' authors find them.

use std::collections::VecDeque;

use crate::protocol::SnapshotRef;

/// Entries kept; latest-wins delivery means only the newest few can still be answered.
pub const LEDGER_ENTRIES: usize = 16;

/// How an entry got into the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Sent as a snapshot.
    Sent,
    /// Sent as a too-large notice (the data plane NACKs it).
    TooLarge,
    /// Announced by the hello as already applied, and served.
    Announced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ack,
    Nack,
}

#[derive(Debug)]
struct Entry {
    snapshot: SnapshotRef,
    origin: Origin,
    answer: Option<Answer>,
}

/// An answer that does not match what the session was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// ACK of a snapshot this session was not sent (or that an answer to a newer one retired).
    #[error("ACK of a snapshot this session was not sent")]
    AckNotSent,
    /// The same snapshot ACKed twice.
    #[error("ACK of a snapshot already ACKed")]
    AckReplayed,
    /// NACK of a snapshot this session was not sent (or that it announced as applied).
    #[error("NACK of a snapshot this session was not sent")]
    NackNotSent,
    /// A NACK after an answer to the same snapshot.
    #[error("NACK of a snapshot already answered")]
    NackReplayed,
}

impl Violation {
    /// The `kind` label of `cellroute_protocol_errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::AckNotSent => "ack-not-sent",
            Self::AckReplayed => "ack-replayed",
            Self::NackNotSent => "nack-not-sent",
            Self::NackReplayed => "nack-replayed",
        }
    }
}

/// The snapshots one session may still answer for, oldest first.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: VecDeque<Entry>,
}

impl Ledger {
    /// Records that `snapshot` reached the data plane (sent, too-large notice, or announced).
    pub fn record(&mut self, snapshot: SnapshotRef, origin: Origin) {
        if self.entries.len() == LEDGER_ENTRIES {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            snapshot,
            origin,
            answer: None,
        });
    }

    fn find(&self, snapshot: &SnapshotRef) -> Option<usize> {
        self.entries.iter().rposition(|e| &e.snapshot == snapshot)
    }

    /// Checks an ACK of `snapshot`, and remembers it.
    pub fn ack(&mut self, snapshot: &SnapshotRef) -> Result<(), Violation> {
        let at = self.find(snapshot).ok_or(Violation::AckNotSent)?;
        let entry = &mut self.entries[at];
        if entry.answer == Some(Answer::Ack) {
            return Err(Violation::AckReplayed);
        }
        entry.answer = Some(Answer::Ack);
        self.entries.drain(..at);
        Ok(())
    }

    /// Checks a NACK of `snapshot`, and remembers it.
    pub fn nack(&mut self, snapshot: &SnapshotRef) -> Result<(), Violation> {
        let at = self.find(snapshot).ok_or(Violation::NackNotSent)?;
        let entry = &mut self.entries[at];
        if entry.origin == Origin::Announced {
            return Err(Violation::NackNotSent);
        }
        if entry.answer.is_some() {
            return Err(Violation::NackReplayed);
        }
        entry.answer = Some(Answer::Nack);
        self.entries.drain(..at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(version: i64) -> SnapshotRef {
        SnapshotRef {
            lineage: "l".into(),
            version,
            hash: serde_json::from_str(&format!("\"sha256:{}\"", "cd".repeat(32))).unwrap(),
        }
    }

    #[test]
    fn answers_only_for_what_was_sent_and_only_once() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.ack(&r(1)), Err(Violation::AckNotSent));
        assert_eq!(ledger.nack(&r(1)), Err(Violation::NackNotSent));
        ledger.record(r(1), Origin::Sent);
        assert_eq!(ledger.ack(&r(1)), Ok(()));
        assert_eq!(ledger.ack(&r(1)), Err(Violation::AckReplayed));
        assert_eq!(ledger.nack(&r(1)), Err(Violation::NackReplayed));
        assert_eq!(ledger.ack(&r(7)), Err(Violation::AckNotSent));
    }

    #[test]
    fn an_older_version_may_be_answered_before_a_newer_one_but_not_after() {
        let mut ledger = Ledger::default();
        ledger.record(r(1), Origin::Sent);
        ledger.record(r(2), Origin::Sent);
        ledger.record(r(3), Origin::Sent);
        assert_eq!(ledger.ack(&r(2)), Ok(()));
        assert_eq!(
            ledger.ack(&r(1)),
            Err(Violation::AckNotSent),
            "retired by the answer to 2"
        );
        assert_eq!(ledger.nack(&r(3)), Ok(()));
        assert_eq!(
            ledger.ack(&r(2)),
            Err(Violation::AckNotSent),
            "retired by the answer to 3"
        );
    }

    /// What a real data plane sends for a burst: version 1 applying, 2 waiting, 3 replacing 2.
    #[test]
    fn a_superseded_nack_after_the_answer_of_the_one_applying_is_honest() {
        let mut ledger = Ledger::default();
        for v in 1..=3 {
            ledger.record(r(v), Origin::Sent);
        }
        assert_eq!(ledger.ack(&r(1)), Ok(()));
        assert_eq!(ledger.nack(&r(2)), Ok(()));
        assert_eq!(ledger.ack(&r(3)), Ok(()));
    }

    #[test]
    fn break_glass_release_acks_what_was_nacked() {
        let mut ledger = Ledger::default();
        ledger.record(r(2), Origin::Sent);
        assert_eq!(ledger.nack(&r(2)), Ok(()));
        assert_eq!(ledger.nack(&r(2)), Err(Violation::NackReplayed));
        assert_eq!(ledger.ack(&r(2)), Ok(()));
        assert_eq!(ledger.ack(&r(2)), Err(Violation::AckReplayed));
    }

    #[test]
    fn the_announced_snapshot_may_be_acked_once_and_never_nacked() {
        let mut ledger = Ledger::default();
        ledger.record(r(4), Origin::Announced);
        assert_eq!(ledger.nack(&r(4)), Err(Violation::NackNotSent));
        assert_eq!(ledger.ack(&r(4)), Ok(()));
        assert_eq!(ledger.ack(&r(4)), Err(Violation::AckReplayed));
    }

    #[test]
    fn too_large_notices_are_nacked() {
        let mut ledger = Ledger::default();
        ledger.record(r(5), Origin::TooLarge);
        assert_eq!(ledger.nack(&r(5)), Ok(()));
    }

    #[test]
    fn the_ledger_is_bounded() {
        let mut ledger = Ledger::default();
        for v in 0..(LEDGER_ENTRIES as i64 * 4) {
            ledger.record(r(v), Origin::Sent);
        }
        assert_eq!(ledger.entries.len(), LEDGER_ENTRIES);
        assert_eq!(ledger.ack(&r(0)), Err(Violation::AckNotSent));
    }
}
