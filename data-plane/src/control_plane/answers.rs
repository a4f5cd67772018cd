//! The order of a session's answers: a pure state machine the session drives with what arrives
//! and what finishes applying, and that says what to send when. The `ledger` fuzz target drives
//! it too, against the control plane's [`routing_model::ledger`], as the honest data plane.
//!
//! The control plane takes an answer to one snapshot as retiring every older one (messages are
//! handled in order), so answers must leave in the order the messages they answer arrived in:
//!
//! - snapshots apply one at a time, in order; while one applies, at most one waits, and a newer
//!   one replaces it: the replaced one is NACKed as superseded, after the answer of the one
//!   applying;
//! - a too-large notice is NACKed after the answers of everything that arrived before it (the
//!   snapshot applying, and the one waiting);
//! - a snapshot applied outside a push (an operator releasing break-glass re-applies the newest
//!   pushed one) is ACKed only when it is the snapshot this session answered last: once a newer
//!   one was answered (superseded, too large) it is retired, and the newer one's own answer
//!   tells the control plane where this data plane stands.
//!
//! It never touches the table, the metrics or the socket: the session does, with what it returns.

use routing_model::protocol::{ClientMessage, DeltaMessage, SnapshotMessage, SnapshotRef};

/// A pushed version: a whole table, or the changes from a version the data plane has. Both are
/// answered the same way, in the order they arrived.
#[derive(Debug)]
pub enum Push {
    /// A `snapshot` message.
    Full(SnapshotMessage),
    /// A `delta` message.
    Delta(DeltaMessage),
}

impl Push {
    /// The snapshot it makes, which its answer names.
    pub fn snapshot(&self) -> &SnapshotRef {
        match self {
            Push::Full(m) => &m.snapshot,
            Push::Delta(m) => &m.snapshot,
        }
    }
}

/// What became of a snapshot that arrived.
#[derive(Debug)]
pub enum Arrival {
    /// Nothing is applying: apply it now.
    Apply(Push),
    /// It waits for the apply in progress.
    Waits,
    /// It replaced the one waiting, whose superseded NACK is queued.
    Replaced {
        /// The snapshot replaced.
        older: SnapshotRef,
        /// The version that replaced it.
        newer: i64,
    },
}

/// The answers of one session, in the order they are due.
#[derive(Debug, Default)]
pub struct Answers {
    applying: Option<SnapshotRef>,
    pending: Option<Push>,
    /// Sent right after the answer of `applying`.
    after_applying: Vec<ClientMessage>,
    /// Sent right after the answer of `pending`.
    after_pending: Vec<ClientMessage>,
    /// The snapshot ACKed last (at first, the one the hello announced).
    acked: Option<SnapshotRef>,
    /// The snapshot of the last answer sent in this session.
    last_answered: Option<SnapshotRef>,
}

impl Answers {
    /// A session whose hello announced `applied`.
    pub fn new(applied: Option<SnapshotRef>) -> Self {
        Self {
            acked: applied,
            ..Self::default()
        }
    }

    /// The snapshot being applied, if any.
    pub fn applying(&self) -> Option<&SnapshotRef> {
        self.applying.as_ref()
    }

    /// The snapshot ACKed last, or announced.
    pub fn acked(&self) -> Option<&SnapshotRef> {
        self.acked.as_ref()
    }

    /// A snapshot arrived.
    pub fn snapshot(&mut self, snapshot: Push) -> Arrival {
        if self.applying.is_none() {
            self.applying = Some(snapshot.snapshot().clone());
            return Arrival::Apply(snapshot);
        }
        let newer = snapshot.snapshot().version;
        let Some(older) = self.pending.replace(snapshot) else {
            return Arrival::Waits;
        };
        self.after_applying
            .push(superseded(older.snapshot().clone(), newer));
        // What arrived after the replaced one, and so after its NACK.
        self.after_applying.append(&mut self.after_pending);
        Arrival::Replaced {
            older: older.snapshot().clone(),
            newer,
        }
    }

    /// A NACK of a message that is not applied (a too-large notice): returned when it may be
    /// sent now, else queued behind the answers due before it.
    pub fn refuse(&mut self, nack: ClientMessage) -> Option<ClientMessage> {
        if self.applying.is_none() {
            self.last_answered = Some(answered(&nack).clone());
            return Some(nack);
        }
        if self.pending.is_none() {
            self.after_applying.push(nack);
        } else {
            self.after_pending.push(nack);
        }
        None
    }

