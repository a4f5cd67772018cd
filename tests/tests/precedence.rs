//! Source precedence as the control plane sees it: whatever an operator does on a managed data
//! plane, the control plane never shows SYNCED for a table the data plane does not serve.
//!
//! - A rollback while managed is refused with 409, like a reload, and changes nothing.
//! - Pinning the local file (break-glass) makes the data plane tell the control plane at once
//!   (its version is then REJECTED as pinned), without waiting for the next version; a rollback
//!   while pinned is the operator's to make; releasing the pin makes it SYNCED again.
//! - A local file error does not outlive the fix while managed: the fixed file is checked (not
//!   applied) and `last_error` cleared.

#![forbid(unsafe_code)]

use cellroute_tests::client::Reply;
use cellroute_tests::fixture::Cells;
use cellroute_tests::push::{Follower, Scene, Table};
use cellroute_tests::wait::{SOON, eventually};

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];
const ID: &str = "dp-1";

fn routes(cells: &Cells) -> Table {
    Table::new(cells, &CELLS, "cell-c")
}

async fn post(dp: &Follower, path: &str, body: &str) -> Reply {
    let response = dp
        .proxy
        .http()
        .post(format!("http://{}{path}", dp.dp.admin_addr()))
        .header("authorization", dp.admin.bearer())
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    Reply::read(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_data_plane_refuses_a_rollback_and_reports_break_glass() {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    let local = routes(&cells).customer("acme", "cell-b");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let dp = scene.follower(ID, Some(&local), &[]).await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v1), SOON).await;
    // History: generation 1 the local file, 2 the push. A rollback would go back to the file.
    let second = routes(&scene.cells).customer("acme", "cell-c");
    let v2 = scene.publish(&second).await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v2), SOON).await;
    dp.wait_routes(&[("acme", "cell-c")], SOON).await;
    let generation = dp.admin.generation().await;

    for path in ["/admin/rollback", "/admin/rollback?generation=1"] {
        let refused = post(&dp, path, "").await;
        assert_eq!(refused.status, 409, "{path}: {refused}");
        assert_eq!(
            refused.str("message"),
            "Configuration rollback failed",
            "{refused}"
        );
        let error = refused.str("error");
        assert!(
            error.contains("manages this data plane's routing")
                && error.contains("roll back the RoutingConfig"),
            "{error}"
        );
    }
    dp.assert_routes(&[("acme", "cell-c")]).await;
    let config = dp.config().await;
    assert_eq!(config["config_generation"], generation, "{config}");
    assert_eq!(config["mode"], "managed", "{config}");
    assert!(
        config["last_error"].is_null(),
        "a refusal is not a bad config: {config}"
    );
    assert_eq!(dp.counter("config_reload_failure_total").await, 0.0);
    // And the control plane's view is still the truth.
    scene.cp.wait_state(&[ID], "SYNCED", Some(v2), SOON).await;

    // Break-glass: the control plane learns at once that its version is not served here.
    let pinned = post(&dp, "/admin/source", r#"{"source":"file"}"#).await;
    assert_eq!(pinned.status, 200, "{pinned}");
    dp.assert_routes(&[("acme", "cell-b")]).await;
    let rejected = scene.cp.wait_state(&[ID], "REJECTED", Some(v2), SOON).await;
    let error = rejected[0]["record"]["nacked"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("pinned"), "{}", rejected[0]);

    // Pinned, the operator owns the table: a rollback applies (back to the pushed content).
    let rolled = post(&dp, "/admin/rollback", "").await;
    assert_eq!(rolled.status, 200, "{rolled}");
    dp.assert_routes(&[("acme", "cell-c")]).await;
    assert_eq!(dp.config().await["mode"], "pinned-to-file");
    // Still not the control plane's table as far as it knows: the rollback is local.
    let entry = scene.cp.dataplane(ID).await.expect("listed");
    assert_ne!(entry["state"], "SYNCED", "{entry}");

    // Released: the pushed version again, and SYNCED.
    let released = post(&dp, "/admin/source", r#"{"source":"control-plane"}"#).await;
    assert_eq!(released.status, 200, "{released}");
    scene.cp.wait_state(&[ID], "SYNCED", Some(v2), SOON).await;
    let config = dp.config().await;
    assert_eq!(config["source"], "control-plane", "{config}");
    assert_eq!(config["snapshot"]["version"], v2, "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_file_fixed_while_managed_clears_its_last_error_without_applying() {
    let cells = Scene::cells(&CELLS).await;
    let pushed = routes(&cells).customer("acme", "cell-a");
    let scene = Scene::start(cells, &pushed, &[]).await;
    let v1 = scene.cp.wait_served(&pushed).await;
    // No local file at start: a file error, then the push makes the data plane managed.
    let dp = scene.follower(ID, None, &[]).await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v1), SOON).await;
    let config = dp.config().await;
    assert_eq!(config["mode"], "managed", "{config}");
    assert_eq!(config["last_error"]["source"], "file", "{config}");
    let failures = dp.counter("config_reload_failure_total").await;

    // The file appears, valid: not applied (managed), but no longer reported as broken.
    dp.write_local(&routes(&scene.cells).customer("acme", "cell-b"));
    eventually("last_error to clear", SOON, || async {
        let config = dp.config().await;
        if config["last_error"].is_null() {
            Ok(config)
        } else {
            Err(format!("{config}"))
        }
    })
    .await;
    dp.assert_routes(&[("acme", "cell-a")]).await;
    let config = dp.config().await;
    assert_eq!(config["mode"], "managed", "{config}");
    assert_eq!(config["source"], "control-plane", "{config}");
    assert_eq!(dp.counter("config_reload_failure_total").await, failures);
    scene.cp.wait_state(&[ID], "SYNCED", Some(v1), SOON).await;
}
