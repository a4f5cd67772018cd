//! A large snapshot does not cost the session: the data plane keeps heartbeating while it
//! decodes and applies, so neither side drops a healthy session however long the apply takes.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cellroute_tests::push::{DP_TOKEN, Scene, Table, hello};
use cellroute_tests::wait::SOON;
use cellroute_tests::ws::{self, Frame};
use routing_model::protocol::SUBSCRIBE_PATH;

const CELLS: [&str; 2] = ["cell-a", "cell-b"];
const ID: &str = "dp-1";
/// The file parser's node budget (routing-model) caps a file at about 125k customers.
const CUSTOMERS: usize = 120_000;
/// The shortest heartbeat timeout the test uses: below it a loaded 2-core machine may miss a
/// beat for other reasons.
const MIN_TIMEOUT: Duration = Duration::from_millis(300);

/// A customer id long enough that every customer costs more to move, decode, hash and index.
fn customer(i: usize) -> String {
    format!("customer-{i:0>50}")
}

/// `acme` and the long-named customers, all on cell-b, over `cells`.
fn big_table(cells: &cellroute_tests::fixture::Cells) -> Table {
    let mut big = Table::new(cells, &CELLS, "cell-a").customer("acme", "cell-b");
    for i in 0..CUSTOMERS {
        big = big.customer(&customer(i), "cell-b");
    }
    big
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_apply_keeps_the_session() {
    // How long this machine takes to receive, decode and apply the table, with the default
    // heartbeats: the heartbeat timeout below is a third of it (so the apply outlasts it on any
    // machine), short on both sides, so an apply that blocked the session loop would end it.
    let apply = {
        let cells = Scene::cells(&CELLS).await;
        let big = big_table(&cells);
        let scene = Scene::start(cells, &big, &[]).await;
        let v1 = scene.cp.wait_served(&big).await;
        warm_up(&scene).await;
        let dp = scene.follower(ID, None, &[]).await;
        scene
            .cp
            .wait_state(&[ID], "SYNCED", Some(v1), Duration::from_secs(120))
            .await;
        apply_time(&dp)
    };
    let timeout = (apply / 3).max(MIN_TIMEOUT);
    let heartbeat = format!("{}ms", (timeout / 5).as_millis());
    let heartbeat_timeout = format!("{}ms", timeout.as_millis());
    let beat = [
        "--heartbeat",
        heartbeat.as_str(),
        "--heartbeat-timeout",
        heartbeat_timeout.as_str(),
    ];
    let cells = Scene::cells(&CELLS).await;
    let big = big_table(&cells);
    let scene = Scene::start(cells, &big, &beat).await;
    let v1 = scene.cp.wait_served(&big).await;
    warm_up(&scene).await;

    let started = Instant::now();
    let dp = scene.follower(ID, None, &beat).await;
    let synced = scene
        .cp
        .wait_state(&[ID], "SYNCED", Some(v1), Duration::from_secs(120))
        .await;
    eprintln!(
        "{CUSTOMERS} customers: SYNCED {:?} after the data plane started (heartbeat timeout {timeout:?}, calibrated on an apply of {apply:?})",
        started.elapsed()
    );
    dp.wait_routes(&[("acme", "cell-b"), (&customer(12_345), "cell-b")], SOON)
        .await;

    // Receiving, decoding and applying the snapshot has to outlast the heartbeat timeout well,
    // or this test proves nothing: measured on the data plane's own clock, from the session
    // opening to the table applied.
    let busy = apply_time(&dp);
    assert!(
        busy > timeout * 3 / 2,
        "the apply took {busy:?}, not well over the heartbeat timeout {timeout:?}: make the table larger"
    );
    assert_eq!(
        dp.counter("control_plane_sessions_total").await,
        1.0,
        "the session was dropped and re-opened during the apply"
    );
    assert_eq!(dp.counter("cellroute_snapshot_nacks_total").await, 0.0);
    assert_eq!(synced[0]["record"]["acked"]["version"], v1, "{}", synced[0]);
    // Neither side saw silence.
    let silent = |r: &serde_json::Value| r.to_string().contains("heartbeat timeout");
    assert_eq!(
        dp.dp.logs().count(silent),
        0,
        "the data plane timed the control plane out"
    );
    assert_eq!(
        scene.cp.logs().count(silent),
        0,
        "the control plane timed the data plane out"
    );
}

/// From the data plane's session opening to the pushed table applied, on its own clock (its
/// log's timestamps).
fn apply_time(dp: &cellroute_tests::push::Follower) -> Duration {
    let at = |message: &str| {
        let record = dp
            .dp
            .logs()
            .records()
            .into_iter()
            .find(|r| {
                r["message"] == message && (message != "config applied" || r["source"] == "control-plane")
            })
            .unwrap_or_else(|| panic!("no `{message}` log line"));
        let stamp = record["timestamp"].as_str().unwrap_or_default();
        humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("timestamp {stamp:?}: {e}"))
    };
    at("config applied")
        .duration_since(at("connected to the control plane"))
        .unwrap_or_default()
}

/// Has a throwaway subscriber open the object's channel before the data plane connects.
///
/// The control plane encodes a whole table once per version, on a blocking thread, for the first
/// session that needs it (control-plane/src/push/publisher.rs, `Encoded::full`); a subscriber
/// that already has the version needs none. The warm-up shows the control plane serves the
/// object and answers a hello at once; the data plane this test is about then pays only for the
/// encode and its own apply, and keeps the session through both.
async fn warm_up(scene: &Scene) {
    let served = scene.cp.served().await;
    let applied = serde_json::json!({
        "lineage": served["lineage"],
        "version": served["version"],
        "hash": served["hash"],
    });
    let mut warm = ws::connect(
        scene.cp.addr(),
        SUBSCRIBE_PATH,
        Some(&format!("Bearer {DP_TOKEN}")),
    )
    .await
    .expect("connect to the control plane")
    .expect_accepted();
    warm.send_text(&hello("warm-up", Some(&applied)))
        .await
        .expect("hello");
    let welcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match warm.recv().await.expect("read the welcome") {
                Some(Frame::Text(text)) => {
                    break serde_json::from_str::<serde_json::Value>(&text).expect("JSON");
                }
                Some(_) => {}
                None => panic!("the control plane closed the warm-up session"),
            }
        }
    })
    .await
    .expect("the warm-up session's welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["up_to_date"], true, "{welcome}");
}
