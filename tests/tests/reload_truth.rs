//! What the data plane reports about its file is the current truth: a file caught half-written
//! by the watcher is not a failure when it becomes whole, `last_error` is cleared once the file
//! is valid again, SIGHUP never kills the process (with or without `--config`), and the admin
//! token's scheme is case-insensitive.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::time::Duration;

use cellroute_tests::config::{Routes, write_in_place};
use cellroute_tests::fixture::{Cells, Harness, TOKEN};
use cellroute_tests::process::{DataPlane, Launch, field, is_audit};
use cellroute_tests::wait::{SOON, eventually};

/// A debounce long enough that the test writes the rest of a file well within one interval.
const DEBOUNCE: &str = "400ms";
const NOT_YET: &str =
    "the config file is not valid yet (it may still be being written); looking again once it has been quiet";

fn routes(cells: &Cells, acme: &str) -> Routes {
    Routes::new("tier-a")
        .customer("acme", acme)
        .placement("tier-a", &cells.url("cell-a"))
        .placement("tier-b", &cells.url("cell-b"))
}

/// The document cut where nothing after the cut (the endpoints) has been written yet.
fn halves(doc: &str) -> (&str, &str) {
    let cut = doc
        .find("placementToEndpoint")
        .expect("endpoints in the document")
        - 3;
    doc.split_at(cut)
}

async fn failures(h: &Harness) -> f64 {
    h.admin.counter("config_reload_failure_total", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_file_that_becomes_whole_is_not_a_failure() {
    let cells = Cells::start(&["cell-a", "cell-b"]).await;
    let first = routes(&cells, "tier-a");
    let second = routes(&cells, "tier-b");
    let mut h = Harness::start(cells, &first, &["--reload-debounce", DEBOUNCE]).await;
    h.proxy.assert_cell(Some("acme"), "cell-a").await;

    let doc = second.render();
    let (head, tail) = halves(&doc);
    write_in_place(&h.config_path, head.as_bytes()).expect("write the first half");
    // The watcher reads the half file ...
    h.dp.wait_for_log("the read of the half-written file", SOON, |r| {
        field(r, "message") == Some(NOT_YET)
    })
    .await;
    // ... and the rest lands within the next debounce interval.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&h.config_path)
        .expect("open for append");
    file.write_all(tail.as_bytes()).expect("write the second half");
    file.sync_all().expect("sync");
    drop(file);

    h.proxy.wait_for_cell(Some("acme"), "cell-b", SOON).await;
    let config = h.admin.config().await;
    assert_eq!(config.u64("config_generation"), Some(2), "{config}");
    assert!(config.json["last_error"].is_null(), "{config}");
    assert_eq!(
        failures(&h).await,
        0.0,
        "a transient half file was counted as a failure"
    );
    assert_eq!(
        h.admin
            .metric("config_last_reload_failure_timestamp_seconds", &[])
            .await,
        Some(0.0)
    );
    assert_eq!(h.dp.logs().count(|r| is_audit(r, "config rejected")), 0);
    h.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_stays_invalid_is_a_failure_and_last_error_clears_when_it_is_fixed() {
    let cells = Cells::start(&["cell-a", "cell-b"]).await;
    let first = routes(&cells, "tier-a");
    let second = routes(&cells, "tier-b");
    let h = Harness::start(cells, &first, &["--reload-debounce", DEBOUNCE]).await;

    // Half a file that nobody finishes: once it has been quiet for the debounce, a failure.
    let doc = second.render();
    write_in_place(&h.config_path, halves(&doc).0.as_bytes()).expect("write half");
    eventually(
        "the half file to be counted once it stayed invalid",
        SOON,
        || async {
            match failures(&h).await {
                1.0 => Ok(()),
                n => Err(format!("config_reload_failure_total = {n}")),
            }
        },
    )
    .await;
    let config = h.admin.config().await;
    let error = config.json["last_error"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("placementToEndpoint"), "{config}");
    assert_eq!(config.json["last_error"]["trigger"], "watch", "{config}");
    h.proxy.assert_cell(Some("acme"), "cell-a").await;

    // The file fixed, to the very content already active: nothing changes, but the error is
    // no longer the truth.
    write_in_place(&h.config_path, first.render().as_bytes()).expect("restore");
    eventually("last_error to clear", SOON, || async {
        let config = h.admin.config().await;
        if config.json["last_error"].is_null() {
            Ok(())
        } else {
            Err(format!("{config}"))
        }
    })
    .await;
    assert_eq!(
        h.admin.generation().await,
        1,
        "identical content must not be a new generation"
    );

    // The same for an explicit reload: a failure is recorded at once, and cleared by success.
    write_in_place(&h.config_path, b"not: [a, routing config").expect("break");
    assert_eq!(h.admin.reload().await.status, 400);
    assert!(!h.admin.config().await.json["last_error"].is_null());
    write_in_place(&h.config_path, second.render().as_bytes()).expect("fix");
    let reply = h.admin.reload().await;
    assert_eq!(reply.status, 200, "{reply}");
    let config = h.admin.config().await;
    assert!(config.json["last_error"].is_null(), "{config}");
    h.proxy.assert_cell(Some("acme"), "cell-b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_config_file_does_not_kill_the_data_plane() {
    let mut dp = DataPlane::launch(Launch::default()).await;
    for i in 1..=3 {
        dp.sighup();
        eventually(&format!("SIGHUP {i} to be handled"), SOON, || async {
            match dp.logs().count(|r| {
                field(r, "message")
                    == Some("SIGHUP received; there is no --config file to reload, nothing to do")
            }) {
                n if n >= i => Ok(()),
                n => Err(format!("{n} handled")),
            }
        })
        .await;
    }
    assert!(dp.is_running(), "the data plane died of SIGHUP");
    let admin = cellroute_tests::admin::AdminClient::new(dp.admin_addr(), TOKEN);
    assert_eq!(admin.healthz().await.status, 200);
    // Still no table, still answering.
    assert_eq!(admin.readyz().await.status, 503);
    assert!(dp.wait_for_exit(Duration::from_millis(200)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_scheme_is_case_insensitive() {
    let h = Harness::start(Cells::default(), &routes_of(), &["--no-watch"]).await;
    for scheme in ["BEARER", "bearer", "BeArEr"] {
        let reply = h
            .admin
            .post_as("/admin/reload", Some(&format!("{scheme} {TOKEN}")))
            .await;
        assert_eq!(reply.status, 200, "{scheme}: {reply}");
        assert_eq!(reply.str("status"), "success", "{scheme}: {reply}");
    }
    // The token itself is still compared exactly.
    let reply = h
        .admin
        .post_as("/admin/reload", Some(&format!("BEARER {}", TOKEN.to_uppercase())))
        .await;
    assert_eq!(reply.status, 401, "{reply}");
}

fn routes_of() -> Routes {
    Routes::new("tier-a").placement("tier-a", "http://127.0.0.1:1")
}
