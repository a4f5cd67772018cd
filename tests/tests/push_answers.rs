//! Every pushed snapshot gets its answer, in order, and the answers are bounded.
//!
//! A scripted control plane sends what the real one never would (it keeps one pending snapshot
//! per session and serves only valid tables):
//! - a burst: a large snapshot, then several small ones while the large one is still applying.
//!   They apply in the order they arrived and the newest wins: a waiting one that a newer one
//!   replaces is NACKed as superseded, never applied after it, and every one is answered once;
//!   an older version afterwards is NACKed, not applied;
//! - a snapshot refused with an error far longer than the protocol allows: the NACK text is cut
//!   to `MAX_NACK_ERROR_BYTES` on a character boundary, marked with `…`, and so is the
//!   `last_nack` the admin API shows;
//! - a `too_large` notice: NACKed, naming both sizes; one that arrives while a snapshot applies
//!   is answered after it, so answers keep the order their messages arrived in.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use cellroute_tests::admin::AdminClient;
use cellroute_tests::fixture::{Cells, TOKEN};
use cellroute_tests::process::{DataPlane, Launch};
use cellroute_tests::proxy::ProxyClient;
use cellroute_tests::push::OBJECT;
use cellroute_tests::scripted_cp::{ScriptedControlPlane, Session, snapshot, spec};
use cellroute_tests::wait::{SOON, eventually};
use routing_model::RoutingConfigSpec;
use routing_model::protocol::{MAX_NACK_ERROR_BYTES, ServerMessage, SnapshotRef};
use serde_json::Value;

const LINEAGE: &str = "scripted-uid-1";
const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];
/// The large first snapshot: long enough to apply that the small ones arrive meanwhile.
const LARGE: usize = 100_000;

struct Setup {
    cells: Cells,
    cp: ScriptedControlPlane,
    dp: DataPlane,
    session: Session,
    admin: AdminClient,
    proxy: ProxyClient,
}

async fn setup() -> Setup {
    let cells = Cells::start(&CELLS).await;
    let mut cp = ScriptedControlPlane::start().await;
    let dp = DataPlane::launch(Launch::default().args(&[
        "--control-plane",
        &cp.url(),
        "--routing-config",
        OBJECT,
        "--id",
        "dp-1",
        // The test's own pauses (building a large table) must not end the session.
        "--heartbeat-timeout",
        "60s",
    ]))
    .await;
    let mut session = cp.session(SOON).await;
    assert_eq!(session.hello["type"], "hello", "{}", session.hello);
    session.welcome().await;
    let admin = AdminClient::new(dp.admin_addr(), TOKEN);
    let proxy = ProxyClient::new(dp.proxy_addr());
    Setup {
        cells,
        cp,
        dp,
        session,
        admin,
        proxy,
    }
}

/// A table routing `acme` to `cell`, with `extra` customers on cell-c.
fn table(cells: &Cells, acme: &str, extra: usize) -> RoutingConfigSpec {
    let customers = std::iter::once(("acme".to_owned(), acme.to_owned()))
        .chain((0..extra).map(|i| (format!("filler-{i:06}"), "cell-c".to_owned())));
    spec("cell-c", customers, CELLS.map(|c| (c, cells.url(c))))
}

