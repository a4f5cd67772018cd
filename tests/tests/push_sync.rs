//! The snapshot push in steady state: a control plane serving one RoutingConfig file and data
//! planes following it over WebSocket, all real processes on loopback.
//!
//! - an edit of the file converges on every data plane, and `/debug/dataplanes` says SYNCED;
//! - a data plane over its `--max-customers` NACKs: the control plane shows REJECTED with the
//!   data plane's own error, and that data plane keeps serving its file's table;
//! - break-glass: `POST /admin/source` pins a data plane to its file and releases it;
//! - a RoutingConfig that disappears from the control plane leaves its data planes serving,
//!   reported as orphaned.

#![forbid(unsafe_code)]

use std::time::Instant;

use cellroute_tests::fixture::Cells;
use cellroute_tests::push::{Follower, OBJECT, Scene, Table};
use cellroute_tests::wait::{SOON, eventually};

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];

/// Every customer of `table` that the test looks at, with its cell.
fn expected<'t>(table: &'t Table, customers: &[&'t str]) -> Vec<(&'t str, &'t str)> {
    customers.iter().map(|c| (*c, table.cell_of(c))).collect()
}

fn routes(cells: &Cells) -> Table {
    Table::new(cells, &CELLS, "cell-c")
}

/// Waits until a log record of `follower` has `message`.
async fn wait_log(follower: &Follower, message: &str) -> serde_json::Value {
    follower
        .dp
        .wait_for_log(message, SOON, |r| r["message"] == message)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edit_converges_on_every_data_plane() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    // The data planes' own files route acme elsewhere, so routing proves which table is active.
    let local = routes(&cells).customer("acme", "cell-b");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;

    let ids = ["dp-1", "dp-2", "dp-3"];
    let mut fleet = Vec::new();
    for id in ids {
        fleet.push(scene.follower(id, Some(&local), &[]).await);
    }
    scene.cp.wait_state(&ids, "SYNCED", Some(v1), SOON).await;
    for dp in &fleet {
        dp.wait_routes(&expected(&first, &["acme", "globex"]), SOON).await;
    }

    // The edit: acme moves, globex appears.
    let second = routes(&scene.cells)
        .customer("acme", "cell-c")
        .customer("globex", "cell-b");
    let edited = Instant::now();
    scene.write(&second);
    for dp in &fleet {
        dp.wait_routes(&expected(&second, &["acme", "globex", "initech"]), SOON)
            .await;
    }
    let routed = edited.elapsed();
    let v2 = scene.cp.wait_served(&second).await;
    assert!(v2 > v1, "versions must rise: {v1} then {v2}");
    let entries = scene.cp.wait_state(&ids, "SYNCED", Some(v2), SOON).await;
    eprintln!(
        "edit routed on all 3 data planes after {routed:?}, SYNCED after {:?}",
        edited.elapsed()
    );
    // The same view as a metric, for alerting on data planes that are behind.
    assert_eq!(
        scene
            .cp
            .metric("cellroute_data_planes", &[("state", "synced")])
            .await,
        3.0
    );
    assert_eq!(
        scene
            .cp
            .metric("cellroute_data_planes", &[("state", "stale")])
            .await,
        0.0
    );
    for entry in &entries {
        assert_eq!(entry["served"]["version"], v2, "{entry}");
        assert_eq!(entry["record"]["acked"]["hash"], second.hash(), "{entry}");
        assert_eq!(entry["record"]["connected"], true, "{entry}");
        assert_eq!(entry["record"]["user"], "static-token", "{entry}");
        assert_eq!(entry["routing_config"], OBJECT, "{entry}");
    }

    for dp in &fleet {
        let config = dp.config().await;
        assert_eq!(config["source"], "control-plane", "{}: {config}", dp.id);
        assert_eq!(config["mode"], "managed", "{}: {config}", dp.id);
        assert_eq!(config["snapshot"]["version"], v2, "{}: {config}", dp.id);
        assert_eq!(config["hash"], second.hash(), "{}: {config}", dp.id);
        let cp = &config["control_plane"];
        assert_eq!(cp["connected"], true, "{}: {config}", dp.id);
        assert_eq!(cp["orphaned"], false, "{}: {config}", dp.id);
        assert_eq!(cp["last_nack"], serde_json::Value::Null, "{}: {config}", dp.id);
        assert_eq!(cp["routing_config"], OBJECT, "{}: {config}", dp.id);
        assert_eq!(dp.counter("control_plane_connected").await, 1.0, "{}", dp.id);
        assert_eq!(
            dp.admin
                .metric("config_active_source", &[("source", "control-plane")])
                .await,
            Some(1.0),
            "{}",
            dp.id
        );
    }
    assert_eq!(scene.cp.metric("cellroute_connected_data_planes", &[]).await, 3.0);
    assert!(scene.cp.metric("cellroute_snapshot_acks_total", &[]).await >= 6.0);
    assert_eq!(scene.cp.metric("cellroute_snapshot_nacks_total", &[]).await, 0.0);

    // While managed, an edit of a data plane's own file is logged and not applied.
    let dp1 = &fleet[0];
    dp1.write_local(&routes(&scene.cells).customer("acme", "cell-a"));
    wait_log(
        dp1,
        "the local config file was not applied: the control plane manages routing (force it with POST /admin/source)",
    )
    .await;
    dp1.assert_routes(&expected(&second, &["acme", "globex"])).await;
    assert_eq!(dp1.config().await["snapshot"]["version"], v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_over_its_limit_nacks_and_keeps_its_file_table() {
    let cells = Scene::cells(&CELLS).await;
    // Three customers: over the small data plane's --max-customers 2.
    let first = routes(&cells)
        .customer("acme", "cell-a")
        .customer("globex", "cell-a")
        .customer("initech", "cell-a");
    let local = routes(&cells).customer("acme", "cell-b");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;

    let big = [
        scene.follower("dp-1", Some(&local), &[]).await,
        scene.follower("dp-2", Some(&local), &[]).await,
    ];
    let small = scene
        .follower("dp-small", Some(&local), &["--max-customers", "2"])
        .await;

    scene
        .cp
        .wait_state(&["dp-1", "dp-2"], "SYNCED", Some(v1), SOON)
        .await;
    let rejected = scene
        .cp
        .wait_state(&["dp-small"], "REJECTED", Some(v1), SOON)
        .await;
    let error = rejected[0]["record"]["nacked"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("3 customers") && error.contains("--max-customers 2"),
        "the NACK must carry the data plane's reason: {}",
        rejected[0]
    );
    assert_eq!(
        rejected[0]["record"]["acked"],
        serde_json::Value::Null,
        "{}",
        rejected[0]
    );

    // The refusing data plane serves the table of its own file, untouched.
    small
        .assert_routes(&[("acme", "cell-b"), ("globex", "cell-c")])
        .await;
    let config = small.config().await;
    assert_eq!(config["source"], "file", "{config}");
    assert_eq!(config["mode"], "local", "{config}");
    assert_eq!(config["config_generation"], 1, "{config}");
    assert_eq!(config["snapshot"], serde_json::Value::Null, "{config}");
    let last_nack = config["control_plane"]["last_nack"].as_str().unwrap_or_default();
    assert!(
        last_nack.contains(&v1.to_string()) && last_nack.contains("--max-customers 2"),
        "{config}"
    );
    assert_eq!(small.admin.readyz().await.status, 200);
    for dp in &big {
        dp.assert_routes(&expected(&first, &["acme", "globex", "initech"]))
            .await;
    }

    // A second version over the limit: the same story, at the new version.
    let second = routes(&scene.cells)
        .customer("acme", "cell-c")
        .customer("globex", "cell-b")
        .customer("initech", "cell-a");
    let v2 = scene.publish(&second).await;
    for dp in &big {
        dp.wait_routes(&expected(&second, &["acme", "globex"]), SOON)
            .await;
    }
    scene
        .cp
        .wait_state(&["dp-1", "dp-2"], "SYNCED", Some(v2), SOON)
        .await;
    scene
        .cp
        .wait_state(&["dp-small"], "REJECTED", Some(v2), SOON)
        .await;
    small
        .assert_routes(&[("acme", "cell-b"), ("globex", "cell-c")])
        .await;
    assert!(scene.cp.metric("cellroute_snapshot_nacks_total", &[]).await >= 2.0);
    assert!(small.counter("cellroute_snapshot_nacks_total").await >= 2.0);
    let warned = scene
        .cp
        .logs()
        .count(|r| r["message"] == "data plane rejected a snapshot" && r["data_plane"] == "dp-small");
    assert!(warned >= 2, "the control plane logs each NACK");

    // Back under the limit: the small data plane applies it and is SYNCED like the others.
    let third = routes(&scene.cells)
        .customer("acme", "cell-a")
        .customer("globex", "cell-b");
    let v3 = scene.publish(&third).await;
    small
        .wait_routes(&expected(&third, &["acme", "globex"]), SOON)
        .await;
    scene
        .cp
        .wait_state(&["dp-1", "dp-2", "dp-small"], "SYNCED", Some(v3), SOON)
        .await;
    assert_eq!(small.config().await["mode"], "managed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_pins_the_local_file_and_releases_it() {
    let cells = Scene::cells(&CELLS).await;
    let pushed = routes(&cells).customer("acme", "cell-a");
    let local = routes(&cells).customer("acme", "cell-b");
    let scene = Scene::start(cells, &pushed, &[]).await;
    let v1 = scene.cp.wait_served(&pushed).await;
    let dp = scene.follower("dp-1", Some(&local), &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    dp.wait_routes(&[("acme", "cell-a")], SOON).await;

    // The switch needs the admin token.
    let body = r#"{"source":"file"}"#;
    let anonymous = post_source(&dp, body, None).await;
    assert_eq!(anonymous.status, 401, "{anonymous}");
    let wrong = post_source(&dp, body, Some("Bearer nope")).await;
    assert_eq!(wrong.status, 401, "{wrong}");
    dp.assert_routes(&[("acme", "cell-a")]).await;

    let pinned = post_source(&dp, body, Some(&dp.admin.bearer())).await;
    assert_eq!(pinned.status, 200, "{pinned}");
    assert_eq!(pinned.json["mode"], "pinned-to-file", "{pinned}");
    dp.assert_routes(&[("acme", "cell-b")]).await;
    let config = dp.config().await;
    assert_eq!(config["source"], "file", "{config}");
    assert_eq!(config["mode"], "pinned-to-file", "{config}");

    // Pinned: routing follows the file...
    dp.write_local(&routes(&scene.cells).customer("acme", "cell-c"));
    dp.wait_routes(&[("acme", "cell-c")], SOON).await;
    // ...and pushes are refused with the pinned message.
    let second = routes(&scene.cells)
        .customer("acme", "cell-a")
        .customer("globex", "cell-b");
    let v2 = scene.publish(&second).await;
    let rejected = scene.cp.wait_state(&["dp-1"], "REJECTED", Some(v2), SOON).await;
    let error = rejected[0]["record"]["nacked"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("pinned"), "{}", rejected[0]);
    dp.assert_routes(&[("acme", "cell-c"), ("globex", "cell-c")])
        .await;
    assert_eq!(dp.config().await["mode"], "pinned-to-file");

    // Released: back to the newest pushed table, at once.
    let released = post_source(&dp, r#"{"source":"control-plane"}"#, Some(&dp.admin.bearer())).await;
    assert_eq!(released.status, 200, "{released}");
    assert_eq!(released.json["mode"], "managed", "{released}");
    dp.assert_routes(&[("acme", "cell-a"), ("globex", "cell-b")])
        .await;
    let config = dp.config().await;
    assert_eq!(config["source"], "control-plane", "{config}");
    assert_eq!(config["snapshot"]["version"], v2, "{config}");

    // The control plane must learn that the data plane now serves the served version.
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_source_is_reported_when_file_and_push_are_identical() {
    // The data plane's file holds exactly what the control plane pushes: the table is shared,
    // only its label changes, and the admin API and metrics must follow the label.
    let cells = Scene::cells(&CELLS).await;
    let table = routes(&cells).customer("acme", "cell-a");
    let scene = Scene::start(cells, &table, &[]).await;
    let v1 = scene.cp.wait_served(&table).await;
    let dp = scene.follower("dp-1", Some(&table), &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    let local_path = dp.config_path.display().to_string();
    let mut problems = Vec::new();

    let config = dp.config().await;
    assert_eq!(config["source"], "control-plane", "{config}");
    assert_eq!(config["snapshot"]["version"], v1, "{config}");
    let detail = config["source_detail"].as_str().unwrap_or_default();
    if detail.contains(&local_path) || !detail.contains(&v1.to_string()) {
        problems.push(format!(
            "managed by the control plane at version {v1}, source_detail still says {detail:?}"
        ));
    }

    let pinned = post_source(&dp, r#"{"source":"file"}"#, Some(&dp.admin.bearer())).await;
    assert_eq!(pinned.status, 200, "{pinned}");
    let config = dp.config().await;
    assert_eq!(config["mode"], "pinned-to-file", "{config}");
    if config["source"] != "file" {
        problems.push(format!(
            "pinned to the file, /admin/config says source {} (source_detail {})",
            config["source"], config["source_detail"]
        ));
    }
    let metric = dp
        .admin
        .metric("config_active_source", &[("source", "file")])
        .await;
    if metric != Some(1.0) {
        problems.push(format!(
            "pinned to the file, config_active_source{{source=\"file\"}} is {metric:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_data_planes_message_limit_is_refused_without_a_reconnect_loop() {
    let cells = Scene::cells(&CELLS).await;
    // About 8 KiB as a snapshot message: over the tiny data plane's 4 KiB limit (which it
    // announces in its hello). gzip would carry it well under 4 KiB, but the limit is on what the
    // data plane has to decode.
    let table = routes(&cells).filler(300, "cell-c").customer("acme", "cell-a");
    let local = routes(&cells).customer("acme", "cell-b");
    let scene = Scene::start(cells, &table, &[]).await;
    let v1 = scene.cp.wait_served(&table).await;
    let normal = scene.follower("dp-1", Some(&local), &[]).await;
    let tiny = scene
        .follower("dp-tiny", Some(&local), &["--max-message-bytes", "4096"])
        .await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    normal.wait_routes(&[("acme", "cell-a")], SOON).await;

    // The control plane sends a too-large notice instead; the data plane NACKs it.
    let rejected = scene
        .cp
        .wait_state(&["dp-tiny"], "REJECTED", Some(v1), SOON)
        .await;
    let error = rejected[0]["record"]["nacked"]["error"]
        .as_str()
        .unwrap_or_default();
    eprintln!("the tiny data plane's NACK: {error}");
    assert!(error.contains("--max-message-bytes 4096"), "{}", rejected[0]);
    let bytes = scene.cp.metric("cellroute_snapshot_bytes", &[]).await;
    assert!(
        error.contains(&format!("{bytes}")),
        "the NACK must name the size ({bytes}): {error}"
    );
    assert_eq!(
        scene.cp.metric("cellroute_snapshots_too_large_total", &[]).await,
        1.0
    );
    // It keeps serving its own table, stays ready, and keeps its one session.
    tiny.assert_routes(&[("acme", "cell-b")]).await;
    assert_eq!(tiny.admin.readyz().await.status, 200);
    let last_nack = tiny.config().await["control_plane"]["last_nack"].clone();
    assert!(
        last_nack.as_str().is_some_and(|n| n.contains("4096")),
        "{last_nack}"
    );

    // The next version: the normal data plane applies it, the tiny one refuses it the same way,
    // in the same session: it never dropped the connection for the size.
    let second = table.clone().customer("acme", "cell-c");
    let v2 = scene.publish(&second).await;
    normal.wait_routes(&[("acme", "cell-c")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;
    scene
        .cp
        .wait_state(&["dp-tiny"], "REJECTED", Some(v2), SOON)
        .await;
    assert_eq!(tiny.counter("control_plane_sessions_total").await, 1.0);
    assert_eq!(tiny.counter("cellroute_snapshots_received_total").await, 2.0);
    let ended = tiny
        .dp
        .logs()
        .count(|r| r["message"] == "control-plane session ended; serving the current table and reconnecting");
    assert_eq!(ended, 0, "the tiny data plane's session ended");
    assert_eq!(scene.cp.get("/healthz").await.status, 200);

    // Back under its limit: it applies the table.
    let small = routes(&scene.cells).customer("acme", "cell-a");
    let v3 = scene.publish(&small).await;
    tiny.wait_routes(&[("acme", "cell-a")], SOON).await;
    scene
        .cp
        .wait_state(&["dp-1", "dp-tiny"], "SYNCED", Some(v3), SOON)
        .await;
}

async fn post_source(
    dp: &Follower,
    body: &str,
    authorization: Option<&str>,
) -> cellroute_tests::client::Reply {
    let mut request = dp
        .proxy
        .http()
        .post(format!("http://{}/admin/source", dp.dp.admin_addr()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("POST /admin/source");
    cellroute_tests::client::Reply::read(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_config_gone_from_the_control_plane_orphans_its_data_planes() {
    let cells = Scene::cells(&CELLS).await;
    let table = routes(&cells).customer("acme", "cell-a");
    let local = routes(&cells).customer("acme", "cell-b");
    let scene = Scene::start(cells, &table, &[]).await;
    let v1 = scene.cp.wait_served(&table).await;
    let dp = scene.follower("dp-1", Some(&local), &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    assert_eq!(dp.admin.metric("routing_config_orphaned", &[]).await, Some(0.0));

    // The file now names another object: default/routes is gone.
    scene.write(&table.clone().named("renamed"));
    eventually("default/routes to stop being served", SOON, || async {
        match scene.cp.served().await {
            serde_json::Value::Null => Ok(()),
            served => Err(format!("still served: {served}")),
        }
    })
    .await;
    eventually("the data plane to report orphaned", SOON, || async {
        let config = dp.config().await;
        if config["control_plane"]["orphaned"] == true {
            Ok(())
        } else {
            Err(format!("{}", config["control_plane"]))
        }
    })
    .await;
    assert_eq!(dp.admin.metric("routing_config_orphaned", &[]).await, Some(1.0));
    // It keeps serving its last-known-good table.
    dp.assert_routes(&[("acme", "cell-a")]).await;
    assert_eq!(dp.admin.readyz().await.status, 200);
    let config = dp.config().await;
    assert_eq!(config["source"], "control-plane", "{config}");
    assert_eq!(config["snapshot"]["version"], v1, "{config}");
    assert_eq!(config["control_plane"]["connected"], true, "{config}");
    let entry = scene.cp.dataplane("dp-1").await.expect("dp-1 listed");
    eprintln!("/debug/dataplanes for an orphaned data plane: {entry}");
    assert_eq!(entry["served"], serde_json::Value::Null, "{entry}");

    // The object comes back: no longer orphaned, and SYNCED to its new version.
    let back = routes(&scene.cells).customer("acme", "cell-c");
    let v2 = scene.publish(&back).await;
    assert!(v2 > v1);
    dp.wait_routes(&[("acme", "cell-c")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;
    let config = dp.config().await;
    assert_eq!(config["control_plane"]["orphaned"], false, "{config}");
    assert_eq!(dp.admin.metric("routing_config_orphaned", &[]).await, Some(0.0));
}
