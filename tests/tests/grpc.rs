//! gRPC through the data plane: a real tonic client speaking HTTP/2 to the proxy, real tonic
//! servers behind `h2c://` endpoints. Routing by the customer header (gRPC metadata), unary
//! and streaming calls, the status and metadata that travel in HTTP/2 trailers, and a stream
//! that stays on its cell while the routing table changes under it.

#![forbid(unsafe_code)]

use cellroute_tests::config::Routes;
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::grpc::{GrpcCell, GrpcClient};
use cellroute_tests::wait::{SOON, eventually};
use tonic::Code;

/// acme → tier1 (grpc-a), everyone else → tier2 (grpc-b).
fn routes(a: &GrpcCell, b: &GrpcCell, acme: &str) -> Routes {
    Routes::new("tier2")
        .customer("acme", acme)
        .placement("tier1", &a.h2c_url())
        .placement("tier2", &b.h2c_url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls_reach_the_customers_cell() {
    let (a, b) = (GrpcCell::start("grpc-a").await, GrpcCell::start("grpc-b").await);
    let h = Harness::start(Cells::default(), &routes(&a, &b, "tier1"), &[]).await;
    let mut client = GrpcClient::connect(h.dp.proxy_addr()).await;

    let reply = client.say("acme", "hello").await.expect("Say as acme");
    assert_eq!((reply.cell.as_str(), reply.message.as_str()), ("grpc-a", "hello"));
    // The customer header is end-to-end metadata: the cell sees it too.
    assert_eq!(reply.customer, "acme");
    let reply = client.say("globex", "hi").await.expect("Say as globex");
    assert_eq!(reply.cell, "grpc-b");

    let replies = client.count("acme", "n", 200).await.expect("Count as acme");
    assert_eq!(replies.len(), 200, "every streamed message arrives");
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.message, format!("n {i}"), "in order");
        assert_eq!(reply.cell, "grpc-a");
    }

    // Counted as answers of the cell (gRPC carries its status in trailers, over HTTP 200).
    let answered = h
        .admin
        .counter(
            "cellroute_requests_total",
            &[("placement", "tier1"), ("status_class", "2xx")],
        )
        .await;
    assert_eq!(answered, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cells_error_status_and_trailing_metadata_reach_the_client() {
    let (a, b) = (GrpcCell::start("grpc-a").await, GrpcCell::start("grpc-b").await);
    let h = Harness::start(Cells::default(), &routes(&a, &b, "tier1"), &[]).await;
    let mut client = GrpcClient::connect(h.dp.proxy_addr()).await;

    let status = client.fail("acme").await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "the cell says no", "{status:?}");
    assert_eq!(
        status.metadata().get("x-cell").and_then(|v| v.to_str().ok()),
        Some("grpc-a"),
        "the cell's trailing metadata must arrive: {status:?}"
    );
    // The status is the cell's: nothing here is a failure of the proxy.
    for reason in ["unreachable", "timeout", "bad_request"] {
        let n = h
            .admin
            .counter(
                "cellroute_proxy_errors_total",
                &[("placement", "tier1"), ("reason", reason)],
            )
            .await;
        assert_eq!(n, 0.0, "proxy error {reason}");
    }
    // The connection and the proxy still serve after an error status.
    assert_eq!(client.say("acme", "again").await.expect("Say").cell, "grpc-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_stays_on_its_cell_across_a_table_swap() {
    let (a, b) = (GrpcCell::start("grpc-a").await, GrpcCell::start("grpc-b").await);
    let h = Harness::start(Cells::default(), &routes(&a, &b, "tier1"), &[]).await;
    let mut client = GrpcClient::connect(h.dp.proxy_addr()).await;

    let mut chat = client.chat("acme").await;
    let first = chat.round_trip("before").await;
    assert_eq!(
        (first.cell.as_str(), first.message.as_str()),
        ("grpc-a", "before")
    );

    // Move acme to grpc-b and wait until new calls go there.
    h.write_config(&routes(&a, &b, "tier2"));
    eventually("new calls for acme to reach grpc-b", SOON, || {
        let mut client = client.clone();
        async move {
            match client.say("acme", "probe").await {
                Ok(r) if r.cell == "grpc-b" => Ok(()),
                Ok(r) => Err(format!("still {}", r.cell)),
                Err(e) => Err(format!("Say failed: {e}")),
            }
        }
    })
    .await;

    // The stream opened before the swap keeps talking to the cell it started on.
    for i in 0..5 {
        let reply = chat.round_trip(&format!("after {i}")).await;
        assert_eq!(reply.cell, "grpc-a", "message {i} after the swap");
        assert_eq!(reply.message, format!("after {i}"));
    }
    chat.finish().await.expect("the stream ends with OK");

    let mut fresh = client.chat("acme").await;
    assert_eq!(fresh.round_trip("new").await.cell, "grpc-b");
    fresh.finish().await.expect("the new stream ends with OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_an_unreachable_cell_fails_with_unavailable_naming_the_proxy() {
    let a = GrpcCell::start("grpc-a").await;
    let dead = cellroute_tests::echo::unreachable_url().replace("http://", "h2c://");
    let routes = Routes::new("tier1")
        .customer("acme", "dead")
        .placement("tier1", &a.h2c_url())
        .placement("dead", &dead);
    let h = Harness::start(Cells::default(), &routes, &[]).await;
    let mut client = GrpcClient::connect(h.dp.proxy_addr()).await;

    let err = client.say("acme", "x").await.expect_err("no cell to answer");
    // A gRPC status, not a JSON body the client cannot read: UNAVAILABLE, which clients may
    // retry, saying that the proxy failed and why.
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .starts_with("cellroute: upstream unreachable: connect to"),
        "{err:?}"
    );
    let n = h
        .admin
        .counter(
            "cellroute_proxy_errors_total",
            &[("placement", "dead"), ("reason", "unreachable")],
        )
        .await;
    assert_eq!(n, 1.0);
    assert_eq!(client.say("other", "x").await.expect("Say").cell, "grpc-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_answers_too_late_gives_deadline_exceeded() {
    // A listener that accepts HTTP/2 connections and never answers: the TCP backlog takes the
    // connection, nothing reads it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = GrpcCell::start("grpc-a").await;
    let routes = Routes::new("tier1")
        .customer("acme", "silent")
        .placement("tier1", &a.h2c_url())
        .placement("silent", &format!("h2c://{}", silent.local_addr().expect("addr")));
    let h = Harness::start(Cells::default(), &routes, &["--upstream-timeout", "300ms"]).await;
    let mut client = GrpcClient::connect(h.dp.proxy_addr()).await;

    let err = client.say("acme", "x").await.expect_err("the cell never answers");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(err.message(), "cellroute: upstream timeout", "{err:?}");
    let n = h
        .admin
        .counter(
            "cellroute_proxy_errors_total",
            &[("placement", "silent"), ("reason", "timeout")],
        )
        .await;
    assert_eq!(n, 1.0);
}