fn reference(answer: &Value) -> i64 {
    answer["snapshot"]["version"].as_i64().expect("a version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_applies_in_order_latest_wins_and_every_snapshot_is_answered() {
    let Setup {
        cells,
        cp: _cp,
        dp: _dp,
        mut session,
        admin,
        proxy,
    } = setup().await;
    // Version 1 large; 2..=6 small, each routing acme elsewhere than the one before.
    let mut burst = vec![snapshot(OBJECT, LINEAGE, 1, table(&cells, "cell-a", LARGE))];
    for version in 2..=6 {
        let acme = if version % 2 == 0 { "cell-b" } else { "cell-a" };
        burst.push(snapshot(
            OBJECT,
            LINEAGE,
            version,
            table(&cells, acme, version as usize),
        ));
    }
    for message in &burst {
        session.send(message).await;
    }
    let mut answers: BTreeMap<i64, Value> = BTreeMap::new();
    let mut acked_in_order = Vec::new();
    while answers.len() < burst.len() {
        let answer = session.answer(Duration::from_secs(120)).await;
        let version = reference(&answer);
        if answer["type"] == "ack" {
            acked_in_order.push(version);
        }
        assert!(
            answers.insert(version, answer.clone()).is_none(),
            "version {version} was answered twice: {answer}"
        );
    }
    eprintln!("answers: {answers:?}");
    assert_eq!(
        answers.keys().copied().collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(answers[&1]["type"], "ack", "{}", answers[&1]);
    assert_eq!(answers[&6]["type"], "ack", "the newest must win: {}", answers[&6]);
    assert!(
        acked_in_order.windows(2).all(|w| w[0] < w[1]),
        "ACKs out of order: {acked_in_order:?}"
    );
    let superseded: Vec<i64> = answers
        .iter()
        .filter(|(_, a)| a["type"] == "nack")
        .map(|(v, a)| {
            let error = a["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("superseded"), "version {v}: {a}");
            *v
        })
        .collect();
    assert!(
        !superseded.is_empty(),
        "no snapshot waited while the large one applied, so latest-wins was not exercised: {answers:?}"
    );
    assert_eq!(
        admin.counter("cellroute_snapshots_superseded_total", &[]).await,
        superseded.len() as f64
    );
    // A superseded NACK is not a refusal of content.
    assert_eq!(admin.counter("cellroute_snapshot_nacks_total", &[]).await, 0.0);
    // What was applied, in order: only ACKed versions, each newer than the one before.
    let history = admin.history().await;
    let applied: Vec<i64> = history.json["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .rev()
        .map(|e| {
            let detail = e["source_detail"].as_str().unwrap_or_default();
            detail
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no version in {e}"))
        })
        .collect();
    assert_eq!(applied, acked_in_order, "{history}");
    assert_eq!(proxy.cell_for(Some("acme")).await.as_deref(), Ok("cell-b"));
    assert_eq!(admin.config().await.json["snapshot"]["version"], 6);

    // An older version after all that: NACKed, not applied.
    session
        .send(&snapshot(OBJECT, LINEAGE, 3, table(&cells, "cell-c", 0)))
        .await;
    let stale = session.answer(SOON).await;
    assert_eq!(
        (stale["type"].as_str(), reference(&stale)),
        (Some("nack"), 3),
        "{stale}"
    );
    let error = stale["error"].as_str().unwrap_or_default();
    assert!(error.contains("older than the active version 6"), "{error}");
    assert_eq!(proxy.cell_for(Some("acme")).await.as_deref(), Ok("cell-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_text_is_cut_to_the_protocol_bound() {
    let Setup {
        cells,
        cp: _cp,
        dp: _dp,
        mut session,
        admin,
        proxy,
    } = setup().await;
    session
        .send(&snapshot(OBJECT, LINEAGE, 1, table(&cells, "cell-a", 0)))
        .await;
    assert_eq!(session.answer(SOON).await["type"], "ack");

    // Thousands of customers on placements without an endpoint, with multi-byte characters in
    // the placement names: one error each, hundreds of kilobytes in all.
    let customers = (0..3_000).map(|i| (format!("customer-{i:05}"), format!("plätzchen-ü-{i}")));
    let bad = spec("cell-c", customers, CELLS.map(|c| (c, cells.url(c))));
    session.send(&snapshot(OBJECT, LINEAGE, 2, bad)).await;
    let nack = session.answer(SOON).await;
    assert_eq!(
        (nack["type"].as_str(), reference(&nack)),
        (Some("nack"), 2),
        "{nack}"
    );
    let error = nack["error"].as_str().expect("an error text");
    assert!(
        error.len() <= MAX_NACK_ERROR_BYTES,
        "a NACK text of {} bytes, over {MAX_NACK_ERROR_BYTES}",
        error.len()
    );
    assert!(
        error.len() > MAX_NACK_ERROR_BYTES - 64,
        "cut far too short: {} bytes",
        error.len()
    );
    assert!(
        error.ends_with('…'),
        "the cut is not marked: …{}",
        &error[error.len() - 40..]
    );
    assert!(
        error.contains("spec.customerToPlacement.customer-00000"),
        "{error}"
    );
    assert_eq!(admin.counter("cellroute_snapshot_nacks_total", &[]).await, 1.0);
    let config = admin.config().await;
    let last_nack = config.json["control_plane"]["last_nack"]
        .as_str()
        .expect("last_nack");
    assert!(
        last_nack.len() <= MAX_NACK_ERROR_BYTES + "version 2: ".len(),
        "last_nack is {} bytes",
        last_nack.len()
    );
    // The table is untouched.
    assert_eq!(config.json["snapshot"]["version"], 1);
    assert_eq!(proxy.cell_for(Some("acme")).await.as_deref(), Ok("cell-a"));

    // A snapshot the control plane could not send: NACKed, naming both sizes.
    let hash = routing_model::ContentHash::of_spec(&table(&cells, "cell-b", 0));
    session
        .send(&ServerMessage::TooLarge {
            routing_config: OBJECT.to_owned(),
            snapshot: SnapshotRef {
                lineage: LINEAGE.to_owned(),
                version: 3,
                hash,
            },
            bytes: 40_000_000,
            limit: 16_777_216,
        })
        .await;
    let too_large = session.answer(SOON).await;
    assert_eq!(
        (too_large["type"].as_str(), reference(&too_large)),
        (Some("nack"), 3)
    );
    let error = too_large["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("40000000 bytes") && error.contains("16777216"),
        "{error}"
    );
    eventually("the NACKs to be counted", SOON, || async {
        match admin.counter("cellroute_snapshot_nacks_total", &[]).await {
            2.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
}

/// A too-large notice that arrives while a large snapshot applies is NACKed after that
/// snapshot's answer: the control plane takes an answer as retiring every older snapshot, so
/// a NACK sent first would turn the ACK that follows into a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_large_notice_is_answered_after_the_snapshot_applying() {
    let Setup {
        cells,
        cp: _cp,
        dp: _dp,
        mut session,
        admin,
        proxy,
    } = setup().await;
    session
        .send(&snapshot(OBJECT, LINEAGE, 1, table(&cells, "cell-a", LARGE)))
        .await;
    let hash = routing_model::ContentHash::of_spec(&table(&cells, "cell-b", 0));
    session
        .send(&ServerMessage::TooLarge {
            routing_config: OBJECT.to_owned(),
            snapshot: SnapshotRef {
                lineage: LINEAGE.to_owned(),
                version: 2,
                hash,
            },
            bytes: 40_000_000,
            limit: 16_777_216,
        })
        .await;
    let first = session.answer(Duration::from_secs(120)).await;
    let second = session.answer(SOON).await;
    assert_eq!(
        [
            (first["type"].as_str(), reference(&first)),
            (second["type"].as_str(), reference(&second))
        ],
        [(Some("ack"), 1), (Some("nack"), 2)],
        "answers out of order: {first} then {second}"
    );
    assert_eq!(admin.config().await.json["snapshot"]["version"], 1);
    assert_eq!(proxy.cell_for(Some("acme")).await.as_deref(), Ok("cell-a"));
}
