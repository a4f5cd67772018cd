//! A large snapshot does not cost the session: the data plane keeps heartbeating while it
//! decodes and applies, so neither side drops a healthy session however long the apply takes.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cellroute_tests::push::{Scene, Table};
use cellroute_tests::wait::SOON;

const CELLS: [&str; 2] = ["cell-a", "cell-b"];
const ID: &str = "dp-1";
/// The file parser's node budget (routing-model) caps a file at about 125k customers.
const CUSTOMERS: usize = 120_000;
/// Short on both sides, so an apply that blocked the session loop would end it.
const HEARTBEAT: &str = "50ms";
const HEARTBEAT_TIMEOUT: &str = "250ms";
const TIMEOUT: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_apply_keeps_the_session() {
    let cells = Scene::cells(&CELLS).await;
    let big = Table::new(&cells, &CELLS, "cell-a")
        .filler(CUSTOMERS, "cell-b")
        .customer("acme", "cell-b");
    let beat = ["--heartbeat", HEARTBEAT, "--heartbeat-timeout", HEARTBEAT_TIMEOUT];
    // The control plane parses the file before the data plane connects: what is measured is the
    // data plane's decode and apply, with the control plane idle and pinging.
    let scene = Scene::start(cells, &big, &beat).await;
    let v1 = scene.cp.wait_served(&big).await;
    let started = Instant::now();
    let dp = scene.follower(ID, None, &beat).await;
    let synced = scene
        .cp
        .wait_state(&[ID], "SYNCED", Some(v1), Duration::from_secs(120))
        .await;
    let took = started.elapsed();
    eprintln!("{CUSTOMERS} customers: SYNCED {took:?} after the data plane started");
    let _ = took;
    dp.wait_routes(&[("acme", "cell-b"), ("filler-12345", "cell-b")], SOON)
        .await;

    // Receiving, decoding and applying the snapshot has to outlast the heartbeat timeout well,
    // or this test proves nothing: measured on the data plane's own clock, from the session
    // opening to the table applied.
    let at = |message: &str| {
        let record = dp
            .dp
            .logs()
            .records()
            .into_iter()
            .find(|r| r["message"] == message && (message != "config applied" || r["source"] == "control-plane"))
            .unwrap_or_else(|| panic!("no `{message}` log line"));
        let stamp = record["timestamp"].as_str().unwrap_or_default().to_owned();
        chrono_free_seconds(&stamp)
    };
    let busy = Duration::from_secs_f64(at("config applied") - at("connected to the control plane"));
    assert!(
        busy > TIMEOUT * 2,
        "the apply took {busy:?}, not well over the heartbeat timeout {TIMEOUT:?}: make the table larger"
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
    assert_eq!(dp.dp.logs().count(silent), 0, "the data plane timed the control plane out");
    assert_eq!(scene.cp.logs().count(silent), 0, "the control plane timed the data plane out");
}

/// Seconds of the day of an RFC 3339 timestamp `YYYY-MM-DDTHH:MM:SS.ffffffZ` (the tests run
/// well within one day).
fn chrono_free_seconds(stamp: &str) -> f64 {
    let time = stamp.split('T').nth(1).unwrap_or_default().trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0.0);
    let m: f64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0.0);
    let s: f64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0.0);
    h * 3600.0 + m * 60.0 + s
}
