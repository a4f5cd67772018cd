//! Graceful shutdown: SIGTERM lets in-flight requests finish, refuses new connections, and
//! ends the process with status 0 within the grace period.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cellroute_tests::config::Routes;
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::proxy::ProxyClient;
use cellroute_tests::wait::{SOON, eventually};

const IN_FLIGHT: u64 = 5;

/// Starts `IN_FLIGHT` requests to `/slow?ms={ms}` and waits until the cell has them all.
async fn start_slow_requests(h: &Harness, ms: u64) -> Vec<tokio::task::JoinHandle<Result<u16, String>>> {
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            // A client per request, so each is on its own connection.
            let proxy = ProxyClient::new(h.dp.proxy_addr());
            tokio::spawn(async move {
                proxy
                    .send(http::Method::GET, &format!("/slow?ms={ms}"), Some("acme"), "")
                    .await
                    .map(|r| r.status)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let cell = h.cells.get("cell-a");
    eventually("the slow requests to reach the cell", SOON, || async {
        match cell.received() {
            n if n >= IN_FLIGHT => Ok(()),
            n => Err(format!("{n} of {IN_FLIGHT} arrived")),
        }
    })
    .await;
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &cells.url("cell-a"));
    let mut h = Harness::start(cells, &routes, &["--shutdown-grace", "10s"]).await;
    let requests = start_slow_requests(&h, 1500).await;

    let signalled = Instant::now();
    h.dp.sigterm();
    // The listener closes at once: new connections are refused while old ones drain.
    eventually(
        "new connections to be refused",
        Duration::from_secs(1),
        || async {
            match tokio::net::TcpStream::connect(h.dp.proxy_addr()).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                Err(e) => Err(format!("connect failed differently: {e}")),
                Ok(_) => Err("a new connection was accepted after SIGTERM".to_owned()),
            }
        },
    )
    .await;
    // Still alive for the kubelet, but no longer ready, so no new traffic is sent this way.
    let ready = h.admin.readyz().await;
    assert_eq!(ready.status, 503, "ready while draining: {ready}");
    assert_eq!(
        h.cells.get("cell-a").served(),
        0,
        "the slow requests finished before the drain was tested"
    );

    for request in requests {
        let status = request.await.expect("request task");
        assert_eq!(
            status,
            Ok(200),
            "an in-flight request was cut off by the shutdown"
        );
    }
    assert_eq!(h.cells.get("cell-a").served(), IN_FLIGHT);
    let status = h.dp.wait_for_exit(Duration::from_secs(10)).await;
    let status = status.unwrap_or_else(|| panic!("still running {:?} after SIGTERM", signalled.elapsed()));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    // It waited for the requests, and no longer than it needed to.
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_drain() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &cells.url("cell-a"));
    let mut h = Harness::start(cells, &routes, &["--shutdown-grace", "500ms"]).await;
    let requests = start_slow_requests(&h, 20_000).await;

    let signalled = Instant::now();
    h.dp.sigterm();
    let status = h.dp.wait_for_exit(Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    assert!(
        status.is_some(),
        "still running {took:?} after SIGTERM with a 500 ms grace period"
    );
    assert!(
        took >= Duration::from_millis(400),
        "it exited after {took:?}, before the grace period ran out"
    );
    for request in requests {
        let outcome = request.await.expect("request task");
        assert!(
            outcome != Ok(200),
            "a 20 s request cannot have completed: {outcome:?}"
        );
    }
}
