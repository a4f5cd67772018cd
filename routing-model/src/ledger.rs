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

/// Entries kept. A session sends a snapshot only while [`Ledger::may_send`] says so (newer
/// versions wait, latest wins), so no entry that can still be answered is ever dropped: a data
/// plane answers every snapshot, in order, however many arrive while it applies one.
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
    /// Whether one more snapshot may be sent. Only the newest answered entry and the
    /// unanswered ones after it are kept (an answer retires every older entry), so a full ledger
    /// means [`LEDGER_ENTRIES`] - 1 snapshots or more still await their answer: the session
    /// holds the newest version back until the data plane answers one, rather than forget one
    /// it may still answer (which would turn an honest answer into a [`Violation`]).
    pub fn may_send(&self) -> bool {
        self.entries.len() < LEDGER_ENTRIES
    }

    /// Entries kept: at most [`LEDGER_ENTRIES`], whatever the peer sends.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True before anything was sent or announced.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that `snapshot` reached the data plane (sent, too-large notice, or announced).
    /// Check [`Ledger::may_send`] first: when full, the oldest entry is forgotten to stay
    /// bounded.
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

    /// The oldest entry of `snapshot` that `can_take` an answer. The same snapshot is sent
    /// twice when its object went missing and came back; a data plane answers both, in order,
    /// so the first answer is the first entry's.
    fn find(&self, snapshot: &SnapshotRef, can_take: impl Fn(&Entry) -> bool) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| &e.snapshot == snapshot && can_take(e))
    }

    fn answered(&mut self, at: usize, answer: Answer) {
        self.entries[at].answer = Some(answer);
        self.entries.drain(..at);
    }

    /// Checks an ACK of `snapshot`, and remembers it.
    pub fn ack(&mut self, snapshot: &SnapshotRef) -> Result<(), Violation> {
        match self.find(snapshot, |e| e.answer != Some(Answer::Ack)) {
            Some(at) => {
                self.answered(at, Answer::Ack);
                Ok(())
            }
            None if self.find(snapshot, |_| true).is_some() => Err(Violation::AckReplayed),
            None => Err(Violation::AckNotSent),
        }
    }

    /// Checks a NACK of `snapshot`, and remembers it.
    pub fn nack(&mut self, snapshot: &SnapshotRef) -> Result<(), Violation> {
        let nackable = |e: &Entry| e.origin != Origin::Announced;
        match self.find(snapshot, |e| nackable(e) && e.answer.is_none()) {
            Some(at) => {
                self.answered(at, Answer::Nack);
                Ok(())
            }
            None if self.find(snapshot, nackable).is_some() => Err(Violation::NackReplayed),
            None => Err(Violation::NackNotSent),
        }
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

    /// A data plane applying a large table answers nothing for a while, then every snapshot that
    /// arrived meanwhile, in order (superseded ones NACKed): the session must not have sent more
    /// than it can check, or the first answers would be counted as violations.
    #[test]
    fn a_session_that_sends_only_while_it_may_never_forgets_an_unanswered_snapshot() {
        let mut ledger = Ledger::default();
        let mut sent = Vec::new();
        for v in 1..=40 {
            if ledger.may_send() {
                ledger.record(r(v), Origin::Sent);
                sent.push(v);
            }
        }
        assert_eq!(sent, (1..=LEDGER_ENTRIES as i64).collect::<Vec<_>>());
        assert_eq!(ledger.ack(&r(1)), Ok(()));
        assert!(
            !ledger.may_send(),
            "the answered entry is kept until a newer one is answered"
        );
        assert_eq!(ledger.nack(&r(2)), Ok(()));
        assert!(ledger.may_send());
        for v in 3..=LEDGER_ENTRIES as i64 {
            assert_eq!(ledger.nack(&r(v)), Ok(()), "version {v}");
        }
        assert_eq!(ledger.len(), 1);
    }

    /// A snapshot sent again (its object went missing and came back) while the data plane still
    /// applies the first copy gets two honest answers, one per copy.
    #[test]
    fn a_snapshot_sent_twice_is_answered_twice() {
        let mut ledger = Ledger::default();
        ledger.record(r(5), Origin::Sent);
        ledger.record(r(5), Origin::Sent);
        assert_eq!(ledger.ack(&r(5)), Ok(()));
        assert_eq!(ledger.ack(&r(5)), Ok(()));
        assert_eq!(ledger.ack(&r(5)), Err(Violation::AckReplayed));
        ledger.record(r(6), Origin::Sent);
        ledger.record(r(6), Origin::Sent);
        assert_eq!(ledger.nack(&r(6)), Ok(()));
        assert_eq!(ledger.nack(&r(6)), Ok(()));
        assert_eq!(ledger.nack(&r(6)), Err(Violation::NackReplayed));
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
