//! Who a data plane is, on a real Kubernetes API server (issue #10: "identity is whatever the
//! client says", "TokenReview runs uncached on every connect, before the connection cap is
//! checked"). The control plane authenticates with TokenReview; tokens come from the
//! TokenRequest API, bound to a Pod where the test says so, as a projected token volume's are.
//!
//! - a record is keyed by the ServiceAccount (namespace, name, and the pod its token is bound
//!   to) with the hello's id: two pods called `web-1` in two namespaces are two records, and
//!   another token of the same ServiceAccount naming `web-1` cannot touch the real one's;
//! - a token bound to a pod may only call itself that pod;
//! - a connection over the cap is refused before its token is reviewed, and a token reviewed a
//!   moment ago is not reviewed again (`cellroute_token_reviews_total`,
//!   `cellroute_token_review_cache_hits_total`);
//! - a generation whose snapshot message would exceed `--max-message-bytes` is refused in the
//!   status (`Accepted=False`, naming size and limit) and the previous one keeps being served.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use cellroute_tests::control_plane::Options;
use cellroute_tests::fixture::Cells;
use cellroute_tests::k8s::{Cluster, K8S_SOON, RoutingConfigs, condition_of, spec};
use cellroute_tests::peer::{Peer, hello};
use cellroute_tests::push_k8s::{AUDIENCE, KubeControlPlane, follow, pod, pod_token, service_account, token};
use cellroute_tests::wait::eventually;
use cellroute_tests::ws::{self, CLOSE_POLICY, Upgrade};
use routing_model::protocol::SUBSCRIBE_PATH;
use serde_json::{Value, json};

const SERVICE_ACCOUNT: &str = "data-plane";
const POD: &str = "web-1";
const NAME: &str = "routes";

fn identity(namespace: &str, pod: Option<&str>) -> Value {
    let mut identity = json!({"kind": "service-account", "namespace": namespace, "name": SERVICE_ACCOUNT});
    if let Some(pod) = pod {
        identity["pod"] = json!(pod);
    }
    identity
}

