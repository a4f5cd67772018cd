//! The control plane's ledger of what one session sent (`routing_model::ledger`), against
//! sequences of events: versions published, sent or held back as the control plane's session
//! does (`Ledger::may_send`), republished after the object went missing; messages received by
//! the data plane and answered in the order its session answers them (the data plane's own
//! `control_plane::answers`, with applies that succeed or fail, break-glass released, and the
//! table-changed wakeups that ACK a re-applied snapshot); answers delivered in order. In hostile
//! inputs the peer also forges ACKs and NACKs, and the control plane may ignore `may_send`.
//!
//! Checked: nothing panics; the ledger never holds more than `LEDGER_ENTRIES` entries whatever
//! the peer sends; an answer for a snapshot never sent (another version, hash or lineage) is
//! always a violation; every answer it accepts is for a snapshot recorded and not yet retired,
//! each copy ACKed at most once and NACKed at most once, never a NACK of the announced one, and
//! never older than the last accepted; and an honest data plane's answers are never violations,
//! and once everything is delivered the newest version has been sent and answered last.
#![no_main]

use std::collections::{HashSet, VecDeque};

use arbitrary::Arbitrary;
use data_plane::control_plane::answers::{Answers, Arrival, Push};
use libfuzzer_sys::fuzz_target;
use routing_model::ContentHash;
use routing_model::ledger::{LEDGER_ENTRIES, Ledger, Origin, Violation};
use routing_model::protocol::{ClientMessage, SnapshotMessage, SnapshotRef};

#[derive(Debug, Arbitrary)]
enum Op {
    /// The control plane accepts a new version (of a new lineage: the object was re-created).
    Publish { new_lineage: bool, too_large: bool },
    /// The object went missing and came back with the same version.
    Republish,
    /// The data plane reads the next message.
    Receive,
    /// The applier handles the snapshot applying (refused: invalid, older, or pinned).
    Process { refused: bool },
    /// The session sees that apply's result and sends what is due.
    Finish { refused: bool },
    /// An operator releases break-glass: the newest pushed snapshot is applied again.
    Release,
    /// The session sees the active snapshot change.
    Notice,
    /// The control plane reads the data plane's next answer.
    Deliver,
    /// Hostile inputs only: an answer the peer makes up.
    Forge { ack: bool, pick: Pick },
    /// Hostile inputs only: a snapshot sent without asking `may_send`.
    Force,
}

#[derive(Debug, Arbitrary)]
enum Pick {
    /// One of the snapshots sent, by index.
    Sent(u8),
    /// A version never published.
    Never(u16),
    /// A sent one's version with another hash.
    OtherHash(u8),
    /// A sent one's version in another lineage.
    OtherLineage(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// The hello announced what is served (the session starts up to date).
    announce: bool,
    /// The data plane is pinned to its file (break-glass) when the session starts.
    pinned: bool,
    hostile: bool,
    ops: Vec<Op>,
}

fn hash(byte: u8) -> ContentHash {
    format!("sha256:{}", format!("{byte:02x}").repeat(32))
        .parse()
        .expect("a hash")
}

fn snapshot(reference: &SnapshotRef) -> Push {
    Push::Full(SnapshotMessage {
        routing_config: "default/routes".into(),
        snapshot: reference.clone(),
        spec: serde_json::from_value(serde_json::json!({
            "defaultPlacement": "a",
            "placementToEndpoint": {"a": "http://127.0.0.1:1"},
        }))
        .expect("a spec"),
    })
}

fn answered(message: &ClientMessage) -> (&SnapshotRef, bool) {
    match message {
        ClientMessage::Ack { snapshot } => (snapshot, true),
        ClientMessage::Nack { snapshot, .. } => (snapshot, false),
        ClientMessage::Hello(_) | ClientMessage::Health { .. } => unreachable!("the data plane's answers are ACKs and NACKs"),
    }
}

/// The control plane's session: its ledger, the version it should send, and what it recorded
/// (the oracle's view, never forgotten).
#[derive(Default)]
struct ControlPlane {
    ledger: Ledger,
    current: Option<(SnapshotRef, bool)>,
    held: bool,
    recorded: Vec<(SnapshotRef, Origin)>,
    acked: HashSet<usize>,
    nacked: HashSet<usize>,
    /// Index in `recorded` of the ledger's oldest entry: before it, everything is retired by an
    /// answer or forgotten for room.
    front: usize,
    last_answer: Option<SnapshotRef>,
}

/// What the control plane sends.
enum Wire {
    Snapshot(SnapshotRef),
    TooLarge(SnapshotRef),
}

impl ControlPlane {
    fn record(&mut self, reference: SnapshotRef, origin: Origin) {
        let full = !self.ledger.may_send();
        self.ledger.record(reference.clone(), origin);
        self.recorded.push((reference, origin));
        if full {
            self.front += 1;
        }
        self.check_size();
    }

