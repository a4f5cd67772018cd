//! The control plane against a peer with a valid token that does not behave: what issue #10's
//! attacker tried, sent to the real binary over a real socket (file mode, static tokens).
//!
//! - a hash that used to panic the session is refused as a protocol error, and leaves no ghost;
//! - identity comes from the token, not from the hello: another token's holder cannot touch a
//!   data plane's record by naming its id, and ids must be Kubernetes names;
//! - ACKs and NACKs count only for what the session was sent: never-sent, replayed and retired
//!   answers are counted as protocol errors and change nothing; and a peer that answers late,
//!   but honestly, is never sent more than its session can check, so none of its answers is;
//! - what a peer sends is bounded: oversized messages are refused at the frame header, NACK
//!   texts are cut, and six closed sessions leave the control plane's memory where it was.

#![forbid(unsafe_code)]

use cellroute_tests::fixture::Cells;
use cellroute_tests::peer::{Peer, hello, rss_bytes};
use cellroute_tests::push::{
    DP_TOKEN, DP_TOKEN_LINE, OBJECT, OTHER_TOKEN, OTHER_TOKEN_LINE, Scene, Table, static_identity,
};
use cellroute_tests::wait::{SOON, eventually};
use cellroute_tests::ws::{self, CLOSE_POLICY, CLOSE_PROTOCOL, CLOSE_TOO_BIG, OP_TEXT};
use serde_json::{Value, json};

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];

fn routes(cells: &Cells) -> Table {
    Table::new(cells, &CELLS, "cell-c")
}

/// The frame of issue #10: 64 bytes of "hex" of which 62 are 31 two-byte characters.
fn poisoned_ack() -> String {
    format!(
        r#"{{"type":"ack","snapshot":{{"lineage":"x","version":1,"hash":"sha256:a{}b"}}}}"#,
        "é".repeat(31)
    )
}

async fn protocol_errors(scene: &Scene, kind: &str) -> f64 {
    scene
        .cp
        .metric("cellroute_protocol_errors_total", &[("kind", kind)])
        .await
}

