//! Who may read the control plane's `/debug/*` (issue #10: "the control plane's `/debug/*` is
//! unauthenticated behind its Service"), asked of the real binary from a loopback address and
//! from this machine's non-loopback address, as a pod behind a Service would be seen:
//!
//! - loopback peers read `/debug/snapshots` and `/debug/dataplanes` without a token;
//! - other peers get `403` saying how to enable access, unless they send the bearer token of
//!   `--debug-token-file`, which is re-read on every request (rotation needs no restart);
//! - health, readiness, metrics and the push are not affected;
//! - a token file that cannot be used stops the start with a message naming it.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use cellroute_tests::client::Reply;
use cellroute_tests::net::{http_client_from, non_loopback_ipv4};
use cellroute_tests::peer::{Peer, hello};
use cellroute_tests::process::{bin_path, scrub_env};
use cellroute_tests::push::{DP_TOKEN, OBJECT, Scene, Table};
use serde_json::Value;

const CELLS: [&str; 2] = ["cell-a", "cell-b"];
const DEBUG_PATHS: [&str; 2] = ["/debug/snapshots", "/debug/dataplanes"];

/// `GET path` on the control plane's port at `host`, from `host` itself, with `bearer` if given.
async fn get_from(host: IpAddr, port: u16, path: &str, bearer: Option<&str>) -> Reply {
    let client = http_client_from(host);
    let mut request = client.get(format!("http://{}{path}", SocketAddr::new(host, port)));
    if let Some(token) = bearer {
        request = request.header("authorization", token);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {host}: {e}"));
    Reply::read(response).await
}

async fn scene(extra: &[&str]) -> Scene {
    let cells = Scene::cells(&CELLS).await;
    let table = Table::new(&cells, &CELLS, "cell-a").customer("acme", "cell-b");
    let scene = Scene::start_on(cells, &table, extra, "0.0.0.0:0".parse().expect("address")).await;
    scene.cp.wait_served(&table).await;
    scene
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_is_served_to_loopback_and_refused_elsewhere_without_a_token_file() {
    let scene = scene(&[]).await;
    let port = scene.cp.addr().port();
    let here = non_loopback_ipv4();
    let loopback: IpAddr = "127.0.0.1".parse().expect("address");
    let mut peer = Peer::open(SocketAddr::new(loopback, port), DP_TOKEN, "dp-1").await;
    peer.subscribe(&hello("dp-1", OBJECT, &Value::Null, None)).await;

    for path in DEBUG_PATHS {
        let local = get_from(loopback, port, path, None).await;
        assert_eq!(local.status, 200, "{path} from loopback: {local}");
        let remote = get_from(IpAddr::V4(here), port, path, Some("Bearer anything")).await;
        assert_eq!(remote.status, 403, "{path} from {here}: {remote}");
        let message = remote.str("message");
        assert!(
            message.contains("loopback") && message.contains("--debug-token-file"),
            "{path}: the refusal does not say how to enable access: {remote}"
        );
        assert!(
            !remote.text.contains("dp-1") && !remote.text.contains(OBJECT),
            "{path}: the refusal leaks debug content: {remote}"
        );
    }
    // The loopback answer really is the debug content.
    let listed = get_from(loopback, port, "/debug/dataplanes", None).await;
    assert_eq!(listed.json["dataplanes"][0]["id"], "dp-1", "{listed}");

    // Health, readiness, metrics: served to anyone, as before.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = get_from(IpAddr::V4(here), port, path, None).await;
        assert_eq!(reply.status, 200, "{path} from {here}: {reply}");
    }
    assert_eq!(
        scene
            .cp
            .metric("cellroute_debug_requests_refused_total", &[])
            .await,
        2.0
    );
    // The push, from the non-loopback address, is not affected.
    let mut remote_peer = Peer::open(SocketAddr::new(IpAddr::V4(here), port), DP_TOKEN, "dp-2").await;
    let sent = remote_peer
        .subscribe(&hello("dp-2", OBJECT, &Value::Null, None))
        .await;
    assert!(sent["version"].is_i64(), "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_token_file_admits_other_peers_and_is_reread_on_every_request() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let token_file = dir.path().join("debug-token");
    std::fs::write(&token_file, "first-debug-token\n").expect("write the debug token");
    let token_arg = token_file.display().to_string();
    let scene = scene(&["--debug-token-file", &token_arg]).await;
    let port = scene.cp.addr().port();
    let here = IpAddr::V4(non_loopback_ipv4());
    let loopback: IpAddr = "127.0.0.1".parse().expect("address");

    for path in DEBUG_PATHS {
        let none = get_from(here, port, path, None).await;
        assert_eq!(none.status, 403, "{path} without a token: {none}");
        assert!(none.str("message").contains("Authorization: Bearer"), "{none}");
        let wrong = get_from(here, port, path, Some("Bearer second-debug-token")).await;
        assert_eq!(wrong.status, 403, "{path} with a wrong token: {wrong}");
        assert!(wrong.str("message").contains("not the one"), "{wrong}");
        // A token of the push is not the debug token.
        let push_token = get_from(here, port, path, Some(&format!("Bearer {DP_TOKEN}"))).await;
        assert_eq!(push_token.status, 403, "{path} with the push token: {push_token}");
        // The scheme is case-insensitive.
        let right = get_from(here, port, path, Some("BEARER first-debug-token")).await;
        assert_eq!(right.status, 200, "{path} with the token: {right}");
        assert_eq!(get_from(loopback, port, path, None).await.status, 200);
    }
    let snapshots = get_from(here, port, "/debug/snapshots", Some("Bearer first-debug-token")).await;
    assert_eq!(snapshots.json["snapshots"][0]["object"], OBJECT, "{snapshots}");

    // Rotated without a restart: the new token works at once and the old one no longer does.
    std::fs::write(&token_file, "second-debug-token\n").expect("rotate the debug token");
    let old = get_from(here, port, "/debug/dataplanes", Some("Bearer first-debug-token")).await;
    assert_eq!(old.status, 403, "the old token after rotation: {old}");
    let new = get_from(here, port, "/debug/dataplanes", Some("Bearer second-debug-token")).await;
    assert_eq!(new.status, 200, "the new token after rotation: {new}");

    // Emptied: nothing is admitted from elsewhere (never "empty token matches empty header").
    std::fs::write(&token_file, "\n").expect("empty the debug token");
    let emptied = get_from(here, port, "/debug/dataplanes", Some("Bearer second-debug-token")).await;
    assert_eq!(emptied.status, 403, "{emptied}");
    assert!(emptied.str("message").contains("cannot read"), "{emptied}");
    assert_eq!(
        get_from(loopback, port, "/debug/dataplanes", None).await.status,
        200
    );
}

#[test]
fn an_unusable_debug_token_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("routing.yaml");
    std::fs::write(
        &file,
        "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec: {defaultPlacement: a, placementToEndpoint: {a: 'http://127.0.0.1:9'}}\n",
    )
    .expect("write the routing file");
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "  \n").expect("write an empty token file");
    let missing = dir.path().join("missing-token");
    for (token_file, expect) in [
        (&missing, "cannot read --debug-token-file"),
        (&empty, "must hold one token"),
    ] {
        let mut cmd = Command::new(bin_path("control-plane"));
        cmd.args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--allow-unauthenticated",
            "--from-file",
        ])
        .arg(&file)
        .arg("--debug-token-file")
        .arg(token_file);
        scrub_env(&mut cmd);
        cmd.env_remove("KUBECONFIG");
        let out = cmd.output().expect("run the control plane");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "started with {}: {stderr}",
            token_file.display()
        );
        assert!(
            stderr.contains(expect) && stderr.contains(&token_file.display().to_string()),
            "{}: {stderr}",
            token_file.display()
        );
    }
}
