//! Accept only what can be delivered (issue #10: "a 9.2 MB YAML file whose ids contain many
//! backslashes becomes a 17.8 MB JSON snapshot, over the 16 MiB message bound: the control plane
//! serves it, every data plane drops the session and reconnects in a loop, and no NACK or
//! rejection is ever reported"), scaled down with a smaller `--max-message-bytes`:
//!
//! - the control plane refuses the version, naming the size and the limit, in
//!   `/debug/snapshots`, its audit log and its metrics, and keeps serving the previous one;
//! - the data planes keep their table and their one session: nothing is sent that they would
//!   have to drop the session for;
//! - `control-plane validate` runs the same check and says the same thing.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, Output};

use cellroute_tests::fixture::Cells;
use cellroute_tests::process::{bin_path, scrub_env};
use cellroute_tests::push::{OBJECT, Scene, Table};
use cellroute_tests::wait::{SOON, eventually};

const CELLS: [&str; 2] = ["cell-a", "cell-b"];
/// The scaled-down message bound of the control plane.
const LIMIT: usize = 64 * 1024;
/// Customers of the backslash table, each id 200 backslashes long after its prefix.
const CUSTOMERS: usize = 200;
const BACKSLASHES: usize = 200;

/// The file, scaled down: YAML whose customer ids are mostly backslashes. Each one is a
/// single byte in YAML (single-quoted) and two in JSON, so the file fits the bound and its
/// snapshot message does not.
fn backslash_yaml(cells: &Cells) -> String {
    let mut yaml = String::from(
        "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nmetadata: {name: routes, namespace: default}\nspec:\n  defaultPlacement: cell-a\n  customerToPlacement:\n",
    );
    for i in 0..CUSTOMERS {
        yaml.push_str(&format!("    'c{i:04}{}': cell-b\n", "\\".repeat(BACKSLASHES)));
    }
    yaml.push_str(&format!(
        "  placementToEndpoint:\n    cell-a: '{}'\n    cell-b: '{}'\n",
        cells.url("cell-a"),
        cells.url("cell-b")
    ));
    yaml
}

fn validate(file: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin_path("control-plane"));
    cmd.arg("validate").arg(file).args(extra);
    scrub_env(&mut cmd);
    cmd.output().expect("run control-plane validate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_over_the_message_bound_is_refused_and_the_previous_one_served() {
    let cells = Scene::cells(&CELLS).await;
    let first = Table::new(&cells, &CELLS, "cell-a").customer("acme", "cell-b");
    let yaml = backslash_yaml(&cells);
    assert!(
        yaml.len() < LIMIT,
        "the file itself ({} bytes) must fit",
        yaml.len()
    );
    let limit = LIMIT.to_string();
    let scene = Scene::start(cells, &first, &["--max-message-bytes", &limit]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let dp = scene.follower("dp-1", Some(&first), &[]).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    dp.wait_routes(&[("acme", "cell-b")], SOON).await;

    scene.write_bytes(yaml.as_bytes());
    let rejection = eventually("the version to be refused", SOON, || async {
        let snapshots = scene.cp.get("/debug/snapshots").await;
        let entry = snapshots.json["snapshots"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["object"] == OBJECT).cloned())
            .ok_or_else(|| snapshots.to_string())?;
        if entry["rejection"].is_null() {
            Err(entry.to_string())
        } else {
            Ok(entry)
        }
    })
    .await;
    let error = rejection["rejection"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eprintln!("the refusal: {error}");
    assert!(error.contains(&format!("{LIMIT}-byte limit")), "{error}");
    assert!(error.contains("--max-message-bytes"), "{error}");
    let bytes: usize = error
        .split_whitespace()
        .zip(error.split_whitespace().skip(1))
        .find_map(|(n, unit)| (unit == "bytes,").then(|| n.parse().ok()).flatten())
        .unwrap_or_else(|| panic!("the refusal does not name the size: {error}"));
    assert!(bytes > LIMIT && bytes > yaml.len() * 3 / 2, "{bytes} bytes");
    // The previous version is still the one served, and the data plane still routes by it.
    assert_eq!(rejection["served"]["version"], v1, "{rejection}");
    assert_eq!(rejection["served"]["hash"], first.hash().as_str(), "{rejection}");
    scene
        .cp
        .running_process_log("the audit line", |r| {
            r["target"] == "audit"
                && r["message"] == "RoutingConfig rejected"
                && r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&format!("{LIMIT}-byte limit")))
        })
        .await;
    assert!(
        scene
            .cp
            .metric("cellroute_reconciles_total", &[("result", "rejected")])
            .await
            >= 1.0
    );
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    dp.assert_routes(&[("acme", "cell-b")]).await;
    assert_eq!(dp.counter("control_plane_sessions_total").await, 1.0);
    assert_eq!(dp.counter("cellroute_snapshots_received_total").await, 1.0);
    let ended = dp
        .dp
        .logs()
        .count(|r| r["message"] == "control-plane session ended; serving the current table and reconnecting");
    assert_eq!(ended, 0, "the data plane's session ended");

    // A table that fits again is served and applied.
    let fixed = Table::new(&scene.cells, &CELLS, "cell-a").customer("acme", "cell-a");
    let v2 = scene.publish(&fixed).await;
    assert!(v2 > v1);
    dp.wait_routes(&[("acme", "cell-a")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;

    // `control-plane validate` says the same, before anything runs.
    let file = scene.dir().join("backslashes.yaml");
    std::fs::write(&file, &yaml).expect("write the file");
    let refused = validate(&file, &["--max-message-bytes", &limit]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{LIMIT}-byte limit")) && stderr.contains("--max-message-bytes"),
        "{stderr}"
    );
    let fits = validate(&file, &[]);
    let stdout = String::from_utf8_lossy(&fits.stdout);
    assert!(
        fits.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&fits.stderr)
    );
    assert!(stdout.contains("valid"), "{stdout}");
}
