//! Request metrics: every worker's counts add up, and the proxy's own failures are told apart
//! from what cells answer.

#![forbid(unsafe_code)]

use cellroute_tests::admin::metric_value;
use cellroute_tests::config::Routes;
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::proxy::{ProxyClient, raw_request};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_from_every_worker_add_up() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &cells.url("cell-a"));
    let h = Harness::start(cells, &routes, &["--workers", "4"]).await;

    // A connection per request: the kernel spreads them over the four workers' sockets.
    const N: usize = 64;
    for i in 0..N {
        let path = if i % 4 == 0 { "/status/503" } else { "/" };
        let reply = raw_request(h.dp.proxy_addr(), Method::GET, path, &[], "").await;
        assert!(reply.status == 200 || reply.status == 503, "{reply}");
    }
    let text = h.admin.metrics().await;
    let get = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels).unwrap_or(0.0);
    let ok = get(
        "cellroute_requests_total",
        &[("placement", "tier1"), ("status_class", "2xx")],
    );
    let failed = get(
        "cellroute_requests_total",
        &[("placement", "tier1"), ("status_class", "5xx")],
    );
    assert_eq!((ok, failed), (48.0, 16.0), "{text}");
    let count = get(
        "cellroute_upstream_request_duration_seconds_count",
        &[("placement", "tier1")],
    );
    let inf = get(
        "cellroute_upstream_request_duration_seconds_bucket",
        &[("placement", "tier1"), ("le", "+Inf")],
    );
    assert_eq!((count, inf), (N as f64, N as f64), "{text}");
    assert_eq!(h.cells.get("cell-a").served(), N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_table_are_the_proxys_no_route_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("routing.yaml");
    // No config file at all: the data plane starts, answers 503 and says why.
    let h = Harness::start_at(Cells::default(), dir, config, &[]).await;
    let proxy = ProxyClient::new(h.dp.proxy_addr());
    for _ in 0..3 {
        assert_eq!(proxy.get("/", Some("acme")).await.status, 503);
    }
    let text = h.admin.metrics().await;
    assert_eq!(
        metric_value(&text, "cellroute_proxy_errors_total", &[("reason", "no_route")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "cellroute_no_table_requests_total", &[]),
        Some(3.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_switches_protocols_unasked_is_a_bad_gateway() {
    // A broken cell: it answers every request with 101, asked or not.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\nraw bytes")
                    .await;
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    let routes = Routes::new("odd").placement("odd", &format!("http://{addr}"));
    let h = Harness::start(Cells::default(), &routes, &[]).await;

    let reply = raw_request(h.dp.proxy_addr(), Method::GET, "/", &[], "").await;
    assert_eq!(reply.status, 502, "{reply}");
    assert!(reply.str("detail").contains("101"), "{reply}");
    let n = h
        .admin
        .counter(
            "cellroute_proxy_errors_total",
            &[("placement", "odd"), ("reason", "unreachable")],
        )
        .await;
    assert_eq!(n, 1.0);
}
