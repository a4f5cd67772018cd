//! Delta push: a change reaches a data plane as the changes from a version it has, not as the
//! whole table, and every way it can go wrong ends with the data plane on the right table.
//!
//! - the real control plane and data plane: a one-customer edit of a 20,000-customer table is a
//!   delta of bytes (counted on both sides), applied by patching the active table, routed, cached
//!   and hashed like the table the control plane serves; a change of the default placement is a
//!   delta too, applied by rebuilding the table;
//! - a peer that cannot apply a delta asks for the whole table and gets it once; a resync asked
//!   of a whole table is a plain NACK, and the next version is a delta again;
//! - a data plane without `delta` (one built before it) gets whole tables whose hash is the
//!   SHA-256 of the canonical JSON it checks, and its answers count for the served version;
//! - the real data plane, sent deltas by a scripted control plane: one for another base, and one
//!   whose result does not hash to its target, are refused asking for the whole table, and leave
//!   the table as it was.

#![forbid(unsafe_code)]

use cellroute_tests::admin::AdminClient;
use cellroute_tests::fixture::{Cells, TOKEN};
use cellroute_tests::peer::{Peer, hello};
use cellroute_tests::process::{DataPlane, Launch};
use cellroute_tests::proxy::ProxyClient;
use cellroute_tests::push::{DP_TOKEN, OBJECT, Scene, Table, read_cache_file};
use cellroute_tests::scripted_cp::{ScriptedControlPlane, snapshot, spec};
use cellroute_tests::wait::SOON;
use routing_model::ContentHash;
use routing_model::delta::SpecChanges;
use routing_model::protocol::{DeltaMessage, ServerMessage, SnapshotRef};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];
/// Customers besides `acme`: enough that the whole table is about a megabyte.
const FILLER: usize = 20_000;

fn routes(cells: &Cells, acme: &str) -> Table {
    Table::new(cells, &CELLS, "cell-c")
        .filler(FILLER, "cell-a")
        .customer("acme", acme)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_customer_edit_reaches_the_data_plane_as_a_delta_of_bytes() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells, "cell-a");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let dp = scene.follower("dp-1", None, &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    dp.assert_routes(&[("acme", "cell-a")]).await;
    assert_eq!(dp.counter("cellroute_deltas_applied_total").await, 0.0);
    let whole = scene.cp.metric("cellroute_snapshot_bytes", &[]).await;

    let second = routes(&scene.cells, "cell-b");
    let v2 = scene.publish(&second).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;
    dp.assert_routes(&[("acme", "cell-b")]).await;

    // It came as a delta, and a delta of bytes: the table is about a megabyte.
    assert_eq!(dp.counter("cellroute_deltas_received_total").await, 1.0);
    assert_eq!(dp.counter("cellroute_deltas_applied_total").await, 1.0);
    assert_eq!(scene.cp.metric("cellroute_delta_pushes_total", &[]).await, 1.0);
    let delta = scene.cp.metric("cellroute_delta_bytes", &[]).await;
    assert!(
        delta > 0.0 && delta <= 1024.0,
        "a one-customer delta is {delta} bytes (the whole table: {whole})"
    );
    assert!(whole > 500.0 * delta, "whole table {whole} bytes, delta {delta}");

    // What it applied is the table the control plane serves, hash and all, and what it cached.
    let served = scene.cp.served().await;
    let config = dp.config().await;
    assert_eq!(config["snapshot"]["version"], v2, "{}", config["snapshot"]);
    assert_eq!(config["hash"], served["hash"], "{config}");
    assert_eq!(config["hash"].as_str(), Some(second.hash().as_str()));
    let cached = read_cache_file(&scene.cache_file("dp-1")).expect("the cache file");
    assert_eq!(cached.version, v2);
    assert_eq!(Some(cached.hash.as_str()), served["hash"].as_str());
    assert_eq!(
        cached.payload["spec"]["customerToPlacement"]["acme"], "cell-b",
        "the cache holds the table the delta made"
    );
    // The table was patched, not rebuilt, and the customers it did not change still route.
    assert_eq!(dp.counter("cellroute_deltas_patched_total").await, 1.0);
    dp.assert_routes(&[
        ("filler-00000", "cell-a"),
        ("filler-19999", "cell-a"),
        ("nobody", "cell-c"),
    ])
    .await;

    // A new default placement changes how every unlisted customer routes: still a delta, but the
    // table is rebuilt from the result.
    let third = Table::new(&scene.cells, &CELLS, "cell-b")
        .filler(FILLER, "cell-a")
        .customer("acme", "cell-b");
    let v3 = scene.publish(&third).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v3), SOON).await;
    dp.assert_routes(&[
        ("nobody", "cell-b"),
        ("acme", "cell-b"),
        ("filler-00042", "cell-a"),
    ])
    .await;
    assert_eq!(dp.counter("cellroute_deltas_applied_total").await, 2.0);
    assert_eq!(dp.counter("cellroute_deltas_patched_total").await, 1.0);
    assert_eq!(dp.config().await["hash"].as_str(), Some(third.hash().as_str()));
}