    /// The apply in progress ended with `reply` (its ACK or NACK): what to send now, in order,
    /// and the snapshot to apply next.
    pub fn finished(&mut self, reply: ClientMessage) -> (Vec<ClientMessage>, Option<Push>) {
        if let ClientMessage::Ack { snapshot } = &reply {
            self.acked = Some(snapshot.clone());
        }
        let mut out = vec![reply];
        out.append(&mut self.after_applying);
        self.last_answered = out.last().map(|m| answered(m).clone());
        let next = self.pending.take();
        self.applying = next.as_ref().map(|n| n.snapshot().clone());
        self.after_applying = std::mem::take(&mut self.after_pending);
        (out, next)
    }

    /// The active snapshot became `snapshot` outside a push reply: the ACK to send, if one is due.
    pub fn reapplied(&mut self, snapshot: SnapshotRef) -> Option<ClientMessage> {
        if self.acked.as_ref() == Some(&snapshot)
            || self.applying.as_ref() == Some(&snapshot)
            || self.last_answered.as_ref() != Some(&snapshot)
        {
            return None;
        }
        self.acked = Some(snapshot.clone());
        Some(ClientMessage::Ack { snapshot })
    }
}

/// The NACK of a snapshot a newer one replaced before it could be applied: not a refusal of its
/// content.
pub fn superseded(snapshot: SnapshotRef, newer: i64) -> ClientMessage {
    let error = format!(
        "superseded: version {newer} arrived while version {} was waiting to be applied; not applied",
        snapshot.version
    );
    ClientMessage::Nack {
        snapshot,
        error,
        resync: false,
    }
}