/// Waits until `cellroute_data_planes{state}` is `want`.
async fn wait_state_metric(scene: &Scene, state: &str, want: f64) {
    eventually(
        &format!("cellroute_data_planes{{state=\"{state}\"}} to be {want}"),
        SOON,
        || async {
            let got = scene
                .cp
                .metric("cellroute_data_planes", &[("state", state)])
                .await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_hash_is_a_protocol_error_and_leaves_no_ghost() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let real = scene.follower("dp-x", Some(&routes(&scene.cells)), &[]).await;
    let synced = scene.cp.wait_state(&["dp-x"], "SYNCED", Some(v1), SOON).await;
    let real_since = synced[0]["record"]["connected_since"].clone();
    let real_identity = static_identity(DP_TOKEN_LINE);
    let addr = scene.cp.addr();

    // Another pod's token, the real data plane's id, a valid hello, then the frame.
    let mut attacker = Peer::open(addr, OTHER_TOKEN, "attacker").await;
    let sent = attacker
        .subscribe(&hello("dp-x", OBJECT, &Value::Null, None))
        .await;
    assert_eq!(sent["version"], v1);
    attacker.send(&poisoned_ack()).await;
    let close = attacker.closed().await;
    match &close {
        Some((Some(code), reason)) if *code == CLOSE_PROTOCOL && reason.contains("unreadable message") => {}
        other => panic!("the poisoned ACK: expected a protocol-error close, got {other:?}"),
    }
    eprintln!("the poisoned ACK: {close:?}");
    assert_eq!(protocol_errors(&scene, "unreadable").await, 1.0);
    assert_eq!(scene.cp.metric("cellroute_session_panics_total", &[]).await, 0.0);

    // The attacker's own record is marked disconnected; the real one is untouched.
    let other = eventually("the attacker's record to be DISCONNECTED", SOON, || async {
        match scene
            .cp
            .dataplane_as("dp-x", &static_identity(OTHER_TOKEN_LINE))
            .await
        {
            Some(entry) if entry["state"] == "DISCONNECTED" => Ok(entry),
            None => Ok(Value::Null),
            Some(entry) => Err(format!("{entry}")),
        }
    })
    .await;
    eprintln!("the attacker's record: {other}");
    let entry = scene
        .cp
        .dataplane_as("dp-x", &real_identity)
        .await
        .expect("the real dp-x");
    assert_eq!(entry["state"], "SYNCED", "{entry}");
    assert_eq!(entry["record"]["connected_since"], real_since, "{entry}");

    // The next version: the real one converges, and nothing stays STALE (the ghost of #10).
    let second = routes(&scene.cells).customer("acme", "cell-b");
    let v2 = scene.publish(&second).await;
    real.wait_routes(&[("acme", "cell-b")], SOON).await;
    scene
        .cp
        .wait_dataplane_as(
            "dp-x",
            &real_identity,
            "the real dp-x SYNCED at the new version",
            SOON,
            |e| e["state"] == "SYNCED" && e["record"]["acked"]["version"] == v2,
        )
        .await;
    wait_state_metric(&scene, "stale", 0.0).await;
    wait_state_metric(&scene, "synced", 1.0).await;
    assert_eq!(scene.cp.metric("cellroute_connected_data_planes", &[]).await, 1.0);

    // The same frame under the real data plane's own identity (its token, its id): the forged
    // session supersedes the real one, is refused, and the record does not stay a ghost: the
    // real data plane reconnects and is SYNCED again.
    let mut same = Peer::open(addr, DP_TOKEN, "same identity").await;
    let _ = same.subscribe(&hello("dp-x", OBJECT, &Value::Null, None)).await;
    let _ = same.try_send(&poisoned_ack()).await;
    // Refused for the frame, or superseded first by the real data plane's reconnect.
    let close = same.closed().await;
    assert!(
        matches!(close, Some((Some(CLOSE_PROTOCOL | 1000), _)) | None),
        "{close:?}"
    );
    real.wait_counter("control_plane_sessions_total", 2.0, SOON).await;
    scene
        .cp
        .wait_dataplane_as(
            "dp-x",
            &real_identity,
            "the real dp-x SYNCED after its reconnect",
            SOON,
            |e| e["state"] == "SYNCED" && e["record"]["acked"]["version"] == v2,
        )
        .await;
    wait_state_metric(&scene, "stale", 0.0).await;
    assert_eq!(scene.cp.metric("cellroute_session_panics_total", &[]).await, 0.0);
    let panics = scene
        .cp
        .logs()
        .count(|r| r["message"].as_str().is_some_and(|m| m.contains("panicked")));
    assert_eq!(panics, 0, "the control plane logged a panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_token_not_from_the_hello() {
    let cells = Scene::cells(&CELLS).await;
    // Three customers: over the real data plane's --max-customers 2, so it NACKs.
    let first = routes(&cells)
        .customer("acme", "cell-a")
        .customer("globex", "cell-a")
        .customer("initech", "cell-a");
    // The hand-driven peers read only when the test looks: a long heartbeat timeout keeps their
    // sessions open while they idle.
    let scene = Scene::start(cells, &first, &["--heartbeat-timeout", "60s"]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let real_identity = static_identity(DP_TOKEN_LINE);
    let other_identity = static_identity(OTHER_TOKEN_LINE);
    let _real = scene
        .follower("dp-x", Some(&routes(&scene.cells)), &["--max-customers", "2"])
        .await;
    let rejected = scene.cp.wait_state(&["dp-x"], "REJECTED", Some(v1), SOON).await;
    assert_eq!(
        rejected[0]["record"]["identity"], real_identity,
        "{}",
        rejected[0]
    );
    let real_since = rejected[0]["record"]["connected_since"].clone();
    let addr = scene.cp.addr();

    // Another token's holder names dp-x and ACKs what it was sent: its own record is SYNCED,
    // and the real one is still REJECTED, connected, in its own session.
    let mut attacker = Peer::open(addr, OTHER_TOKEN, "attacker").await;
    let sent = attacker
        .subscribe(&hello("dp-x", OBJECT, &Value::Null, None))
        .await;
    attacker.ack(&sent).await;
    scene
        .cp
        .wait_dataplane_as(
            "dp-x",
            &other_identity,
            "the attacker's own record to be SYNCED",
            SOON,
            |e| e["state"] == "SYNCED",
        )
        .await;
    let entry = scene
        .cp
        .dataplane_as("dp-x", &real_identity)
        .await
        .expect("the real dp-x");
    assert_eq!(entry["state"], "REJECTED", "{entry}");
    assert_eq!(entry["record"]["connected_since"], real_since, "{entry}");
    let listed = scene.cp.dataplanes().await;
    assert_eq!(
        listed.iter().filter(|d| d["id"] == "dp-x").count(),
        2,
        "{listed:?}"
    );

    // A hello naming another object moves only the attacker's record.
    let mut mover = Peer::open(addr, OTHER_TOKEN, "mover").await;
    mover
        .send(&hello("dp-x", "default/other", &Value::Null, None))
        .await;
    let welcome = mover.expect("welcome").await;
    assert_eq!(welcome["up_to_date"], false, "{welcome}");
    assert_eq!(mover.expect("missing").await["reason"], "not_found");
    scene
        .cp
        .wait_dataplane_as(
            "dp-x",
            &other_identity,
            "the attacker's record to follow its own hello",
            SOON,
            |e| e["routing_config"] == "default/other",
        )
        .await;
    let entry = scene
        .cp
        .dataplane_as("dp-x", &real_identity)
        .await
        .expect("the real dp-x");
    assert_eq!(entry["routing_config"], OBJECT, "{entry}");
    assert_eq!(entry["state"], "REJECTED", "{entry}");
    assert_eq!(entry["record"]["connected_since"], real_since, "{entry}");
    // The attacker's first session was superseded by its own second one, not the real one's.
    assert!(matches!(attacker.closed().await, Some((Some(1000), ref r)) if r.contains("newer session")));

    // Ids are Kubernetes names, refused otherwise with a clear error that does not echo them.
    let long = "a".repeat(254);
    let huge = "x".repeat(60 * 1024);
    for (what, id) in [
        ("an empty id", ""),
        ("an upper-case id", "DP-X"),
        ("an underscore", "dp_x"),
        ("a non-ASCII id", "dp-é"),
        ("254 bytes", long.as_str()),
        ("60 KiB", huge.as_str()),
    ] {
        let mut peer = Peer::open(addr, OTHER_TOKEN, what).await;
        peer.send(&hello(id, OBJECT, &Value::Null, None)).await;
        let (error, close) = peer.refused().await;
        let error = error.unwrap_or_else(|| panic!("{what}: no error message before the close ({close:?})"));
        assert!(
            error.contains("is not a Kubernetes object name"),
            "{what}: {error}"
        );
        assert!(
            error.len() < 400,
            "{what}: the error echoes the id: {} bytes",
            error.len()
        );
        assert!(
            matches!(close, Some((Some(CLOSE_POLICY), _))),
            "{what}: {close:?}"
        );
    }
    assert_eq!(
        scene
            .cp
            .metric("cellroute_refused_connections_total", &[("reason", "bad-id")])
            .await,
        6.0
    );
    let listed = scene.cp.dataplanes().await;
    assert!(
        listed
            .iter()
            .all(|d| ["dp-x"].contains(&d["id"].as_str().unwrap_or_default())),
        "a refused id is listed: {listed:?}"
    );
    let longest = scene.cp.logs().lines().iter().map(String::len).max().unwrap_or(0);
    assert!(longest < 4096, "a log line of {longest} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_and_nacks_count_only_for_what_the_session_was_sent() {
    let cells = Scene::cells(&CELLS).await;
    let tables: Vec<Table> = (0..6)
        .map(|i| {
            routes(&cells)
                .customer("acme", CELLS[i % 3])
                .customer(&format!("v{i}"), "cell-a")
        })
        .collect();
    let scene = Scene::start(cells, &tables[0], &["--heartbeat-timeout", "60s"]).await;
    let v1 = scene.cp.wait_served(&tables[0]).await;
    let addr = scene.cp.addr();
    let me = static_identity(DP_TOKEN_LINE);
    let state = || async { scene.cp.dataplane_as("peer", &me).await.expect("peer listed") };

    let mut peer = Peer::open(addr, DP_TOKEN, "peer").await;
    let s1 = peer.subscribe(&hello("peer", OBJECT, &Value::Null, None)).await;
    assert_eq!(s1["version"], v1);
    scene.cp.wait_state(&["peer"], "STALE", None, SOON).await;

    // An ACK for a version never sent: counted, ignored, and the session stays open.
    let mut never = s1.clone();
    never["version"] = json!(v1 + 1000);
    peer.ack(&never).await;
    eventually("the never-sent ACK to be counted", SOON, || async {
        match protocol_errors(&scene, "ack-not-sent").await {
            1.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    let entry = state().await;
    assert_eq!(entry["state"], "STALE", "{entry}");
    assert_eq!(entry["record"]["acked"], Value::Null, "{entry}");

    // The real ACK counts; its replay does not.
    peer.ack(&s1).await;
    scene.cp.wait_state(&["peer"], "SYNCED", Some(v1), SOON).await;
    peer.ack(&s1).await;
    eventually("the replayed ACK to be counted", SOON, || async {
        match protocol_errors(&scene, "ack-replayed").await {
            1.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;

    // v2 is NACKed; the replayed NACK is not a second rejection.
    let v2 = scene.publish(&tables[1]).await;
    let s2 = peer.expect_version().await["snapshot"].clone();
    assert_eq!(s2["version"], v2);
    peer.nack(&s2, "refused by the test").await;
    scene.cp.wait_state(&["peer"], "REJECTED", Some(v2), SOON).await;
    peer.nack(&s2, "refused again").await;
    eventually("the replayed NACK to be counted", SOON, || async {
        match protocol_errors(&scene, "nack-replayed").await {
            1.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    assert_eq!(state().await["record"]["nacked"]["error"], "refused by the test");

    // An older sent version may be answered just before a newer one (latest-wins delivery).
    let v3 = scene.publish(&tables[2]).await;
    let s3 = peer.expect_version().await["snapshot"].clone();
    let v4 = scene.publish(&tables[3]).await;
    let s4 = peer.expect_version().await["snapshot"].clone();
    assert_eq!(
        (s3["version"].as_i64(), s4["version"].as_i64()),
        (Some(v3), Some(v4))
    );
    peer.ack(&s3).await;
    eventually("the ACK of the older version to be recorded", SOON, || async {
        let entry = state().await;
        if entry["record"]["acked"]["version"] == v3 && entry["state"] == "STALE" {
            Ok(())
        } else {
            Err(format!("{entry}"))
        }
    })
    .await;
    peer.ack(&s4).await;
    scene.cp.wait_state(&["peer"], "SYNCED", Some(v4), SOON).await;

    // Replays of retired answers: the old ACK, the old NACK, and a NACK of the ACKed version.
    // Each is counted, and the data plane stays SYNCED (in #10 they made it STALE and REJECTED).
    let before_acks = scene.cp.metric("cellroute_snapshot_acks_total", &[]).await;
    let before_nacks = scene.cp.metric("cellroute_snapshot_nacks_total", &[]).await;
    peer.ack(&s2).await;
    peer.ack(&s1).await;
    peer.nack(&s2, "replayed").await;
    peer.nack(&s4, "a NACK after its ACK").await;
    eventually("the four replays to be counted", SOON, || async {
        let not_sent = protocol_errors(&scene, "ack-not-sent").await;
        let nack_not_sent = protocol_errors(&scene, "nack-not-sent").await;
        let nack_replayed = protocol_errors(&scene, "nack-replayed").await;
        if (not_sent, nack_not_sent, nack_replayed) == (3.0, 1.0, 2.0) {
            Ok(())
        } else {
            Err(format!(
                "ack-not-sent {not_sent}, nack-not-sent {nack_not_sent}, nack-replayed {nack_replayed}"
            ))
        }
    })
    .await;
    let entry = state().await;
    assert_eq!(entry["state"], "SYNCED", "{entry}");
    assert_eq!(entry["record"]["acked"]["version"], v4, "{entry}");
    assert_eq!(entry["record"]["nacked"], Value::Null, "{entry}");
    assert_eq!(
        scene.cp.metric("cellroute_snapshot_acks_total", &[]).await,
        before_acks
    );
    assert_eq!(
        scene.cp.metric("cellroute_snapshot_nacks_total", &[]).await,
        before_nacks
    );

    // Still a working session: the next version is delivered and ACKed.
    let v5 = scene.publish(&tables[4]).await;
    let s5 = peer.expect_version().await["snapshot"].clone();
    peer.ack(&s5).await;
    scene.cp.wait_state(&["peer"], "SYNCED", Some(v5), SOON).await;

    // A reconnect that says it has the served version may ACK it once, never NACK it.
    drop(peer);
    let mut back = Peer::open(addr, DP_TOKEN, "back").await;
    let none = back.subscribe(&hello("peer", OBJECT, &s5, None)).await;
    assert_eq!(none, Value::Null, "an up-to-date hello got a snapshot");
    back.nack(&s5, "never received").await;
    back.ack(&s5).await;
    eventually("the announced snapshot's NACK to be refused", SOON, || async {
        match protocol_errors(&scene, "nack-not-sent").await {
            2.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    scene.cp.wait_state(&["peer"], "SYNCED", Some(v5), SOON).await;
}

/// A data plane busy applying a large table answers nothing for a while, then every snapshot
/// that arrived meanwhile, in order. The control plane sends it at most a ledger's worth
/// (`LEDGER_ENTRIES`) and holds newer versions back, so every one of those late answers is
/// checked and none is a protocol error; once it answers, the newest version comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_that_answers_late_is_sent_no_more_than_its_session_checks() {
    use routing_model::ledger::LEDGER_ENTRIES;
    let cells = Scene::cells(&CELLS).await;
    let tables: Vec<Table> = (0..LEDGER_ENTRIES + 4)
        .map(|i| routes(&cells).customer(&format!("v{i}"), "cell-a"))
        .collect();
    let scene = Scene::start(cells, &tables[0], &["--heartbeat-timeout", "60s"]).await;
    let v1 = scene.cp.wait_served(&tables[0]).await;
    let mut peer = Peer::open(scene.cp.addr(), DP_TOKEN, "slow").await;
    let mut received = vec![peer.subscribe(&hello("slow", OBJECT, &Value::Null, None)).await];
    assert_eq!(received[0]["version"], v1);
    let mut newest = v1;
    for table in &tables[1..] {
        newest = scene.publish(table).await;
    }
    for _ in 1..LEDGER_ENTRIES {
        received.push(peer.expect_version().await["snapshot"].clone());
    }
    let versions: Vec<i64> = received.iter().filter_map(|s| s["version"].as_i64()).collect();
    assert_eq!(versions.len(), LEDGER_ENTRIES);
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert!(
        newest > versions[LEDGER_ENTRIES - 1],
        "every version was sent: {versions:?}"
    );

    // As the data plane answers: the first applied, the others superseded while it applied.
    peer.ack(&received[0]).await;
    for snapshot in &received[1..] {
        peer.nack(snapshot, "superseded: a newer version arrived").await;
    }
    // Held back until there was room, the newest version is what comes next (latest wins).
    let next = peer.expect_version().await["snapshot"].clone();
    assert_eq!(next["version"], newest, "{next}");
    peer.ack(&next).await;
    scene.cp.wait_state(&["slow"], "SYNCED", Some(newest), SOON).await;
    for kind in ["ack-not-sent", "ack-replayed", "nack-not-sent", "nack-replayed"] {
        assert_eq!(protocol_errors(&scene, kind).await, 0.0, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_closed_sessions_do_not_grow_the_control_plane() {
    // The default limits: 16 MiB messages from the control plane. What a data plane sends is
    // bounded on its own (64 KiB), whatever --max-message-bytes says.
    const HUGE: usize = 16 * 1024 * 1024 - 4096;
    const FITS: usize = 60 * 1024;
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let real = scene.follower("dp-1", Some(&routes(&scene.cells)), &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    let addr = scene.cp.addr();
    let before = rss_bytes(scene.cp.pid());

    // The issue's six sessions: 16 MiB ids and 16 MiB NACK texts, refused at the frame header.
    // The frames are built before connecting: building them takes longer than the hello timeout
    // in a debug build.
    let served = scene.cp.served().await;
    let snapshot =
        json!({"lineage": served["lineage"], "version": served["version"], "hash": served["hash"]});
    let frame = |text: String| ws::encode_frame(true, OP_TEXT, text.as_bytes(), Some([1, 2, 3, 4]));
    let huge_hello = frame(hello(&"x".repeat(HUGE), OBJECT, &Value::Null, None));
    let huge_nack =
        frame(json!({"type": "nack", "snapshot": snapshot, "error": "e".repeat(HUGE)}).to_string());
    for i in 0..6 {
        let mut peer = Peer::open(addr, OTHER_TOKEN, &format!("huge id {i}")).await;
        let _ = peer.send_raw(&huge_hello).await;
        if let Some((code, reason)) = peer.closed().await {
            assert_eq!(code, Some(CLOSE_TOO_BIG), "{reason}");
        }
        let id = format!("nacker-{i}");
        let mut peer = Peer::open(addr, OTHER_TOKEN, &id).await;
        let sent = peer.subscribe(&hello(&id, OBJECT, &Value::Null, None)).await;
        assert_eq!(sent, snapshot);
        let _ = peer.send_raw(&huge_nack).await;
        if let Some((code, reason)) = peer.closed().await {
            assert_eq!(code, Some(CLOSE_TOO_BIG), "{reason}");
        }
    }
    // And six that fit: a 60 KiB NACK text each, kept cut to 4 KiB after the session closes.
    for i in 0..6 {
        let id = format!("long-nack-{i}");
        let mut peer = Peer::open(addr, OTHER_TOKEN, &id).await;
        let sent = peer.subscribe(&hello(&id, OBJECT, &Value::Null, None)).await;
        peer.nack(&sent, &"é".repeat(FITS / 2)).await;
        scene
            .cp
            .wait_state(&[id.as_str()], "REJECTED", Some(v1), SOON)
            .await;
    }
    eventually("every session to be closed", SOON, || async {
        let connected = scene.cp.metric("cellroute_connected_data_planes", &[]).await;
        if connected == 1.0 {
            Ok(())
        } else {
            Err(format!("{connected} connected"))
        }
    })
    .await;
    assert!(protocol_errors(&scene, "oversized").await >= 12.0);

    let dataplanes = scene.cp.get("/debug/dataplanes").await;
    assert_eq!(dataplanes.status, 200);
    eprintln!("/debug/dataplanes: {} bytes", dataplanes.text.len());
    assert!(
        dataplanes.text.len() < 128 * 1024,
        "{} bytes",
        dataplanes.text.len()
    );
    for entry in dataplanes.json["dataplanes"].as_array().expect("dataplanes") {
        let error = entry["record"]["nacked"]["error"].as_str().unwrap_or_default();
        assert!(
            error.len() <= 4096 + 3,
            "a {}-byte NACK text is kept",
            error.len()
        );
    }
    let after = rss_bytes(scene.cp.pid());
    let grown = after.saturating_sub(before);
    eprintln!(
        "RSS {} MiB before, {} MiB after ({} KiB more)",
        before >> 20,
        after >> 20,
        grown >> 10
    );
    // In #10 the same sessions added about 100 MiB.
    assert!(grown < 24 << 20, "the control plane grew by {} MiB", grown >> 20);
    let longest = scene.cp.logs().lines().iter().map(String::len).max().unwrap_or(0);
    assert!(longest < 16 * 1024, "a log line of {longest} bytes");

    // The real data plane never noticed.
    let second = routes(&scene.cells).customer("acme", "cell-b");
    let v2 = scene.publish(&second).await;
    real.wait_routes(&[("acme", "cell-b")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;
}