/// The peer's next version message of `kind`, and its `snapshot` reference.
async fn next(peer: &mut Peer, kind: &str) -> (Value, Value) {
    let message = peer.expect(kind).await;
    let reference = message["snapshot"].clone();
    (message, reference)
}

async fn ack(peer: &mut Peer, reference: &Value) {
    peer.send(&json!({"type": "ack", "snapshot": reference}).to_string())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_a_peer_cannot_apply_is_followed_by_the_whole_table_once() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells, "cell-a");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let mut peer = Peer::open(scene.cp.addr(), DP_TOKEN, "peer").await;
    let s1 = peer.subscribe(&hello("peer", OBJECT, &Value::Null, None)).await;
    assert_eq!(s1["version"], v1);
    ack(&mut peer, &s1).await;

    let v2 = scene.publish(&routes(&scene.cells, "cell-b")).await;
    let (delta, s2) = next(&mut peer, "delta").await;
    assert_eq!(delta["base"], s1, "{delta}");
    assert_eq!(s2["version"], v2, "{delta}");
    assert_eq!(
        delta["changes"],
        json!({"customerToPlacement": {"acme": "cell-b"}}),
        "only the change travels"
    );

    // It cannot apply it: the whole table of that version follows, once.
    peer.send(
        &json!({"type": "nack", "snapshot": s2, "error": "base not found", "resync": true}).to_string(),
    )
    .await;
    let (whole, again) = next(&mut peer, "snapshot").await;
    assert_eq!(again, s2);
    assert_eq!(whole["spec"]["customerToPlacement"]["acme"], "cell-b");
    assert_eq!(
        whole["spec"]["customerToPlacement"]
            .as_object()
            .map(serde_json::Map::len),
        Some(FILLER + 1)
    );
    assert_eq!(scene.cp.metric("cellroute_delta_resyncs_total", &[]).await, 1.0);

    // A resync asked of a whole table is only a NACK: nothing is sent again, and the next
    // version is a delta from the one sent last.
    peer.send(&json!({"type": "nack", "snapshot": again, "error": "again", "resync": true}).to_string())
        .await;
    let v3 = scene.publish(&routes(&scene.cells, "cell-c")).await;
    let (delta, s3) = next(&mut peer, "delta").await;
    assert_eq!(s3["version"], v3, "{delta}");
    assert_eq!(delta["base"], s2, "{delta}");
    assert_eq!(scene.cp.metric("cellroute_delta_resyncs_total", &[]).await, 1.0);
}

