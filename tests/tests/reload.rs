//! Hot reload without a restart, whichever way the new config file lands, and on SIGHUP.
//!
//! Each test moves a customer between cells more than once: a watcher that follows the inode
//! it first saw works for the first rename or symlink swap and then goes deaf, so one change
//! proves little.

#![forbid(unsafe_code)]

use std::time::Duration;

use cellroute_tests::config::{ConfigMapDir, Routes, write_in_place, write_replace};
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::wait::{SOON, eventually};
use serde_json::Value;

/// acme → the placement of `cell`; everyone else → cell-c. All three cells have a placement.
fn acme_on(cells: &Cells, placement: &str) -> Routes {
    Routes::new("tier-c")
        .customer("acme", placement)
        .placement("tier-a", &cells.url("cell-a"))
        .placement("tier-b", &cells.url("cell-b"))
        .placement("tier-c", &cells.url("cell-c"))
}

/// Waits until the newest history entry is `generation`, and returns it.
async fn history_entry(h: &Harness, generation: u64) -> Value {
    eventually(&format!("history entry {generation}"), SOON, || async {
        let reply = h.admin.history().await;
        let newest = reply.json["entries"][0].clone();
        if newest["generation"].as_u64() == Some(generation) {
            Ok(newest)
        } else {
            Err(format!("{reply}"))
        }
    })
    .await
}

/// Asserts that the data plane applied generation `generation` because its watcher fired.
async fn assert_applied_by_watch(h: &mut Harness, generation: u64, pid: u32) {
    let entry = history_entry(h, generation).await;
    assert_eq!(entry["trigger"], "watch", "{entry}");
    assert_eq!(entry["source"], "file", "{entry}");
    assert_eq!(h.admin.generation().await, generation);
    assert_eq!(h.dp.pid(), pid);
    h.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_rewrite_moves_a_customer() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let first = acme_on(&cells, "tier-a");
    let (second, third) = (acme_on(&cells, "tier-b"), acme_on(&cells, "tier-a"));
    let mut h = Harness::start(cells, &first, &["--reload-debounce", "50ms"]).await;
    let pid = h.dp.pid();
    h.proxy.assert_cell(Some("acme"), "cell-a").await;

    write_in_place(&h.config_path, second.render().as_bytes()).expect("rewrite in place");
    h.proxy.wait_for_cell(Some("acme"), "cell-b", SOON).await;
    assert_applied_by_watch(&mut h, 2, pid).await;

    write_in_place(&h.config_path, third.render().as_bytes()).expect("rewrite in place");
    h.proxy.wait_for_cell(Some("acme"), "cell-a", SOON).await;
    assert_applied_by_watch(&mut h, 3, pid).await;
    h.proxy.assert_cell(Some("globex"), "cell-c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_over_the_file_moves_a_customer() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let first = acme_on(&cells, "tier-a");
    let (second, third) = (acme_on(&cells, "tier-b"), acme_on(&cells, "tier-c"));
    let mut h = Harness::start(cells, &first, &["--reload-debounce", "50ms"]).await;
    let pid = h.dp.pid();
    h.proxy.assert_cell(Some("acme"), "cell-a").await;

    write_replace(&h.config_path, second.render().as_bytes()).expect("write and rename");
    h.proxy.wait_for_cell(Some("acme"), "cell-b", SOON).await;
    assert_applied_by_watch(&mut h, 2, pid).await;

    write_replace(&h.config_path, third.render().as_bytes()).expect("write and rename");
    h.proxy.wait_for_cell(Some("acme"), "cell-c", SOON).await;
    assert_applied_by_watch(&mut h, 3, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_moves_a_customer() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let first = acme_on(&cells, "tier-a");
    let (second, third) = (acme_on(&cells, "tier-b"), acme_on(&cells, "tier-c"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut volume =
        ConfigMapDir::create(&dir.path().join("config"), first.render().as_bytes()).expect("configmap dir");
    let file = volume.file();
    let mut h = Harness::start_at(cells, dir, file, &["--reload-debounce", "50ms"]).await;
    let pid = h.dp.pid();
    h.proxy.assert_cell(Some("acme"), "cell-a").await;

    volume.swap(second.render().as_bytes()).expect("swap ..data");
    h.proxy.wait_for_cell(Some("acme"), "cell-b", SOON).await;
    assert_applied_by_watch(&mut h, 2, pid).await;

    volume.swap(third.render().as_bytes()).expect("swap ..data");
    h.proxy.wait_for_cell(Some("acme"), "cell-c", SOON).await;
    assert_applied_by_watch(&mut h, 3, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_when_watching_is_off() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let first = acme_on(&cells, "tier-a");
    let (second, third) = (acme_on(&cells, "tier-b"), acme_on(&cells, "tier-c"));
    let mut h = Harness::start(cells, &first, &["--no-watch", "--reload-debounce", "10ms"]).await;
    let pid = h.dp.pid();

    h.write_config(&second);
    // With --no-watch nothing may pick the change up on its own. Watching for an absence
    // needs a window; 500 ms is fifty debounce periods.
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.proxy.assert_cell(Some("acme"), "cell-a").await;
    assert_eq!(
        h.admin.generation().await,
        1,
        "the file was reloaded without a SIGHUP"
    );

    h.dp.sighup();
    h.proxy.wait_for_cell(Some("acme"), "cell-b", SOON).await;
    let entry = history_entry(&h, 2).await;
    assert_eq!(entry["trigger"], "sighup", "{entry}");

    // A second SIGHUP works as well as the first.
    h.write_config(&third);
    h.dp.sighup();
    h.proxy.wait_for_cell(Some("acme"), "cell-c", SOON).await;
    assert_eq!(history_entry(&h, 3).await["trigger"], "sighup");
    assert_eq!(h.dp.pid(), pid);
    h.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_reload_is_audited_and_counted() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let first = acme_on(&cells, "tier-a");
    let second = acme_on(&cells, "tier-b");
    let h = Harness::start(cells, &first, &["--reload-debounce", "50ms"]).await;
    let successes = h.admin.counter("config_reload_success_total", &[]).await;

    h.write_config(&second);
    h.proxy.wait_for_cell(Some("acme"), "cell-b", SOON).await;
    let record =
        h.dp.wait_for_log("audit line of generation 2", SOON, |r| {
            cellroute_tests::process::is_audit(r, "config applied") && r["generation"].as_u64() == Some(2)
        })
        .await;
    assert_eq!(record["trigger"], "watch", "{record}");
    let diff = record["diff"].as_str().unwrap_or_default();
    assert!(
        diff.contains("acme"),
        "the audit line should name the moved customer: {record}"
    );
    assert_eq!(
        h.admin.counter("config_reload_success_total", &[]).await,
        successes + 1.0
    );
    assert_eq!(h.admin.metric("config_generation", &[]).await, Some(2.0));
}
