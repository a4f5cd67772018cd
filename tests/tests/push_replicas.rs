//! Data-plane counts across control-plane replicas, on a real API server.
//!
//! Two replicas share the leader Lease; one data plane follows each. Each replica writes its own
//! entry in `status.dataPlanes.replicas`, and the status writer sums the live ones: the status
//! says 2/2 although no single replica sees both data planes. When a replica dies (`kill -9`),
//! its Lease expires, the writer drops its entry, and the status says 1/1.
//!
//! It needs the API server that `scripts/test` starts, and fails without it.

#![forbid(unsafe_code)]

use std::time::Duration;

use cellroute_tests::control_plane::Options;
use cellroute_tests::fixture::Cells;
use cellroute_tests::k8s::{Cluster, RoutingConfigs, spec};
use cellroute_tests::push_k8s::{AUDIENCE, KubeControlPlane, follow, service_account, token};
use cellroute_tests::wait::eventually;
use routing_model::crd::RoutingConfig;

/// Short, so a dead replica is noticed quickly.
const LEASE_SECONDS: &str = "3";
/// Time for a Lease to expire and the writer to notice (lease + check period + margin).
const NOTICE: Duration = Duration::from_secs(20);

fn data_planes(obj: &RoutingConfig) -> (String, usize, Option<String>) {
    let status = obj.status.as_ref();
    let planes = status.and_then(|s| s.data_planes.as_ref());
    let synced = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Synced"))
        .map(|c| c.status.clone());
    (
        planes.map(|d| d.summary.clone()).unwrap_or_default(),
        planes.map_or(0, |d| d.replicas.len()),
        synced,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_data_planes_of_every_live_replica() {
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    cluster.install_crd(&client).await;
    let namespace = cluster.namespace(&client, "push-replicas").await;
    let cells = Cells::start(&["tier1", "tier3"]).await;
    let extra = ["--lease-duration", LEASE_SECONDS];
    let cp0 = KubeControlPlane::start(&Options::new(&cluster, &namespace, "cp-0"), &extra).await;
    let cp1 = KubeControlPlane::start(&Options::new(&cluster, &namespace, "cp-1"), &extra).await;

    service_account(&cluster, &namespace, "data-plane").await;
    let token = token(&cluster, &namespace, "data-plane", Some(AUDIENCE)).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let object = format!("{namespace}/routes");
    let dp_a = follow(&cp0.url(), &object, "dp-a", &token, dir.path()).await;
    let dp_b = follow(&cp1.url(), &object, "dp-b", &token, dir.path()).await;

    let rtc = RoutingConfigs::new(&client, &namespace);
    rtc.apply(
        "routes",
        &spec(
            "tier3",
            &[("acme", "tier1")],
            &[("tier1", &cells.url("tier1")), ("tier3", &cells.url("tier3"))],
        ),
    )
    .await;
    for dp in [&dp_a, &dp_b] {
        dp.wait_connected(true, NOTICE).await;
        eventually(&format!("{} to route acme to tier1", dp.id), NOTICE, || async {
            match dp.config().await["snapshot"]["version"].as_i64() {
                Some(1) => Ok(()),
                other => Err(format!("snapshot version {other:?}")),
            }
        })
        .await;
        dp.assert_routes(&[("acme", "tier1"), ("someone-else", "tier3")])
            .await;
    }

    // Each replica sees one data plane; the status counts both.
    eventually("status to count both replicas' data planes", NOTICE, || async {
        let obj = rtc.get("routes").await;
        match data_planes(&obj) {
            (summary, 2, Some(synced)) if summary == "2/2" && synced == "True" => Ok(()),
            other => Err(format!("(summary, replica entries, Synced) = {other:?}")),
        }
    })
    .await;
    assert_eq!(cp0.metric("cellroute_connected_data_planes", &[]).await, 1.0);
    assert_eq!(cp1.metric("cellroute_connected_data_planes", &[]).await, 1.0);

    // kill -9 the replica that does not write status (dropping it kills the process); its data
    // plane keeps serving the table it has.
    let cp0_writes = cp0.metric("cellroute_leader", &[]).await == 1.0;
    let (writer, follower, orphan) = if cp0_writes {
        (cp0, cp1, &dp_b)
    } else {
        (cp1, cp0, &dp_a)
    };
    drop(follower);
    eventually("status to drop the dead replica's data plane", NOTICE, || async {
        let obj = rtc.get("routes").await;
        match data_planes(&obj) {
            (summary, 1, Some(synced)) if summary == "1/1" && synced == "True" => Ok(()),
            other => Err(format!("(summary, replica entries, Synced) = {other:?}")),
        }
    })
    .await;
    orphan.assert_routes(&[("acme", "tier1")]).await;
    assert_eq!(writer.metric("cellroute_leader", &[]).await, 1.0);
}