/// SHA-256 of the spec's canonical JSON: what data planes before delta push check.
fn json_hash(spec: &Value) -> String {
    let spec: routing_model::RoutingConfigSpec = serde_json::from_value(spec.clone()).expect("a spec");
    let digest = Sha256::digest(serde_json::to_vec(&spec).expect("JSON"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn old_hello(applied: &Value) -> String {
    json!({
        "type": "hello",
        "data_plane": "old",
        "routing_config": OBJECT,
        "applied": applied,
        "protocol": 1,
        "capabilities": ["full-snapshot"],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_without_delta_gets_whole_tables_hashed_as_before() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells, "cell-a");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;

    let mut old = Peer::open(scene.cp.addr(), DP_TOKEN, "old").await;
    old.send(&old_hello(&Value::Null)).await;
    let welcome = old.expect("welcome").await;
    assert_eq!(welcome["capabilities"], json!(["full-snapshot"]), "{welcome}");
    let (message, s1) = next(&mut old, "snapshot").await;
    assert_eq!(s1["version"], v1);
    assert_eq!(s1["hash"].as_str(), Some(json_hash(&message["spec"]).as_str()));
    assert_ne!(s1["hash"], scene.cp.served().await["hash"], "another scheme");
    ack(&mut old, &s1).await;
    scene.cp.wait_state(&["old"], "SYNCED", Some(v1), SOON).await;

    let v2 = scene.publish(&routes(&scene.cells, "cell-b")).await;
    let (message, s2) = next(&mut old, "snapshot").await;
    assert_eq!(s2["version"], v2);
    assert_eq!(message["spec"]["customerToPlacement"]["acme"], "cell-b");
    assert_eq!(s2["hash"].as_str(), Some(json_hash(&message["spec"]).as_str()));
    ack(&mut old, &s2).await;
    scene.cp.wait_state(&["old"], "SYNCED", Some(v2), SOON).await;
    drop(old);

    // Reconnecting with what it has: up to date, nothing sent, still in sync.
    scene.cp.wait_state(&["old"], "DISCONNECTED", None, SOON).await;
    let mut back = Peer::open(scene.cp.addr(), DP_TOKEN, "old again").await;
    back.send(&old_hello(&s2)).await;
    let welcome = back.expect("welcome").await;
    assert_eq!(welcome["up_to_date"], true, "{welcome}");
    scene.cp.wait_state(&["old"], "SYNCED", Some(v2), SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_for_another_base_or_content_is_refused_and_the_table_stays() {
    const LINEAGE: &str = "scripted-uid-1";
    let cells = Cells::start(&CELLS).await;
    let mut cp = ScriptedControlPlane::start().await;
    let dp = DataPlane::launch(Launch::default().args(&[
        "--control-plane",
        &cp.url(),
        "--routing-config",
        OBJECT,
        "--id",
        "dp-1",
    ]))
    .await;
    let mut session = cp.session(SOON).await;
    let offered = &session.hello["capabilities"];
    assert!(
        offered.as_array().is_some_and(|c| c.contains(&json!("delta"))),
        "the data plane offers delta: {offered}"
    );
    session.welcome().await;
    let admin = AdminClient::new(dp.admin_addr(), TOKEN);
    let proxy = ProxyClient::new(dp.proxy_addr());
    let table = |acme: &str| {
        let customers = [("acme", acme), ("beta", "cell-a")].map(|(c, p)| (c.to_owned(), p.to_owned()));
        spec("cell-c", customers, CELLS.map(|c| (c, cells.url(c))))
    };
    let v1 = snapshot(OBJECT, LINEAGE, 1, table("cell-a"));
    let ServerMessage::Snapshot(first) = &v1 else {
        unreachable!()
    };
    let base = first.snapshot.clone();
    session.send(&v1).await;
    assert_eq!(session.answer(SOON).await["type"], "ack");
    proxy.assert_cell(Some("acme"), "cell-a").await;

    let target_spec = table("cell-b");
    let target = SnapshotRef {
        lineage: LINEAGE.into(),
        version: 2,
        hash: ContentHash::of_spec(&target_spec),
    };
    let changes = SpecChanges::between(&first.spec, &target_spec);
    let delta = |base: SnapshotRef, snapshot: SnapshotRef| {
        ServerMessage::Delta(DeltaMessage {
            routing_config: OBJECT.into(),
            base,
            snapshot,
            changes: changes.clone(),
        })
    };
    let refused = |answer: &Value, needle: &str| {
        assert_eq!(answer["type"], "nack", "{answer}");
        assert_eq!(answer["resync"], true, "asks for the whole table: {answer}");
        assert_eq!(answer["snapshot"]["version"], 2, "{answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{error:?} should say {needle:?}");
    };

    // A base it does not have.
    let elsewhere = SnapshotRef {
        version: 7,
        ..base.clone()
    };
    session.send(&delta(elsewhere, target.clone())).await;
    refused(&session.answer(SOON).await, "delta from version 7 does not apply");
    proxy.assert_cell(Some("acme"), "cell-a").await;

    // Its base, but a target hash the result does not have.
    let lying = SnapshotRef {
        hash: ContentHash::of_spec(&table("cell-c")),
        ..target.clone()
    };
    session.send(&delta(base.clone(), lying)).await;
    refused(&session.answer(SOON).await, "the result hashes to");
    proxy.assert_cell(Some("acme"), "cell-a").await;
    assert_eq!(admin.config().await.json["snapshot"]["version"], 1);

    // The honest one applies.
    session.send(&delta(base, target.clone())).await;
    let answer = session.answer(SOON).await;
    assert_eq!(answer["type"], "ack", "{answer}");
    proxy.assert_cell(Some("acme"), "cell-b").await;
    proxy.assert_cell(Some("beta"), "cell-a").await;
    assert_eq!(admin.counter("cellroute_deltas_received_total", &[]).await, 3.0);
    assert_eq!(admin.counter("cellroute_deltas_applied_total", &[]).await, 1.0);
    assert_eq!(
        admin.config().await.json["hash"].as_str(),
        Some(target.hash.to_string().as_str())
    );
}