/// A namespace with the ServiceAccount, the Pod `web-1` running as it, and a token bound to
/// that pod.
async fn namespace_with_pod(cluster: &Cluster, client: &kube::Client, prefix: &str) -> (String, String) {
    let namespace = cluster.namespace(client, prefix).await;
    service_account(cluster, &namespace, SERVICE_ACCOUNT).await;
    pod(cluster, &namespace, POD, SERVICE_ACCOUNT).await;
    let token = pod_token(cluster, &namespace, SERVICE_ACCOUNT, POD, AUDIENCE).await;
    (namespace, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_keyed_by_service_account_and_pod_not_by_the_hello() {
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    cluster.install_crd(&client).await;
    let (ns_a, token_a) = namespace_with_pod(&cluster, &client, "trust-id-a").await;
    let (ns_b, token_b) = namespace_with_pod(&cluster, &client, "trust-id-b").await;
    let cells = Cells::start(&["tier1", "tier3"]).await;
    let rtc = RoutingConfigs::new(&client, &ns_a);
    let endpoints = [("tier1", cells.url("tier1")), ("tier3", cells.url("tier3"))];
    let endpoints: Vec<(&str, &str)> = endpoints.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rtc.apply(NAME, &spec("tier3", &[("acme", "tier1")], &endpoints))
        .await;
    // The control plane watches and serves namespace A.
    let cp = KubeControlPlane::start(&Options::new(&cluster, &ns_a, "cp-0"), &[]).await;
    let object_a = format!("{ns_a}/{NAME}");
    let object_b = format!("{ns_b}/{NAME}");
    let dir_a = tempfile::tempdir().expect("temporary directory");
    let dir_b = tempfile::tempdir().expect("temporary directory");

    // Two real data planes, both pods called web-1, in two namespaces.
    let real = follow(&cp.url(), &object_a, POD, &token_a, dir_a.path()).await;
    real.wait_routes(&[("acme", "tier1")], K8S_SOON).await;
    let twin = follow(&cp.url(), &object_b, POD, &token_b, dir_b.path()).await;
    twin.wait_connected(true, K8S_SOON).await;
    let real_identity = identity(&ns_a, Some(POD));
    let twin_identity = identity(&ns_b, Some(POD));
    let listed = eventually("both web-1 records", K8S_SOON, || async {
        let real = cp
            .dataplane_as(POD, &real_identity)
            .await
            .ok_or("no ns-a web-1")?;
        let twin = cp
            .dataplane_as(POD, &twin_identity)
            .await
            .ok_or("no ns-b web-1")?;
        if real["state"] == "SYNCED" && twin["state"] == "ORPHANED" {
            Ok((real, twin))
        } else {
            Err(format!("{real}\n{twin}"))
        }
    })
    .await;
    eprintln!("two pods called web-1:\n{}\n{}", listed.0, listed.1);
    assert_eq!(
        listed.0["record"]["user"],
        format!("system:serviceaccount:{ns_a}:{SERVICE_ACCOUNT}")
    );
    let real_since = listed.0["record"]["connected_since"].clone();

    // A token bound to web-1 may only call itself web-1: refused, with a message that says so.
    let addr: SocketAddr = cp.addr();
    let mut liar = Peer::open(addr, &token_a, "web-1's token as web-2").await;
    liar.send(&hello("web-2", &object_a, &Value::Null, None)).await;
    let (error, close) = liar.refused().await;
    let error = error.expect("an error message before the close");
    assert!(error.contains(&format!("issued to pod `{POD}`")), "{error}");
    assert!(matches!(close, Some((Some(CLOSE_POLICY), _))), "{close:?}");
    assert!(cp.dataplane("web-2").await.is_none(), "a refused id is listed");
    // The other namespace's web-1 may not subscribe to namespace A's object.
    let mut across = Peer::open(addr, &token_b, "ns-b's web-1 to ns-a").await;
    across.send(&hello(POD, &object_a, &Value::Null, None)).await;
    let (error, _) = across.refused().await;
    assert!(error.is_some_and(|e| e.contains(&format!(
        "may only subscribe to RoutingConfigs in namespace `{ns_b}`"
    ))),);

    // Another token of the same ServiceAccount, bound to no pod, names web-1 and NACKs what it
    // is sent: its own record is REJECTED; the real web-1 is untouched, in its first session.
    let unbound = token(&cluster, &ns_a, SERVICE_ACCOUNT, Some(AUDIENCE)).await;
    let mut impostor = Peer::open(addr, &unbound, "unbound token as web-1").await;
    let sent = impostor
        .subscribe(&hello(POD, &object_a, &Value::Null, None))
        .await;
    impostor.nack(&sent, "refused by the impostor").await;
    let impostor_identity = identity(&ns_a, None);
    cp.wait_dataplane_as(
        POD,
        &impostor_identity,
        "the impostor's own record to be REJECTED",
        K8S_SOON,
        |e| e["state"] == "REJECTED",
    )
    .await;
    let entry = cp
        .dataplane_as(POD, &real_identity)
        .await
        .expect("the real web-1");
    assert_eq!(entry["state"], "SYNCED", "{entry}");
    assert_eq!(entry["record"]["connected_since"], real_since, "{entry}");
    assert_eq!(real.counter("control_plane_sessions_total").await, 1.0);
    let twin_entry = cp.dataplane_as(POD, &twin_identity).await.expect("ns-b's web-1");
    assert_eq!(twin_entry["record"]["connected"], true, "{twin_entry}");
    assert_eq!(twin.counter("control_plane_sessions_total").await, 1.0);
    assert_eq!(
        cp.metric("cellroute_refused_connections_total", &[("reason", "bad-id")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reviews_come_after_the_connection_cap_and_are_cached() {
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    cluster.install_crd(&client).await;
    let namespace = cluster.namespace(&client, "trust-review").await;
    service_account(&cluster, &namespace, SERVICE_ACCOUNT).await;
    service_account(&cluster, &namespace, "another").await;
    let first_token = token(&cluster, &namespace, SERVICE_ACCOUNT, Some(AUDIENCE)).await;
    let other_token = token(&cluster, &namespace, "another", Some(AUDIENCE)).await;
    let cp = KubeControlPlane::start(
        &Options::new(&cluster, &namespace, "cp-0"),
        &["--max-connections", "1", "--heartbeat-timeout", "60s"],
    )
    .await;
    let object = format!("{namespace}/{NAME}");
    let addr = cp.addr();
    let reviews = |result: &'static str| {
        let cp = &cp;
        async move {
            cp.metric("cellroute_token_reviews_total", &[("result", result)])
                .await
        }
    };

    let mut holder = Peer::open(addr, &first_token, "the one allowed").await;
    holder.send(&hello("dp-1", &object, &Value::Null, None)).await;
    holder.expect("welcome").await;
    assert_eq!(reviews("authenticated").await, 1.0);
    assert_eq!(
        cp.metric("cellroute_token_review_cache_hits_total", &[]).await,
        0.0
    );

    // Over the cap: 503 before any review, whatever the token (a fresh one, never reviewed).
    for attempt in 0..5 {
        let bearer = format!("Bearer {other_token}");
        match ws::connect(addr, SUBSCRIBE_PATH, Some(&bearer))
            .await
            .expect("connect")
        {
            Upgrade::Accepted(_) => panic!("attempt {attempt}: upgraded over --max-connections 1"),
            Upgrade::Refused(refused) => assert_eq!(refused.status, 503, "{refused}"),
        }
    }
    assert_eq!(
        cp.metric(
            "cellroute_refused_connections_total",
            &[("reason", "too-many-connections")]
        )
        .await,
        5.0
    );
    assert_eq!(
        reviews("authenticated").await,
        1.0,
        "a connection over the cap was reviewed"
    );

    // The slot is free again: the same token reconnects from the cache, a new one is reviewed.
    drop(holder);
    eventually("the first session to close", K8S_SOON, || async {
        match cp.metric("cellroute_connected_data_planes", &[]).await {
            0.0 => Ok(()),
            n => Err(format!("{n} connected")),
        }
    })
    .await;
    let mut again = Peer::open(addr, &first_token, "the same token again").await;
    again.send(&hello("dp-1", &object, &Value::Null, None)).await;
    again.expect("welcome").await;
    assert_eq!(
        reviews("authenticated").await,
        1.0,
        "a token reviewed a moment ago was reviewed again"
    );
    assert_eq!(
        cp.metric("cellroute_token_review_cache_hits_total", &[]).await,
        1.0
    );
    drop(again);
    eventually("the second session to close", K8S_SOON, || async {
        match cp.metric("cellroute_connected_data_planes", &[]).await {
            0.0 => Ok(()),
            n => Err(format!("{n} connected")),
        }
    })
    .await;
    let mut other = Peer::open(addr, &other_token, "another token").await;
    other.send(&hello("dp-2", &object, &Value::Null, None)).await;
    other.expect("welcome").await;
    assert_eq!(reviews("authenticated").await, 2.0);
    let entries = cp.dataplanes().await;
    let users: Vec<&Value> = entries.iter().map(|e| &e["record"]["identity"]).collect();
    assert!(
        users.contains(&&json!({"kind": "service-account", "namespace": namespace, "name": "another"})),
        "{entries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_that_cannot_be_delivered_is_not_accepted() {
    const LIMIT: usize = 4096;
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    cluster.install_crd(&client).await;
    let namespace = cluster.namespace(&client, "trust-size").await;
    service_account(&cluster, &namespace, SERVICE_ACCOUNT).await;
    let cells = Cells::start(&["tier1", "tier3"]).await;
    let endpoints = [("tier1", cells.url("tier1")), ("tier3", cells.url("tier3"))];
    let endpoints: Vec<(&str, &str)> = endpoints.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let limit = LIMIT.to_string();
    let cp = KubeControlPlane::start(
        &Options::new(&cluster, &namespace, "cp-0"),
        &["--max-message-bytes", &limit],
    )
    .await;
    let rtc = RoutingConfigs::new(&client, &namespace);
    rtc.apply(NAME, &spec("tier3", &[("acme", "tier1")], &endpoints))
        .await;
    rtc.wait_for_accepted(NAME, 1, "True").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let dp_token = token(&cluster, &namespace, SERVICE_ACCOUNT, Some(AUDIENCE)).await;
    let dp = follow(
        &cp.url(),
        &format!("{namespace}/{NAME}"),
        "dp-1",
        &dp_token,
        dir.path(),
    )
    .await;
    dp.wait_routes(&[("acme", "tier1")], K8S_SOON).await;

    // Generation 2: 100 customers with 60-byte ids, about 8 KiB as a snapshot message.
    let ids: Vec<String> = (0..100)
        .map(|i| format!("customer-{i:03}-{}", "x".repeat(47)))
        .collect();
    let mut customers: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "tier3")).collect();
    customers.push(("acme", "tier3"));
    rtc.apply(NAME, &spec("tier3", &customers, &endpoints)).await;
    let obj = rtc.wait_for_accepted(NAME, 2, "False").await;
    let accepted = condition_of(&obj, "Accepted");
    eprintln!("Accepted: {} {}", accepted.reason, accepted.message);
    assert!(
        accepted.message.contains(&format!("{LIMIT}-byte limit"))
            && accepted.message.contains("--max-message-bytes"),
        "{}",
        accepted.message
    );
    assert!(
        accepted.message.contains("still serving generation 1"),
        "{}",
        accepted.message
    );
    let served = obj
        .status
        .as_ref()
        .and_then(|s| s.snapshot.as_ref())
        .map(|s| s.version);
    assert_eq!(served, Some(1));
    // The data plane keeps generation 1 and its one session.
    cp.wait_state(&["dp-1"], "SYNCED", Some(1), K8S_SOON).await;
    dp.assert_routes(&[("acme", "tier1")]).await;
    assert_eq!(dp.counter("control_plane_sessions_total").await, 1.0);
    assert_eq!(dp.counter("cellroute_snapshots_received_total").await, 1.0);
}