    fn check_size(&self) {
        assert!(
            self.ledger.len() <= LEDGER_ENTRIES,
            "{} entries",
            self.ledger.len()
        );
        assert_eq!(
            self.ledger.len(),
            self.recorded.len() - self.front,
            "the ledger lost or kept entries"
        );
    }

    /// Sends the current version (the session's `publish`).
    fn send(&mut self, wire: &mut VecDeque<Wire>) {
        let Some((reference, too_large)) = self.current.clone() else {
            return;
        };
        if too_large {
            self.record(reference.clone(), Origin::TooLarge);
            wire.push_back(Wire::TooLarge(reference));
        } else {
            self.record(reference.clone(), Origin::Sent);
            wire.push_back(Wire::Snapshot(reference));
        }
    }

    /// A new value on the session's watch channel.
    fn changed(&mut self, wire: &mut VecDeque<Wire>) {
        self.held = !self.ledger.may_send();
        if !self.held {
            self.send(wire);
        }
    }

    /// An answer arrives: checked against the ledger, then against the oracle's rules.
    fn answer(
        &mut self,
        reference: &SnapshotRef,
        ack: bool,
        wire: &mut VecDeque<Wire>,
    ) -> Result<(), Violation> {
        let result = if ack {
            self.ledger.ack(reference)
        } else {
            self.ledger.nack(reference)
        };
        if result.is_ok() {
            // The copy it answers: the oldest not retired that could take it.
            let copy = (self.front..self.recorded.len()).find(|i| {
                let (r, origin) = &self.recorded[*i];
                r == reference
                    && if ack {
                        !self.acked.contains(i)
                    } else {
                        *origin != Origin::Announced && !self.acked.contains(i) && !self.nacked.contains(i)
                    }
            });
            let i = copy.unwrap_or_else(|| {
                panic!(
                    "accepted {} of {reference:?}, which has no copy that may take it",
                    if ack { "an ACK" } else { "a NACK" }
                )
            });
            assert!(if ack {
                self.acked.insert(i)
            } else {
                self.nacked.insert(i)
            });
            self.front = i;
            self.last_answer = Some(reference.clone());
        }
        self.check_size();
        // The session's `release`: a held version goes once there is room.
        if self.held && self.ledger.may_send() {
            self.held = false;
            self.send(wire);
        }
        result
    }
}

/// The applier's side of the data plane, as the session sees it.
#[derive(Default)]
struct Applier {
    pinned: bool,
    /// The result of the apply in progress, once the applier handled it.
    result: Option<bool>,
    /// The newest snapshot handed to the applier, and whether its content applies.
    latest_pushed: Option<(SnapshotRef, bool)>,
    /// The control-plane snapshot the table comes from.
    active: Option<SnapshotRef>,
}

impl Applier {
    fn process(&mut self, applying: Option<&SnapshotRef>, refused: bool) {
        let Some(applying) = applying else { return };
        if self.result.is_some() {
            return;
        }
        let ok = !refused && !self.pinned;
        self.result = Some(ok);
        self.latest_pushed = Some((applying.clone(), !refused));
        if ok {
            self.active = Some(applying.clone());
        }
    }
}

fuzz_target!(|input: Input| {
    let mut cp = ControlPlane::default();
    let mut wire = VecDeque::new();
    let mut outbox: VecDeque<ClientMessage> = VecDeque::new();
    let mut applier = Applier {
        // A pinned data plane serves its file: there is no pushed snapshot to announce.
        pinned: input.pinned && !input.announce,
        ..Applier::default()
    };
    let mut version = 1;
    let mut lineage = 0u32;
    let reference = |lineage: u32, version: i64| SnapshotRef {
        lineage: format!("uid-{lineage}"),
        version,
        hash: hash((version % 251) as u8),
    };
    let announced = input.announce.then(|| reference(lineage, version));
    if let Some(a) = &announced {
        cp.current = Some((a.clone(), false));
        cp.record(a.clone(), Origin::Announced);
        applier.active = Some(a.clone());
    }
    let mut answers = Answers::new(announced);
    let honest = !input.hostile;

    let deliver = |cp: &mut ControlPlane, outbox: &mut VecDeque<ClientMessage>, wire: &mut VecDeque<Wire>| {
        if let Some(message) = outbox.pop_front() {
            let (reference, ack) = answered(&message);
            let result = cp.answer(reference, ack, wire);
            if honest {
                assert_eq!(
                    result,
                    Ok(()),
                    "an honest data plane's {message:?} is a violation"
                );
            }
        }
    };
    let receive = |answers: &mut Answers,
                   applier: &mut Applier,
                   outbox: &mut VecDeque<ClientMessage>,
                   wire: &mut VecDeque<Wire>| {
        match wire.pop_front() {
            Some(Wire::Snapshot(r)) => {
                if let Arrival::Apply(_) = answers.snapshot(snapshot(&r)) {
                    applier.result = None;
                }
            }
            Some(Wire::TooLarge(r)) => {
                let nack = ClientMessage::Nack {
                    snapshot: r,
                    error: "too large".into(),
                    resync: false,
                };
                outbox.extend(answers.refuse(nack));
            }
            None => {}
        }
    };
    let finish = |answers: &mut Answers,
                  applier: &mut Applier,
                  outbox: &mut VecDeque<ClientMessage>,
                  refused: bool| {
        let Some(applying) = answers.applying().cloned() else {
            return;
        };
        applier.process(Some(&applying), refused);
        let reply = if applier.result == Some(true) {
            ClientMessage::Ack { snapshot: applying }
        } else {
            ClientMessage::Nack {
                snapshot: applying,
                error: "refused".into(),
                resync: false,
            }
        };
        let (due, next) = answers.finished(reply);
        outbox.extend(due);
        if next.is_some() {
            applier.result = None;
        }
    };

    for op in input.ops.iter().take(512) {
        match op {
            Op::Publish {
                new_lineage,
                too_large,
            } => {
                version += 1;
                if *new_lineage {
                    lineage += 1;
                }
                cp.current = Some((reference(lineage, version), *too_large));
                cp.changed(&mut wire);
            }
            Op::Republish => {
                if cp.current.is_some() {
                    cp.changed(&mut wire);
                }
            }
            Op::Receive => receive(&mut answers, &mut applier, &mut outbox, &mut wire),
            Op::Process { refused } => applier.process(answers.applying(), *refused),
            Op::Finish { refused } => finish(&mut answers, &mut applier, &mut outbox, *refused),
            Op::Release => {
                if applier.pinned {
                    applier.pinned = false;
                    if let Some((latest, true)) = &applier.latest_pushed {
                        applier.active = Some(latest.clone());
                    }
                }
            }
            Op::Notice => {
                if let Some(active) = applier.active.clone() {
                    outbox.extend(answers.reapplied(active));
                }
            }
            Op::Deliver => deliver(&mut cp, &mut outbox, &mut wire),
            Op::Forge { ack, pick } if input.hostile => {
                let sent = |i: &u8| {
                    (!cp.recorded.is_empty())
                        .then(|| cp.recorded[usize::from(*i) % cp.recorded.len()].0.clone())
                };
                let (forged, never) = match pick {
                    Pick::Sent(i) => match sent(i) {
                        Some(r) => (r, false),
                        None => continue,
                    },
                    Pick::Never(v) => (reference(lineage, -1 - i64::from(*v)), true),
                    Pick::OtherHash(i) => match sent(i) {
                        Some(mut r) => {
                            r.hash = hash(252);
                            (r, true)
                        }
                        None => continue,
                    },
                    Pick::OtherLineage(i) => match sent(i) {
                        Some(mut r) => {
                            r.lineage.push_str("-other");
                            (r, true)
                        }
                        None => continue,
                    },
                };
                let result = cp.answer(&forged, *ack, &mut wire);
                if never {
                    let want = if *ack {
                        Violation::AckNotSent
                    } else {
                        Violation::NackNotSent
                    };
                    assert_eq!(result, Err(want), "an answer for {forged:?}, never sent");
                }
            }
            Op::Force if input.hostile => cp.send(&mut wire),
            Op::Forge { .. } | Op::Force => {}
        }
    }
    if !honest {
        return;
    }
    // Everything in flight arrives, applies and is answered.
    loop {
        if !outbox.is_empty() {
            deliver(&mut cp, &mut outbox, &mut wire);
        } else if answers.applying().is_some() {
            finish(&mut answers, &mut applier, &mut outbox, false);
        } else if !wire.is_empty() {
            receive(&mut answers, &mut applier, &mut outbox, &mut wire);
        } else {
            break;
        }
    }
    assert!(
        !cp.held,
        "the newest version is still held back with nothing left to answer"
    );
    let sent_any = cp.recorded.iter().any(|(_, origin)| *origin != Origin::Announced);
    if sent_any {
        let newest = cp.current.as_ref().map(|(r, _)| r);
        assert_eq!(
            cp.last_answer.as_ref(),
            newest,
            "the newest version was not answered last"
        );
    }
});
