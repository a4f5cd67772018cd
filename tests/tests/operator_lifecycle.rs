//! The control plane's lifecycle against a real apiserver: SIGTERM exits within
//! `--shutdown-timeout` even when the apiserver cannot be reached (a TCP relay between the two
//! is frozen or killed), leaving its Leases to expire; and the leader deletes the Leases of
//! replicas that are gone, and only those.
//!
//! They need the API server that `scripts/test` starts, and fail without it.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cellroute_tests::control_plane::{ControlPlane, Options};
use cellroute_tests::k8s::{Cluster, K8S_SOON, apiserver_addr, spec, write_kubeconfig_via};
use cellroute_tests::process::field;
use cellroute_tests::relay::Relay;
use cellroute_tests::wait::eventually;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

/// `--shutdown-timeout` of these tests, and the slack allowed on top of it: the runtime's
/// one-second drop and process teardown on a loaded 2-core machine.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);
const SLACK: Duration = Duration::from_secs(3);

/// `--lease-duration`: short, so expiry and cleanup are quick.
const LEASE_SECS: u64 = 3;

/// The label every replica Lease carries.
const REPLICA_LABEL: &str = "cellroute.dev/replica-lease-of";

async fn lease(client: &Client, namespace: &str, name: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get Lease {namespace}/{name}: {e}"))
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// Starts a control plane reaching the apiserver through a relay, waits until it leads and has
/// written the status of one object (so it holds open connections), then breaks the link with
/// `cut`, sends SIGTERM and asserts it exits, successfully, within the bound; then that its
/// leader Lease, left unreleased, expires on its own (a replica started afterwards leads).
async fn sigterm_with_the_apiserver_unreachable(prefix: &str, cut: impl AsyncFnOnce(&mut Relay)) {
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    cluster.install_crd(&client).await;
    let namespace = cluster.namespace(&client, prefix).await;
    let mut relay = Relay::start(apiserver_addr(&cluster).await).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = Options {
        kubeconfig: write_kubeconfig_via(&cluster, relay.addr(), dir.path())
            .await
            .into_os_string(),
        lease_duration: Some(LEASE_SECS),
        ..Options::new(&cluster, &namespace, "cp-cut")
    };
    let timeout = format!("{}s", SHUTDOWN_TIMEOUT.as_secs());
    let mut cp = ControlPlane::start_with(&options, &["--shutdown-timeout", &timeout]).await;
    cp.wait_ready(K8S_SOON).await;
    cp.wait_leader(K8S_SOON).await;
    let rtc = cellroute_tests::k8s::RoutingConfigs::new(&client, &namespace);
    rtc.apply(
        "routes",
        &spec("a", &[("acme", "a")], &[("a", "http://127.0.0.1:9/a")]),
    )
    .await;
    rtc.wait_for_accepted("routes", 1, "True").await;

    cut(&mut relay).await;
    let sent = Instant::now();
    cp.sigterm();
    let status = cp
        .wait_for_exit(SHUTDOWN_TIMEOUT + SLACK + Duration::from_secs(30))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no exit within {:?} of SIGTERM",
                SHUTDOWN_TIMEOUT + SLACK + Duration::from_secs(30)
            )
        });
    let took = sent.elapsed();
    eprintln!("exited {status} {took:?} after SIGTERM with --shutdown-timeout {timeout}");
    assert!(
        took <= SHUTDOWN_TIMEOUT + SLACK,
        "SIGTERM took {took:?} to exit with --shutdown-timeout {timeout}; logs:\n{}",
        cp.logs().tail(40)
    );
    assert!(status.success(), "exit {status}; logs:\n{}", cp.logs().tail(40));
    // It could not release its Lease: it said so, and the Lease still names it until it expires.
    let records = cp.logs().records();
    assert!(
        records
            .iter()
            .any(|r| field(r, "message").is_some_and(|m| m.contains("not released")
                || m.contains("cannot release")
                || m.contains("did not finish"))),
        "the control plane did not report the unreachable apiserver; logs:\n{}",
        cp.logs().tail(40)
    );
    let leader_lease = lease(&client, &namespace, &options.lease_name)
        .await
        .expect("the leader Lease exists");
    assert_eq!(holder(&leader_lease), Some("cp-cut"), "{leader_lease:?}");

    // The Lease expires on its own: a replica started now takes over.
    let next = ControlPlane::start_with(
        &Options::new(&cluster, &namespace, "cp-next"),
        &["--lease-duration", "3"],
    )
    .await;
    next.wait_leader(Duration::from_secs(2 * LEASE_SECS + 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_shutdown_timeout_while_the_apiserver_is_silent() {
    sigterm_with_the_apiserver_unreachable("sigterm-frozen", async |relay: &mut Relay| relay.freeze()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_shutdown_timeout_while_the_apiserver_refuses_connections() {
    sigterm_with_the_apiserver_unreachable("sigterm-gone", async |relay: &mut Relay| relay.kill().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_deletes_the_leases_of_replicas_that_are_gone_and_nothing_else() {
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    cluster.install_crd(&client).await;
    let namespace = cluster.namespace(&client, "lease-sweep").await;
    let options = |identity: &str| Options {
        lease_duration: Some(LEASE_SECS),
        ..Options::new(&cluster, &namespace, identity)
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let lease_name = options("x").lease_name;
    let replica_lease = |identity: &str| format!("{lease_name}-{identity}");

    let leader = ControlPlane::start_ready(&options("cp-a")).await;
    leader.wait_leader(K8S_SOON).await;
    let (options_b, options_c) = (options("cp-b"), options("cp-c"));
    let (killed, mut stopped) = tokio::join!(
        ControlPlane::start_ready(&options_b),
        ControlPlane::start_ready(&options_c),
    );
    // Every replica holds a Lease of its own, labelled as cellroute's.
    for identity in ["cp-a", "cp-b", "cp-c"] {
        let name = replica_lease(identity);
        let lease = eventually(&format!("Lease {name} held by {identity}"), K8S_SOON, || async {
            match lease(&client, &namespace, &name).await {
                Some(l) if holder(&l) == Some(identity) => Ok(l),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let labels = lease.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get(REPLICA_LABEL), Some(&lease_name), "{labels:?}");
    }
    // Leases the sweep must leave alone: expired long ago, named like a replica Lease, but not
    // labelled as one; and labelled, but of another leader Lease.
    let long_ago = MicroTime(Timestamp::now() - jiff_hours(1));
    for (name, labels) in [
        (replica_lease("not-ours"), BTreeMap::new()),
        (
            "other-control-plane-cp-z".to_owned(),
            BTreeMap::from([(REPLICA_LABEL.to_owned(), "other-control-plane".to_owned())]),
        ),
    ] {
        let foreign = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("someone".to_owned()),
                lease_duration_seconds: Some(1),
                renew_time: Some(long_ago.clone()),
                acquire_time: Some(long_ago.clone()),
                ..LeaseSpec::default()
            }),
        };
        leases
            .create(&PostParams::default(), &foreign)
            .await
            .unwrap_or_else(|e| panic!("create Lease {name}: {e}"));
    }

    // cp-b dies (kill -9: its Lease stays held until it expires); cp-c stops cleanly.
    drop(killed);
    stopped.stop().await;
    let started = Instant::now();
    for identity in ["cp-b", "cp-c"] {
        let name = replica_lease(identity);
        eventually(
            &format!("the Lease {name} of the gone replica {identity} to be deleted"),
            Duration::from_secs(8 * LEASE_SECS + 20),
            || async {
                match lease(&client, &namespace, &name).await {
                    None => Ok(()),
                    Some(l) => Err(format!("{:?}", l.spec)),
                }
            },
        )
        .await;
    }
    eprintln!(
        "gone replicas' Leases deleted {:?} after they went",
        started.elapsed()
    );
    assert_eq!(
        leader.metric("cellroute_replica_leases_deleted_total", &[]).await,
        2.0
    );
    let left: Vec<String> = leases
        .list(&ListParams::default())
        .await
        .expect("list Leases")
        .items
        .into_iter()
        .filter_map(|l| l.metadata.name)
        .collect();
    let mut expected = vec![
        lease_name.clone(),
        replica_lease("cp-a"),
        replica_lease("not-ours"),
        "other-control-plane-cp-z".to_owned(),
    ];
    expected.sort();
    let mut left = left;
    left.sort();
    assert_eq!(left, expected, "the sweep deleted the wrong Leases");
    assert!(leader.is_leader().await);
}

fn jiff_hours(n: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_hours(n)
}
