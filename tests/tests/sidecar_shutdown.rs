//! The two flags a sidecar needs beside its application (issue #11; the chart passes both):
//!
//! - `--health-listen ADDR`: a second listener for probes from outside the pod, serving
//!   `GET /healthz` and `GET /readyz` and nothing else, so the admin port stays on loopback;
//! - `--shutdown-delay DUR`: after SIGTERM, `/readyz` turns 503 at once, but the proxy keeps
//!   accepting and serving new connections for the delay (the application is still draining
//!   through it), then it stops accepting and drains for `--shutdown-grace`. A second signal
//!   cuts the delay short.

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use cellroute_tests::admin::AdminClient;
use cellroute_tests::config::{Routes, write_replace};
use cellroute_tests::fixture::{Cells, TOKEN};
use cellroute_tests::process::{DataPlane, Launch};
use cellroute_tests::proxy::ProxyClient;
use cellroute_tests::wait::{SOON, eventually};

const DELAY: Duration = Duration::from_secs(3);

/// Starts a data plane on `routes` (none: without `--config`) with a health listener.
async fn start(dir: &Path, routes: Option<&Routes>, args: &[&str]) -> DataPlane {
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token");
    let config = routes.map(|r| {
        let path = dir.join("routing.yaml");
        write_replace(&path, r.render().as_bytes()).expect("write the config");
        path
    });
    DataPlane::launch(
        Launch {
            config,
            token_file: Some(token_file),
            more_listeners: vec!["health".to_owned()],
            ..Launch::default()
        }
        .args(&["--health-listen", "127.0.0.1:0"])
        .args(args),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_listener_serves_only_the_probes() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier-a")
        .customer("acme", "tier-a")
        .placement("tier-a", &cells.url("cell-a"));
    let dir = tempfile::tempdir().expect("temp dir");
    let dp = start(dir.path(), Some(&routes), &[]).await;
    let health = AdminClient::new(dp.listener("health"), TOKEN);
    assert_ne!(dp.listener("health"), dp.admin_addr());

    let live = health.healthz().await;
    assert_eq!((live.status, live.text.as_str()), (200, "ok"), "{live}");
    let ready = health.readyz().await;
    assert_eq!(ready.status, 200, "{ready}");
    assert_eq!(ready.json["ready"], true, "{ready}");

    // Nothing else, with or without the admin token.
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/metrics", "/admin/config", "/admin/history", "/"] {
        for authorization in [None, Some(bearer.as_str())] {
            let reply = health.get_as(path, authorization).await;
            assert_eq!(reply.status, 404, "GET {path} on the health listener: {reply}");
        }
    }
    for path in ["/admin/reload", "/admin/rollback", "/admin/source"] {
        let reply = health.post_as(path, Some(&bearer)).await;
        assert_eq!(reply.status, 404, "POST {path} on the health listener: {reply}");
    }
    // The admin port still serves everything.
    let admin = AdminClient::new(dp.admin_addr(), TOKEN);
    assert_eq!(admin.get("/admin/config").await.status, 200);
    assert_eq!(admin.reload().await.status, 200);

    // Without a table, the probe says not ready, and why, without naming anything.
    let empty = tempfile::tempdir().expect("temp dir");
    let bare = start(empty.path(), None, &[]).await;
    let health = AdminClient::new(bare.listener("health"), TOKEN);
    let ready = health.readyz().await;
    assert_eq!(ready.status, 503, "{ready}");
    assert_eq!(ready.json["ready"], false, "{ready}");
    assert_eq!(health.healthz().await.status, 200);
}

/// One request on a connection of its own (a new connection every time).
async fn fresh_request(dp: &DataPlane, path: &str) -> Result<u16, String> {
    ProxyClient::new(dp.proxy_addr())
        .send(http::Method::GET, path, Some("acme"), "")
        .await
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_it_is_unready_at_once_serves_for_the_delay_then_drains() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier-a")
        .customer("acme", "tier-a")
        .placement("tier-a", &cells.url("cell-a"));
    let dir = tempfile::tempdir().expect("temp dir");
    let delay = format!("{}s", DELAY.as_secs());
    let mut dp = start(
        dir.path(),
        Some(&routes),
        &["--shutdown-delay", &delay, "--shutdown-grace", "10s"],
    )
    .await;
    let health = AdminClient::new(dp.listener("health"), TOKEN);
    let admin = AdminClient::new(dp.admin_addr(), TOKEN);
    assert_eq!(fresh_request(&dp, "/").await, Ok(200));

    let signalled = Instant::now();
    dp.sigterm();
    eventually("/readyz to turn 503", SOON, || async {
        match health.readyz().await.status {
            503 => Ok(()),
            other => Err(format!("/readyz answers {other}")),
        }
    })
    .await;
    let unready = signalled.elapsed();
    assert!(
        unready < DELAY,
        "/readyz turned 503 only after {unready:?}, not at once"
    );
    assert_eq!(admin.readyz().await.status, 503);
    // A request that outlives the delay is drained, not cut.
    let slow = {
        let proxy = ProxyClient::new(dp.proxy_addr());
        let path = format!("/slow?ms={}", (DELAY + Duration::from_millis(1500)).as_millis());
        tokio::spawn(async move {
            proxy
                .send(http::Method::GET, &path, Some("acme"), "")
                .await
                .map(|r| r.status)
                .map_err(|e| e.to_string())
        })
    };

    // New connections are accepted and served for the rest of most of the delay.
    let mut served = 0;
    while signalled.elapsed() < DELAY * 2 / 3 {
        let outcome = fresh_request(&dp, "/").await;
        assert_eq!(
            outcome,
            Ok(200),
            "a new request {:?} after SIGTERM, within the {DELAY:?} delay",
            signalled.elapsed()
        );
        served += 1;
    }
    assert!(served > 0);

    // Then new connections are refused: not before the delay is over.
    eventually("new connections to be refused", SOON, || async {
        match tokio::net::TcpStream::connect(dp.proxy_addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(format!("connect failed differently: {e}")),
            Ok(_) => Err("still accepting".to_owned()),
        }
    })
    .await;
    let refused = signalled.elapsed();
    assert!(
        refused >= DELAY,
        "new connections were refused after {refused:?}, before the {DELAY:?} delay ended"
    );
    assert_eq!(
        slow.await.expect("request task"),
        Ok(200),
        "the in-flight request was cut off"
    );
    let status = dp
        .wait_for_exit(SOON)
        .await
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", signalled.elapsed()));
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_delay_early() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier-a").placement("tier-a", &cells.url("cell-a"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut dp = start(dir.path(), Some(&routes), &["--shutdown-delay", "10m"]).await;
    let health = AdminClient::new(dp.listener("health"), TOKEN);
    dp.sigterm();
    eventually("/readyz to turn 503", SOON, || async {
        match health.readyz().await.status {
            503 => Ok(()),
            other => Err(format!("/readyz answers {other}")),
        }
    })
    .await;
    assert_eq!(fresh_request(&dp, "/").await, Ok(200), "serving during the delay");
    dp.sigterm();
    let status = dp
        .wait_for_exit(SOON)
        .await
        .expect("a second SIGTERM ends the 10 minute delay");
    assert_eq!(status.code(), Some(0), "exit status {status}");
}
