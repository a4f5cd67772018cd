//! What the data plane carries besides plain HTTP/1.1 request and response: HTTP/2 on either
//! side (`h2c://` endpoints, `https://` with ALPN), WebSocket and other upgrades tunnelled both
//! ways, HTTP/1.0 clients, and bodies streamed both ways at once.

#![forbid(unsafe_code)]

use std::time::Duration;

use bytes::Bytes;
use cellroute_tests::config::Routes;
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::proxy::raw_request;
use cellroute_tests::tls_cell::TlsCell;
use cellroute_tests::wait::{SOON, eventually};
use cellroute_tests::websocket::{WsCell, WsClient};
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/2 (prior knowledge) GET through the proxy; returns the echo's JSON.
async fn h2_get(addr: std::net::SocketAddr, path: &str, customer: &str) -> serde_json::Value {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake with the proxy");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("x-customer-id", customer)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("HTTP/2 request");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("echo JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_speaks_its_own_http_version() {
    let cells = Cells::start(&["cell-a", "cell-b"]).await;
    // cell-b serves HTTP/2 without TLS as well; its endpoint says to use it.
    let routes = Routes::new("tier1")
        .customer("h2", "tier2")
        .placement("tier1", &cells.url("cell-a"))
        .placement("tier2", &cells.url("cell-b").replace("http://", "h2c://"));
    let h = Harness::start(cells, &routes, &[]).await;

    // HTTP/1.1 client, HTTP/2 cell.
    let reply = h.proxy.get("/x?y=1", Some("h2")).await;
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.json["cell"], "cell-b", "{reply}");
    assert_eq!(
        reply.json["version"], "HTTP/2.0",
        "an h2c endpoint gets HTTP/2: {reply}"
    );
    assert_eq!(
        (reply.json["path"].as_str(), reply.json["query"].as_str()),
        (Some("/x"), Some("y=1"))
    );
    assert_eq!(reply.json["headers"]["x-forwarded-proto"], "http", "{reply}");
    assert!(
        reply.json["headers"].get("connection").is_none(),
        "no connection-specific header may reach an HTTP/2 cell: {reply}"
    );

    // HTTP/2 client, HTTP/1.1 cell, and HTTP/2 on both sides.
    let echo = h2_get(h.dp.proxy_addr(), "/from-h2", "someone").await;
    assert_eq!(
        (echo["cell"].as_str(), echo["version"].as_str()),
        (Some("cell-a"), Some("HTTP/1.1"))
    );
    assert_eq!(echo["headers"]["host"], h.cells.get("cell-a").addr().to_string());
    assert_eq!(
        echo["headers"]["x-forwarded-host"],
        h.dp.proxy_addr().to_string(),
        "the client's :authority becomes x-forwarded-host"
    );
    let echo = h2_get(h.dp.proxy_addr(), "/both", "h2").await;
    assert_eq!(
        (echo["cell"].as_str(), echo["version"].as_str()),
        (Some("cell-b"), Some("HTTP/2.0"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_cells_negotiate_http2_by_alpn_and_untrusted_ones_are_unreachable() {
    let h2 = TlsCell::start("tls-h2", &["h2", "http/1.1"]).await;
    let h1 = TlsCell::start("tls-h1", &["http/1.1"]).await;
    let stranger = TlsCell::start("tls-stranger", &["h2", "http/1.1"]).await;
    let routes = Routes::new("h2")
        .customer("old", "h1")
        .customer("stranger", "stranger")
        .placement("h2", &h2.url())
        .placement("h1", &h1.url())
        .placement("stranger", &stranger.url());
    let dir = tempfile::tempdir().expect("temp dir");
    // Both trusted cells' CAs in one file; the stranger's is not.
    let ca = dir.path().join("ca.pem");
    h2.write_ca(&dir.path().join("a.pem"));
    h1.write_ca(&dir.path().join("b.pem"));
    let mut pem = std::fs::read(dir.path().join("a.pem")).expect("read a.pem");
    pem.extend(std::fs::read(dir.path().join("b.pem")).expect("read b.pem"));
    std::fs::write(&ca, pem).expect("write ca.pem");
    let ca_arg = ca.to_str().expect("UTF-8 path");
    let h = Harness::start(Cells::default(), &routes, &["--upstream-ca", ca_arg]).await;

    let reply = h.proxy.get("/a", Some("new")).await;
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.json["version"], "HTTP/2.0", "the cell offers h2: {reply}");
    assert_eq!(reply.json["headers"]["x-forwarded-proto"], "http", "{reply}");
    let reply = h.proxy.get("/b", Some("old")).await;
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(
        reply.json["version"], "HTTP/1.1",
        "the cell offers only http/1.1: {reply}"
    );
    assert_eq!(
        reply.json["headers"]["host"],
        format!("localhost:{}", h1.url().rsplit(':').next().unwrap_or_default()),
        "{reply}"
    );

    let reply = h.proxy.get("/c", Some("stranger")).await;
    assert_eq!(
        reply.status, 502,
        "a cell whose certificate is not trusted: {reply}"
    );
    assert!(
        reply.str("detail").contains("TLS handshake"),
        "the 502 says why: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_are_tunnelled_both_ways() {
    let (a, b) = (WsCell::start("ws-a").await, WsCell::start("ws-b").await);
    let routes = Routes::new("tier2")
        .customer("acme", "tier1")
        .placement("tier1", &a.url())
        .placement("tier2", &b.url());
    let h = Harness::start(Cells::default(), &routes, &[]).await;

    let mut ws = WsClient::connect(h.dp.proxy_addr(), "/chat", "acme")
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(ws.text("hello").await, "ws-a: hello");
    // Larger than any buffer on the way, in both directions.
    let big: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(ws.binary(big.clone()).await, big.as_slice());
    assert_eq!(ws.text("again").await, "ws-a: again");
    ws.close().await;
    assert_eq!(
        a.handshakes(),
        ["acme"],
        "the cell saw the handshake with its customer header"
    );

    let mut other = WsClient::connect(h.dp.proxy_addr(), "/chat", "globex")
        .await
        .expect("handshake");
    assert_eq!(other.text("hi").await, "ws-b: hi");
    other.close().await;
    // A switch of protocols is the cell's answer.
    let switched = h
        .admin
        .counter(
            "cellroute_requests_total",
            &[("placement", "tier1"), ("status_class", "1xx")],
        )
        .await;
    assert_eq!(switched, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_stays_on_its_cell_across_a_table_swap() {
    let (a, b) = (WsCell::start("ws-a").await, WsCell::start("ws-b").await);
    let routes = |acme: &str| {
        Routes::new("tier2")
            .customer("acme", acme)
            .placement("tier1", &a.url())
            .placement("tier2", &b.url())
    };
    let h = Harness::start(Cells::default(), &routes("tier1"), &[]).await;
    let mut ws = WsClient::connect(h.dp.proxy_addr(), "/", "acme")
        .await
        .expect("handshake");
    assert_eq!(ws.text("before").await, "ws-a: before");

    h.write_config(&routes("tier2"));
    eventually("the new table to be active", SOON, || async {
        match h.admin.generation().await {
            2 => Ok(()),
            g => Err(format!("generation {g}")),
        }
    })
    .await;
    let mut fresh = WsClient::connect(h.dp.proxy_addr(), "/", "acme")
        .await
        .expect("handshake");
    assert_eq!(
        fresh.text("new").await,
        "ws-b: new",
        "new sessions follow the new table"
    );
    for i in 0..5 {
        assert_eq!(
            ws.text(&format!("after {i}")).await,
            format!("ws-a: after {i}"),
            "the open session stays on its cell"
        );
    }
    ws.close().await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_cell_declines_leaves_an_ordinary_exchange() {
    // The echo cell answers an upgrade request like any other: 200, no switch.
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &cells.url("cell-a"));
    let h = Harness::start(cells, &routes, &[]).await;

    let mut stream = TcpStream::connect(h.dp.proxy_addr()).await.expect("connect");
    let upgrade = "GET /first HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
    let next = "GET /second HTTP/1.1\r\nhost: x\r\n\r\n";
    stream.write_all(upgrade.as_bytes()).await.expect("write");
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("\"path\":\"/first\""), "{first}");
    // The cell was asked: the proxy passed the upgrade on.
    assert!(first.contains("\"upgrade\":\"websocket\""), "{first}");
    // Bytes after a declined upgrade are the next HTTP request, routed as usual.
    stream.write_all(next.as_bytes()).await.expect("write");
    let second = read_response(&mut stream).await;
    assert!(
        second.starts_with("HTTP/1.1 200") && second.contains("\"path\":\"/second\""),
        "{second}"
    );
}

/// Reads one response with a `content-length` body from `stream`.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("content-length");
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed mid-response: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_whole_answers_even_when_the_cell_streams() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &cells.url("cell-a"));
    let h = Harness::start(cells, &routes, &[]).await;

    // No Host header, no keep-alive: the body cannot be chunked for this client, so it is
    // delimited by the proxy closing the connection.
    let mut stream = TcpStream::connect(h.dp.proxy_addr()).await.expect("connect");
    stream
        .write_all(b"GET /stream?chunks=3 HTTP/1.0\r\nx-customer-id: acme\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the proxy closes an HTTP/1.0 connection after its response")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "HTTP/1.0 has no chunked coding: {text}"
    );
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");

    // With keep-alive, several requests on one connection, each with its length.
    let mut stream = TcpStream::connect(h.dp.proxy_addr()).await.expect("connect");
    for path in ["/one", "/two"] {
        let request = format!("GET {path} HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let reply = read_response(&mut stream).await;
        assert!(reply.contains(&format!("\"path\":\"{path}\"")), "{reply}");
        assert!(
            !reply.contains("\"connection\":\"keep-alive\""),
            "the client's hop-by-hop header went on: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_at_once() {
    let cells = Cells::start(&["cell-a", "cell-b"]).await;
    let routes = Routes::new("tier1")
        .customer("h2", "tier2")
        .placement("tier1", &cells.url("cell-a"))
        .placement("tier2", &cells.url("cell-b").replace("http://", "h2c://"));
    let h = Harness::start(cells, &routes, &[]).await;

    for (customer, client_h2) in [("h1", false), ("h2", false), ("h1", true), ("h2", true)] {
        let stream = TcpStream::connect(h.dp.proxy_addr()).await.expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/duplex", h.dp.proxy_addr()))
            .header("host", h.dp.proxy_addr().to_string())
            .header("x-customer-id", customer)
            .body(body)
            .expect("request");
        let resp = if client_h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            tx.send(Ok(Frame::data(Bytes::from_static(b"ping 0"))))
                .await
                .expect("send");
            sender.send_request(req).await.expect("response head")
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            tx.send(Ok(Frame::data(Bytes::from_static(b"ping 0"))))
                .await
                .expect("send");
            sender.send_request(req).await.expect("response head")
        };
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        // Each piece comes back before the next is sent: nothing on the way waits for the end.
        for i in 0..5 {
            if i > 0 {
                tx.send(Ok(Frame::data(Bytes::from(format!("ping {i}")))))
                    .await
                    .expect("send");
            }
            let mut got = Vec::new();
            let want = format!("ping {i}");
            while got.len() < want.len() {
                let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{customer} (h2 client: {client_h2}): piece {i} did not come back")
                    })
                    .expect("body open")
                    .expect("frame");
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            assert_eq!(String::from_utf8_lossy(&got), want);
        }
        drop(tx);
        let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the body ends after the request body did")
            .expect("body");
        assert!(rest.to_bytes().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_and_counted_as_the_proxys() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier1").placement("tier1", &cells.url("cell-a"));
    let h = Harness::start(cells, &routes, &[]).await;

    let mut stream = TcpStream::connect(h.dp.proxy_addr()).await.expect("connect");
    stream
        .write_all(b"CONNECT internal-db:5432 HTTP/1.1\r\nhost: internal-db:5432\r\n\r\n")
        .await
        .expect("write");
    let reply = read_response(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert_eq!(h.cells.get("cell-a").received(), 0, "nothing reached a cell");
    let n = h
        .admin
        .counter(
            "cellroute_proxy_errors_total",
            &[("placement", "tier1"), ("reason", "bad_request")],
        )
        .await;
    assert_eq!(n, 1.0);
    // And the proxy goes on serving.
    let ok = raw_request(h.dp.proxy_addr(), Method::GET, "/", &[], "").await;
    assert_eq!(ok.status, 200, "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_websocket_finish_within_the_grace_period() {
    let a = WsCell::start("ws-a").await;
    let routes = Routes::new("tier1").placement("tier1", &a.url());
    let mut h = Harness::start(Cells::default(), &routes, &["--shutdown-grace", "20s"]).await;
    let mut ws = WsClient::connect(h.dp.proxy_addr(), "/", "acme")
        .await
        .expect("handshake");
    assert_eq!(ws.text("before").await, "ws-a: before");

    h.dp.sigterm();
    eventually("new connections to be refused", SOON, || async {
        match TcpStream::connect(h.dp.proxy_addr()).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".to_owned()),
        }
    })
    .await;
    // Draining: the tunnel still works, and the process waits for it.
    assert_eq!(ws.text("while draining").await, "ws-a: while draining");
    assert!(h.dp.is_running(), "exited while a tunnel was open");
    ws.close().await;
    let status =
        h.dp.wait_for_exit(Duration::from_secs(10))
            .await
            .expect("exits once the last tunnel closed, well before the grace period");
    assert_eq!(status.code(), Some(0));
}