fn answered(message: &ClientMessage) -> &SnapshotRef {
    match message {
        ClientMessage::Ack { snapshot } | ClientMessage::Nack { snapshot, .. } => snapshot,
        // The session never hands a hello or a health report here.
        ClientMessage::Hello(_) | ClientMessage::Health { .. } => unreachable!("not an answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing_model::ledger::{Ledger, Origin};

    fn r(version: i64) -> SnapshotRef {
        SnapshotRef {
            lineage: "l".into(),
            version,
            hash: serde_json::from_str(&format!("\"sha256:{}\"", "ab".repeat(32))).unwrap(),
        }
    }

    fn snapshot(version: i64) -> Push {
        Push::Full(SnapshotMessage {
            routing_config: "default/routes".into(),
            snapshot: r(version),
            spec: serde_json::from_value(serde_json::json!({
                "defaultPlacement": "a",
                "placementToEndpoint": {"a": "http://127.0.0.1:1"},
            }))
            .unwrap(),
        })
    }

    fn ack(version: i64) -> ClientMessage {
        ClientMessage::Ack { snapshot: r(version) }
    }

    fn nack(version: i64, error: &str) -> ClientMessage {
        ClientMessage::Nack {
            snapshot: r(version),
            error: error.into(),
            resync: false,
        }
    }

    /// Every answer, checked by the control plane's ledger of what it sent.
    fn check(ledger: &mut Ledger, answers: &[ClientMessage]) {
        for answer in answers {
            let checked = match answer {
                ClientMessage::Ack { snapshot } => ledger.ack(snapshot),
                ClientMessage::Nack { snapshot, .. } => ledger.nack(snapshot),
                ClientMessage::Hello(_) | ClientMessage::Health { .. } => unreachable!(),
            };
            assert_eq!(checked, Ok(()), "{answer:?}");
        }
    }

    #[test]
    fn superseded_nacks_follow_the_answer_of_the_one_applying() {
        let mut answers = Answers::default();
        assert!(matches!(answers.snapshot(snapshot(1)), Arrival::Apply(_)));
        assert!(matches!(answers.snapshot(snapshot(2)), Arrival::Waits));
        assert!(matches!(
            answers.snapshot(snapshot(3)),
            Arrival::Replaced { newer: 3, .. }
        ));
        let (out, next) = answers.finished(ack(1));
        assert_eq!(out[0], ack(1));
        assert!(
            matches!(&out[1], ClientMessage::Nack { snapshot, error, .. } if snapshot.version == 2 && error.starts_with("superseded:"))
        );
        assert_eq!(next.unwrap().snapshot().version, 3);
        let (out, next) = answers.finished(ack(3));
        assert_eq!(out, [ack(3)]);
        assert!(next.is_none());
    }

    /// A too-large notice used to be NACKed as it arrived, before the answer of the snapshot
    /// applying: the control plane then counted that answer (and the waiting one's) as answers
    /// for retired snapshots, protocol errors of an honest data plane.
    #[test]
    fn a_too_large_nack_waits_for_the_answers_due_before_it() {
        let mut ledger = Ledger::default();
        for v in 1..=4 {
            ledger.record(
                r(v),
                if v % 2 == 0 {
                    Origin::TooLarge
                } else {
                    Origin::Sent
                },
            );
        }
        let mut answers = Answers::default();
        let mut sent = Vec::new();
        assert!(matches!(answers.snapshot(snapshot(1)), Arrival::Apply(_)));
        assert_eq!(answers.refuse(nack(2, "too large")), None);
        assert!(matches!(answers.snapshot(snapshot(3)), Arrival::Waits));
        assert_eq!(answers.refuse(nack(4, "too large")), None);
        let (out, next) = answers.finished(ack(1));
        sent.extend(out);
        assert_eq!(next.map(|n| n.snapshot().version), Some(3));
        let (out, next) = answers.finished(ack(3));
        sent.extend(out);
        assert!(next.is_none());
        assert_eq!(sent, [ack(1), nack(2, "too large"), ack(3), nack(4, "too large")]);
        check(&mut ledger, &sent);
        // With nothing applying, a notice is answered at once.
        assert_eq!(answers.refuse(nack(5, "too large")), Some(nack(5, "too large")));
    }

    #[test]
    fn a_too_large_nack_after_a_replaced_snapshot_follows_its_superseded_nack() {
        let mut ledger = Ledger::default();
        for (v, origin) in [
            (1, Origin::Sent),
            (2, Origin::Sent),
            (3, Origin::TooLarge),
            (4, Origin::Sent),
        ] {
            ledger.record(r(v), origin);
        }
        let mut answers = Answers::default();
        let _ = answers.snapshot(snapshot(1));
        let _ = answers.snapshot(snapshot(2));
        assert_eq!(answers.refuse(nack(3, "too large")), None);
        assert!(matches!(answers.snapshot(snapshot(4)), Arrival::Replaced { .. }));
        let (mut sent, _) = answers.finished(ack(1));
        sent.extend(answers.finished(ack(4)).0);
        let versions: Vec<i64> = sent.iter().map(|m| answered(m).version).collect();
        assert_eq!(versions, [1, 2, 3, 4]);
        check(&mut ledger, &sent);
    }

    /// Break-glass released: the newest pushed snapshot, NACKed while pinned, is ACKed.
    #[test]
    fn a_reapplied_snapshot_is_acked_when_it_was_answered_last() {
        let mut ledger = Ledger::default();
        ledger.record(r(1), Origin::Sent);
        let mut answers = Answers::default();
        let _ = answers.snapshot(snapshot(1));
        let (sent, _) = answers.finished(nack(1, "pinned"));
        check(&mut ledger, &sent);
        let again = answers.reapplied(r(1));
        assert_eq!(again, Some(ack(1)));
        check(&mut ledger, &[ack(1)]);
        assert_eq!(answers.reapplied(r(1)), None, "ACKed once");
    }

    /// Released after a newer snapshot's superseded NACK had gone out, the data plane used to ACK
    /// the older one that NACK retired (a protocol error of an honest data plane).
    #[test]
    fn a_reapplied_snapshot_older_than_the_last_answer_is_not_acked() {
        let mut answers = Answers::default();
        let _ = answers.snapshot(snapshot(1));
        let _ = answers.snapshot(snapshot(2));
        let _ = answers.snapshot(snapshot(3));
        let (sent, next) = answers.finished(nack(1, "pinned"));
        assert_eq!(sent.len(), 2, "v1's NACK, then v2's superseded NACK");
        assert_eq!(next.unwrap().snapshot().version, 3);
        assert_eq!(answers.reapplied(r(1)), None);
        // Nor one this session never answered (pushed in an earlier session).
        assert_eq!(Answers::default().reapplied(r(9)), None);
    }
}
