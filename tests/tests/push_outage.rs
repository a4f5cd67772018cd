//! Data planes serve through control-plane outages: a `kill -9` under load, a data-plane restart
//! while the control plane is down, and a silent partition that only heartbeats can notice.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cellroute_tests::fixture::Cells;
use cellroute_tests::push::{Follower, Load, Scene, Table};
use cellroute_tests::relay::Relay;
use cellroute_tests::wait::{SOON, eventually};

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];

/// The heartbeat timeout both binaries default to.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);

fn routes(cells: &Cells) -> Table {
    Table::new(cells, &CELLS, "cell-c")
}

async fn generation(dp: &Follower) -> u64 {
    dp.admin.generation().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_control_plane_under_load_fails_no_request() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells)
        .customer("acme", "cell-a")
        .customer("globex", "cell-b");
    let local = routes(&cells);
    let mut scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let ids = ["dp-1", "dp-2", "dp-3"];
    let mut fleet = Vec::new();
    for id in ids {
        fleet.push(scene.follower(id, Some(&local), &[]).await);
    }
    scene.cp.wait_state(&ids, "SYNCED", Some(v1), SOON).await;
    let mut generations = Vec::new();
    for dp in &fleet {
        dp.wait_routes(&[("acme", "cell-a"), ("globex", "cell-b")], SOON)
            .await;
        generations.push(generation(dp).await);
    }

    let proxies: Vec<_> = fleet.iter().map(|dp| dp.proxy.clone()).collect();
    let load = Load::start(&proxies, &["acme", "globex", "initech"], 3);
    load.wait_for_more(100, SOON).await;

    // The control plane dies without a word.
    scene.cp.kill_9().await;
    for dp in &fleet {
        dp.wait_connected(false, SOON).await;
    }
    // The outage lasts until every data plane has been refused at least once on reconnect.
    for dp in &fleet {
        dp.dp
            .wait_for_log("a refused reconnect", SOON, |r| {
                r["message"] == "control-plane session ended; serving the current table and reconnecting"
                    && r["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("Connection refused"))
            })
            .await;
    }
    load.wait_for_more(300, SOON).await;
    for dp in &fleet {
        assert_eq!(dp.admin.readyz().await.status, 200, "{} must stay ready", dp.id);
        dp.assert_routes(&[("acme", "cell-a"), ("globex", "cell-b")])
            .await;
        assert_eq!(dp.config().await["snapshot"]["version"], v1);
    }

    // A fresh control plane, empty memory, same file: it offers the same content under a
    // version no lower than before, and the data planes re-sync without touching their tables.
    let restarted = Instant::now();
    scene.cp.restart().await;
    let v1b = scene.cp.wait_served(&first).await;
    assert!(
        v1b >= v1,
        "a restarted control plane offered version {v1b} after {v1}"
    );
    scene.cp.wait_state(&ids, "SYNCED", Some(v1b), SOON).await;
    eprintln!(
        "all 3 data planes re-synced {:?} after the restart",
        restarted.elapsed()
    );
    for (dp, before) in fleet.iter().zip(&generations) {
        let config = dp.config().await;
        assert_eq!(
            config["config_generation"], *before,
            "{}: the table was re-applied: {config}",
            dp.id
        );
        assert_eq!(config["snapshot"]["version"], v1b, "{}: {config}", dp.id);
        assert_eq!(config["hash"], first.hash(), "{}: {config}", dp.id);
        assert_eq!(config["control_plane"]["connected"], true, "{}: {config}", dp.id);
    }
    load.wait_for_more(100, SOON).await;

    // And the next edit converges everywhere, still under load.
    let second = routes(&scene.cells)
        .customer("acme", "cell-b")
        .customer("globex", "cell-a");
    let v2 = scene.publish(&second).await;
    assert!(v2 > v1b);
    for dp in &fleet {
        dp.wait_routes(&[("acme", "cell-b"), ("globex", "cell-a")], SOON)
            .await;
    }
    scene.cp.wait_state(&ids, "SYNCED", Some(v2), SOON).await;
    for (dp, before) in fleet.iter().zip(&generations) {
        assert_eq!(generation(dp).await, before + 1, "{}", dp.id);
    }
    load.wait_for_more(100, SOON).await;

    let report = load.stop().await;
    eprintln!(
        "{} requests through the outage, {} failed",
        report.ok,
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed: {:#?}",
        report.failures.len(),
        report.ok + report.failures.len() as u64,
        &report.failures[..report.failures.len().min(20)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_restarted_during_an_outage_serves_from_its_cache() {
    let cells = Scene::cells(&CELLS).await;
    let pushed = routes(&cells).customer("acme", "cell-a");
    // Its own file says otherwise, so the answer tells cache from file.
    let local = routes(&cells).customer("acme", "cell-b");
    let mut scene = Scene::start(cells, &pushed, &[]).await;
    let v1 = scene.cp.wait_served(&pushed).await;
    let dp = scene.follower("dp-1", Some(&local), &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    dp.wait_counter("cellroute_cache_writes_total", 1.0, SOON).await;

    scene.cp.kill_9().await;
    dp.kill_9().await;
    let dp = scene.follower("dp-1", None, &[]).await;
    // At once: the cache was applied before the listeners were announced.
    assert_eq!(dp.admin.readyz().await.status, 200);
    dp.assert_routes(&[("acme", "cell-a"), ("globex", "cell-c")])
        .await;
    let config = dp.config().await;
    assert_eq!(config["source"], "cache", "{config}");
    assert_eq!(config["mode"], "managed", "{config}");
    assert_eq!(config["snapshot"]["version"], v1, "{config}");
    assert_eq!(config["hash"], pushed.hash(), "{config}");
    assert_eq!(config["control_plane"]["connected"], false, "{config}");
    assert_eq!(
        dp.admin
            .metric("config_active_source", &[("source", "cache")])
            .await,
        Some(1.0)
    );
    assert_eq!(dp.counter("cellroute_cache_load_failures_total").await, 0.0);
    dp.dp
        .wait_for_log("the cache log line", SOON, |r| {
            r["message"] == "serving the last-known-good snapshot from the cache"
        })
        .await;

    // The control plane comes back on the same file: the same version (its versions are kept
    // across restarts), so the data plane is up to date and downloads nothing.
    let received = dp.counter("cellroute_snapshots_received_total").await;
    scene.cp.restart().await;
    let v1b = scene.cp.wait_served(&pushed).await;
    assert_eq!(v1b, v1, "a restart on the same content moved the version");
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    eventually(
        "the data plane to be connected at the same version",
        SOON,
        || async {
            let config = dp.config().await;
            if config["control_plane"]["connected"] == true && config["snapshot"]["version"] == v1 {
                Ok(())
            } else {
                Err(format!("{config}"))
            }
        },
    )
    .await;
    assert_eq!(
        dp.counter("cellroute_snapshots_received_total").await,
        received,
        "the table was downloaded again"
    );
    assert_eq!(
        dp.config().await["config_generation"],
        config["config_generation"]
    );
    dp.assert_routes(&[("acme", "cell-a")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_is_noticed_by_both_sides() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let relay = Relay::start(scene.cp.addr()).await;
    let dp = scene
        .follower_to(
            "dp-1",
            &format!("ws://{}", relay.addr()),
            Some(&routes(&scene.cells)),
            &[],
        )
        .await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    dp.wait_connected(true, SOON).await;
    dp.wait_routes(&[("acme", "cell-a")], SOON).await;

    // Freeze the link: no FIN, no RST, nothing.
    let frozen = Instant::now();
    relay.freeze();
    let notice = HEARTBEAT_TIMEOUT + Duration::from_secs(4);
    dp.wait_connected(false, notice).await;
    let dp_noticed = frozen.elapsed();
    scene.cp.wait_state(&["dp-1"], "DISCONNECTED", None, notice).await;
    let cp_noticed = frozen.elapsed();
    eprintln!(
        "silent partition noticed by the data plane after {dp_noticed:?}, by the control plane after {cp_noticed:?}"
    );
    assert!(
        dp_noticed >= HEARTBEAT_TIMEOUT - Duration::from_millis(500),
        "noticed before the heartbeat timeout could pass ({dp_noticed:?}): something else closed the link"
    );
    dp.dp
        .wait_for_log("the data plane's heartbeat timeout", SOON, |r| {
            r["message"] == "control-plane session ended; serving the current table and reconnecting"
                && r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("heartbeat timeout"))
        })
        .await;
    let ended = scene
        .cp
        .logs()
        .records()
        .into_iter()
        .find(|r| r["message"] == "data plane session ended" && r["data_plane"] == "dp-1");
    let reason = ended
        .as_ref()
        .map(|r| r["reason"].to_string())
        .unwrap_or_default();
    assert!(
        reason.contains("heartbeat timeout"),
        "control plane's reason: {ended:?}"
    );
    // Routing never depended on the link.
    dp.assert_routes(&[("acme", "cell-a")]).await;
    assert_eq!(dp.admin.readyz().await.status, 200);

    // Heal it: the data plane reconnects and follows edits again.
    let healed = Instant::now();
    relay.thaw();
    dp.wait_connected(true, SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    eprintln!("reconnected {:?} after the link healed", healed.elapsed());
    let second = routes(&scene.cells).customer("acme", "cell-b");
    let v2 = scene.publish(&second).await;
    dp.wait_routes(&[("acme", "cell-b")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;
}
