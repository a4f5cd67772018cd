//! File-mode versions (issue #10: "file-mode versions are wall-clock milliseconds, so a control
//! plane whose clock is an hour behind gets every edit NACKed as older, and older file content
//! after a restart gets a higher version"; "a restarted control plane with unchanged content
//! must not make every data plane re-download its table"), asked of the real binaries:
//!
//! - a restart on unchanged content serves the same version: the data plane is up to date and
//!   downloads nothing;
//! - older content after a restart gets a higher version, and is applied;
//! - a control plane restarted with its clock an hour behind still has its edits applied;
//! - a lost state file starts a new lineage, which data planes accept; a state directory that
//!   cannot be written is a warning, not an outage.

#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime};

use cellroute_tests::faketime;
use cellroute_tests::fixture::Cells;
use cellroute_tests::push::{Follower, Scene, Table};
use cellroute_tests::wait::{SOON, eventually};
use serde_json::Value;

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];

fn routes(cells: &Cells) -> Table {
    Table::new(cells, &CELLS, "cell-c")
}

/// Waits until `dp` has opened `sessions` sessions with the control plane and is connected.
async fn wait_reconnected(dp: &Follower, sessions: f64) {
    dp.wait_counter("control_plane_sessions_total", sessions, SOON)
        .await;
    dp.wait_connected(true, SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_unchanged_content_keeps_the_version_and_downloads_nothing() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    let mut scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let lineage = scene.cp.served().await["lineage"].clone();
    let dp = scene.follower("dp-1", Some(&routes(&scene.cells)), &[]).await;
    dp.wait_routes(&[("acme", "cell-a")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    let received = dp.counter("cellroute_snapshots_received_total").await;
    assert_eq!(received, 1.0);

    for restart in 1..=2 {
        scene.cp.kill_9().await;
        scene.cp.restart().await;
        let served = scene.cp.wait_served(&first).await;
        assert_eq!(
            served, v1,
            "restart {restart}: the same content got another version"
        );
        assert_eq!(scene.cp.served().await["lineage"], lineage, "restart {restart}");
        wait_reconnected(&dp, 1.0 + f64::from(restart)).await;
        scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
        assert_eq!(
            dp.counter("cellroute_snapshots_received_total").await,
            received,
            "restart {restart}: the data plane downloaded the table again"
        );
    }
    // Rewriting the file with the same content is not a version either.
    let unchanged = scene
        .cp
        .metric("cellroute_reconciles_total", &[("result", "unchanged")])
        .await;
    scene.write(&first);
    eventually("the rewrite to be read", SOON, || async {
        let now = scene
            .cp
            .metric("cellroute_reconciles_total", &[("result", "unchanged")])
            .await;
        if now > unchanged {
            Ok(())
        } else {
            Err(format!("{now} unchanged reloads"))
        }
    })
    .await;
    assert_eq!(scene.cp.served().await["version"], v1);
    let edit = routes(&scene.cells).customer("acme", "cell-b");
    let v2 = scene.publish(&edit).await;
    assert_eq!(v2, v1 + 1, "one edit, one version");
    dp.wait_routes(&[("acme", "cell-b")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_content_after_a_restart_gets_a_higher_version() {
    let cells = Scene::cells(&CELLS).await;
    let older = routes(&cells).customer("acme", "cell-a");
    let newer = routes(&cells).customer("acme", "cell-b");
    let mut scene = Scene::start(cells, &older, &[]).await;
    let v1 = scene.cp.wait_served(&older).await;
    let dp = scene.follower("dp-1", Some(&routes(&scene.cells)), &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    let v2 = scene.publish(&newer).await;
    assert!(v2 > v1);
    dp.wait_routes(&[("acme", "cell-b")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;

    // The older file comes back while the control plane is down (a rollback of the file).
    scene.cp.kill_9().await;
    scene.write(&older);
    scene.cp.restart().await;
    let v3 = scene.cp.wait_served(&older).await;
    assert!(
        v3 > v2,
        "older content after a restart got version {v3}, not above {v2}"
    );
    dp.wait_routes(&[("acme", "cell-a")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v3), SOON).await;
    assert_eq!(dp.counter("cellroute_snapshot_nacks_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_does_not_stop_edits() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    let mut scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let dp = scene.follower("dp-1", Some(&routes(&scene.cells)), &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;

    // The control plane comes back with its clock an hour behind.
    scene.cp.kill_9().await;
    scene.cp.restart_with_env(&faketime::stepped("-1h")).await;
    let logged = scene
        .cp
        .running_process_log("the first log line", |r| r["timestamp"].is_string())
        .await;
    let logged_at = logged["timestamp"].as_str().unwrap_or_default();
    let stamp = humantime::parse_rfc3339_weak(logged_at)
        .unwrap_or_else(|e| panic!("log timestamp {logged_at:?}: {e}"));
    let behind = SystemTime::now().duration_since(stamp).unwrap_or_default();
    assert!(
        behind > Duration::from_secs(50 * 60),
        "the control plane's clock is not an hour behind: it logged {logged_at}, {behind:?} before now"
    );
    assert_eq!(scene.cp.wait_served(&first).await, v1);
    wait_reconnected(&dp, 2.0).await;

    // Edits still apply: each gets a higher version, whatever the clock says.
    let mut previous = v1;
    for (i, cell) in ["cell-b", "cell-c"].into_iter().enumerate() {
        let edit = routes(&scene.cells)
            .customer("acme", cell)
            .customer(&format!("e{i}"), cell);
        let version = scene.publish(&edit).await;
        assert!(version > previous, "edit {i}: version {version} after {previous}");
        dp.wait_routes(&[("acme", cell)], SOON).await;
        scene
            .cp
            .wait_state(&["dp-1"], "SYNCED", Some(version), SOON)
            .await;
        previous = version;
    }
    assert_eq!(
        dp.counter("cellroute_snapshot_nacks_total").await,
        0.0,
        "{}",
        dp.config().await["control_plane"]["last_nack"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_file_starts_a_new_lineage_and_an_unwritable_one_is_a_warning() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    let mut scene = Scene::start(cells, &first, &[]).await;
    scene.cp.wait_served(&first).await;
    let lineage = scene.cp.served().await["lineage"].clone();
    let dp = scene.follower("dp-1", Some(&routes(&scene.cells)), &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", None, SOON).await;

    scene.cp.kill_9().await;
    std::fs::remove_dir_all(scene.state_dir()).expect("remove the state directory");
    scene.cp.restart().await;
    scene.cp.wait_served(&first).await;
    let relineaged = scene.cp.served().await["lineage"].clone();
    assert_ne!(relineaged, lineage, "a lost state file kept the lineage");
    wait_reconnected(&dp, 2.0).await;
    // Another lineage is always accepted: the data plane takes it (the same table, downloaded
    // once) and is SYNCED.
    scene.cp.wait_state(&["dp-1"], "SYNCED", None, SOON).await;
    eventually("the data plane on the new lineage", SOON, || async {
        let config = dp.config().await;
        if config["snapshot"]["lineage"] == relineaged {
            Ok(())
        } else {
            Err(format!("{}", config["snapshot"]))
        }
    })
    .await;
    assert_eq!(dp.counter("cellroute_snapshot_nacks_total").await, 0.0);

    // A state directory that cannot be written (it is a file): a warning that says what to do,
    // and the table is served all the same.
    let cells = Scene::cells(&CELLS).await;
    let blocked = tempfile::NamedTempFile::new().expect("temporary file");
    let blocked_arg = blocked.path().display().to_string();
    let table = routes(&cells).customer("acme", "cell-b");
    let other = Scene::start(cells, &table, &["--state-dir", &blocked_arg]).await;
    other.cp.wait_served(&table).await;
    let warning: Value = other
        .cp
        .running_process_log("the state warning", |r| {
            r["level"] == "WARN"
                && r["message"].as_str().is_some_and(|m| {
                    m.contains("cannot record the file-mode version") && m.contains("--state-dir")
                })
        })
        .await;
    eprintln!("an unwritable state directory: {warning}");
    let follower = other.follower("dp-2", Some(&routes(&other.cells)), &[]).await;
    follower.wait_routes(&[("acme", "cell-b")], SOON).await;
}
