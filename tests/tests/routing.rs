//! The request path: which cell a request reaches, what arrives there, and what the client gets
//! when the cell cannot answer.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cellroute_tests::config::Routes;
use cellroute_tests::echo::unreachable_url;
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::proxy::raw_request;
use http::Method;

/// acme → tier1 (cell-a), globex → tier2 (cell-b), everyone else → tier3 (cell-c).
fn three_tiers(cells: &Cells) -> Routes {
    Routes::new("tier3")
        .customer("acme", "tier1")
        .customer("globex", "tier2")
        .placement("tier1", &cells.url("cell-a"))
        .placement("tier2", &cells.url("cell-b"))
        .placement("tier3", &cells.url("cell-c"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_customer_reaches_its_cell_and_the_rest_reach_the_default() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let routes = three_tiers(&cells);
    let h = Harness::start(cells, &routes, &[]).await;

    h.proxy.assert_cell(Some("acme"), "cell-a").await;
    h.proxy.assert_cell(Some("globex"), "cell-b").await;
    h.proxy.assert_cell(Some("initech"), "cell-c").await;
    h.proxy.assert_cell(None, "cell-c").await;
    // Customer ids match exactly: another spelling is another (unknown) customer.
    h.proxy.assert_cell(Some("ACME"), "cell-c").await;
    h.proxy.assert_cell(Some("acme2"), "cell-c").await;

    // Each cell saw exactly the requests routed to it, no more (no retries, no fan-out).
    assert_eq!(h.cells.get("cell-a").served(), 1);
    assert_eq!(h.cells.get("cell-b").served(), 1);
    assert_eq!(h.cells.get("cell-c").served(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_customer_header_replaces_the_default_one() {
    let cells = Cells::start(&["cell-a", "cell-c"]).await;
    // Mixed case in the file: header names are case-insensitive.
    let routes = Routes::new("tier3")
        .header("X-Tenant-Id")
        .customer("acme", "tier1")
        .placement("tier1", &cells.url("cell-a"))
        .placement("tier3", &cells.url("cell-c"));
    let h = Harness::start(cells, &routes, &[]).await;

    let tenant = h.proxy.clone().with_header("x-tenant-id");
    tenant.assert_cell(Some("acme"), "cell-a").await;
    tenant
        .clone()
        .with_header("X-TENANT-ID")
        .assert_cell(Some("acme"), "cell-a")
        .await;
    // The default header means nothing once another one is configured.
    h.proxy.assert_cell(Some("acme"), "cell-c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_path_query_and_body_are_forwarded_with_forwarding_headers() {
    let cells = Cells::start(&["cell-a", "cell-c"]).await;
    let routes = Routes::new("tier3")
        .customer("acme", "tier1")
        .placement("tier1", &cells.url("cell-a"))
        .placement("tier3", &cells.url("cell-c"));
    let h = Harness::start(cells, &routes, &[]).await;
    let cell_addr = h.cells.get("cell-a").addr().to_string();
    let proxy_addr = h.dp.proxy_addr().to_string();

    for method in [
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::GET,
    ] {
        let body = if method == Method::GET { "" } else { "hello, cell" };
        let reply = h
            .proxy
            .send(
                method.clone(),
                "/v1/orders/42?expand=items&x=%20y",
                Some("acme"),
                body,
            )
            .await
            .expect("request through the proxy");
        assert_eq!(reply.status, 200, "{method}: {reply}");
        let echo = &reply.json;
        assert_eq!(echo["cell"], "cell-a", "{method}: {reply}");
        assert_eq!(echo["method"], method.as_str(), "{reply}");
        assert_eq!(echo["path"], "/v1/orders/42", "{reply}");
        assert_eq!(echo["query"], "expand=items&x=%20y", "{reply}");
        assert_eq!(echo["body"], body, "{reply}");
        let headers = &echo["headers"];
        // The customer header is end-to-end: the cell may need it too.
        assert_eq!(headers["x-customer-id"], "acme", "{reply}");
        assert_eq!(
            headers["host"],
            cell_addr.as_str(),
            "Host must name the upstream: {reply}"
        );
        assert_eq!(headers["x-forwarded-host"], proxy_addr.as_str(), "{reply}");
        assert_eq!(headers["x-forwarded-proto"], "http", "{reply}");
        let xff = headers["x-forwarded-for"].as_str().unwrap_or_default();
        assert!(
            xff.contains("127.0.0.1"),
            "x-forwarded-for must name the client: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_x_forwarded_for_is_appended_to() {
    let cells = Cells::start(&["cell-c"]).await;
    let routes = Routes::new("tier3").placement("tier3", &cells.url("cell-c"));
    let h = Harness::start(cells, &routes, &[]).await;

    let reply = raw_request(
        h.dp.proxy_addr(),
        Method::GET,
        "/",
        &[("x-forwarded-for", "203.0.113.7")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply}");
    let xff = reply.json["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xff.starts_with("203.0.113.7") && xff.contains("127.0.0.1"),
        "the client's hop must be appended to the existing chain: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_x_forwarded_for_line_is_kept() {
    let cells = Cells::start(&["cell-c"]).await;
    let routes = Routes::new("tier3").placement("tier3", &cells.url("cell-c"));
    let h = Harness::start(cells, &routes, &[]).await;

    // Two header lines are one comma-separated list (RFC 9110 section 5.3); dropping the second
    // loses a hop of the chain.
    let reply = raw_request(
        h.dp.proxy_addr(),
        Method::GET,
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.2"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply}");
    let xff = reply.json["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(xff, "203.0.113.7, 198.51.100.2, 127.0.0.1", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_path_prefixes_the_request_path() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &format!("{}/base", cells.url("cell-a")));
    let h = Harness::start(cells, &routes, &[]).await;

    let reply = h.proxy.get("/orders?id=7", None).await;
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.json["path"], "/base/orders", "{reply}");
    assert_eq!(reply.json["query"], "id=7", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &cells.url("cell-a"));
    let h = Harness::start(cells, &routes, &[]).await;

    let reply = raw_request(
        h.dp.proxy_addr(),
        Method::GET,
        "/hop",
        &[
            // `x-foo` is hop-by-hop only because `connection` names it.
            ("connection", "keep-alive, x-foo"),
            ("x-foo", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "deflate, trailers"),
            ("upgrade", "example/1"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-end-to-end", "kept"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply}");
    let headers = reply.json["headers"].as_object().expect("echo headers");
    for hop in ["x-foo", "keep-alive", "upgrade", "proxy-authorization"] {
        assert!(
            !headers.contains_key(hop),
            "hop-by-hop header {hop} reached the cell: {reply}"
        );
    }
    // TE is hop-by-hop too: the client's transfer codings are not forwarded, but the proxy says
    // it accepts trailers because the client does and trailers are passed on (gRPC needs it).
    assert_eq!(
        headers.get("te").and_then(|v| v.as_str()),
        Some("trailers"),
        "{reply}"
    );
    // The connection header may be set by the proxy's own client, but must not carry the
    // client's tokens.
    let connection = headers
        .get("connection")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    assert!(
        !connection.contains("x-foo"),
        "client's connection header forwarded: {reply}"
    );
    assert_eq!(
        headers.get("x-end-to-end").and_then(|v| v.as_str()),
        Some("kept"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cell_gives_502_naming_the_placement() {
    let cells = Cells::start(&["cell-c"]).await;
    let routes = Routes::new("tier3")
        .customer("acme", "tier-dead")
        .placement("tier-dead", &unreachable_url())
        .placement("tier3", &cells.url("cell-c"));
    let h = Harness::start(cells, &routes, &[]).await;

    let reply = h.proxy.get("/", Some("acme")).await;
    assert_eq!(reply.status, 502, "{reply}");
    assert_eq!(reply.str("error"), "upstream unreachable", "{reply}");
    assert_eq!(reply.str("placement"), "tier-dead", "{reply}");
    assert!(!reply.str("detail").is_empty(), "502 should say why: {reply}");
    // Other customers are unaffected by one dead cell.
    h.proxy.assert_cell(Some("globex"), "cell-c").await;
    // The proxy's own failure, apart from what cells answer: an alert on cells' 5xx must not
    // fire because the sidecar could not reach one, and the other way round.
    let proxy_errors = h
        .admin
        .counter(
            "cellroute_proxy_errors_total",
            &[("placement", "tier-dead"), ("reason", "unreachable")],
        )
        .await;
    assert_eq!(
        proxy_errors, 1.0,
        "the 502 must be counted as the proxy's, against its placement"
    );
    let cell_5xx = h
        .admin
        .counter(
            "cellroute_requests_total",
            &[("placement", "tier-dead"), ("status_class", "5xx")],
        )
        .await;
    assert_eq!(
        cell_5xx, 0.0,
        "no cell answered, so no cell status may be counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cell_gives_504_after_the_upstream_timeout() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &cells.url("cell-a"));
    let h = Harness::start(cells, &routes, &["--upstream-timeout", "300ms"]).await;

    let started = Instant::now();
    let reply = h.proxy.get("/slow?ms=3000", None).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{reply}");
    assert_eq!(reply.str("error"), "upstream timeout", "{reply}");
    assert_eq!(reply.str("placement"), "tier1", "{reply}");
    assert_eq!(reply.u64("timeout_ms"), Some(300), "{reply}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "the 504 should come after about 300 ms, not after {took:?}"
    );
    // A fast request on the same placement still works.
    let ok = h.proxy.get("/slow?ms=10", None).await;
    assert_eq!(ok.status, 200, "{ok}");
    let m = &h.admin;
    let timeouts = m
        .counter(
            "cellroute_proxy_errors_total",
            &[("placement", "tier1"), ("reason", "timeout")],
        )
        .await;
    assert_eq!(timeouts, 1.0, "the 504 is the proxy's own error");
    let cell_2xx = m
        .counter(
            "cellroute_requests_total",
            &[("placement", "tier1"), ("status_class", "2xx")],
        )
        .await;
    assert_eq!(cell_2xx, 1.0, "only the fast request got an answer from the cell");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_codes_pass_through_untouched() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &cells.url("cell-a"));
    let h = Harness::start(cells, &routes, &[]).await;

    for status in [201, 404, 418, 500, 503] {
        let reply = h.proxy.get(&format!("/status/{status}"), None).await;
        assert_eq!(reply.status, status, "{reply}");
        // The body is the cell's, not a proxy error.
        assert_eq!(reply.str("cell"), "cell-a", "{reply}");
    }
    // Counted as the cell's statuses, and none as the proxy's errors.
    for (class, n) in [("2xx", 1.0), ("4xx", 2.0), ("5xx", 2.0)] {
        let got = h
            .admin
            .counter(
                "cellroute_requests_total",
                &[("placement", "tier1"), ("status_class", class)],
            )
            .await;
        assert_eq!(got, n, "cell responses of class {class}");
    }
    for reason in ["unreachable", "timeout", "bad_request"] {
        let got = h
            .admin
            .counter(
                "cellroute_proxy_errors_total",
                &[("placement", "tier1"), ("reason", reason)],
            )
            .await;
        assert_eq!(got, 0.0, "proxy errors ({reason}) while every cell answered");
    }
}
