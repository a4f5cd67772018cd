//! Control planes coming and going, on a real API server: a restart must not rewrite a status
//! that is already right, and two replicas sharing a Lease must not fight over status.
//!
//! They need the API server that `scripts/test` starts, and fail without it.

use std::time::{Duration, Instant};

use cellroute_tests::control_plane::{ControlPlane, Options, Scene};
use cellroute_tests::k8s::{
    CONTROL_PLANE_MANAGER, Cluster, K8S_POLL, K8S_SOON, RoutingConfigs, condition_of, describe_events, spec,
    status_managers,
};
use cellroute_tests::process::field;
use cellroute_tests::wait::{eventually, eventually_every};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, ResourceExt};
use routing_model::crd::RoutingConfig;
use serde_json::Value;

const EP_A: &str = "http://127.0.0.1:9/a";
const EP_B: &str = "http://127.0.0.1:9/b";

/// `--lease-duration` of the replicas test: short, so a takeover is quick, yet with renewals
/// (every 4 s, 2 s before expiry) that a loaded machine does not miss.
const LEASE_SECS: u64 = 6;

fn valid_spec() -> Value {
    spec(
        "tier-a",
        &[("acme", "tier-b")],
        &[("tier-a", EP_A), ("tier-b", EP_B)],
    )
}

fn invalid_spec() -> Value {
    spec(
        "tier-z",
        &[("acme", "tier-b")],
        &[("tier-a", EP_A), ("tier-b", EP_B)],
    )
}

fn uid_of(obj: &RoutingConfig) -> String {
    obj.uid().expect("stored objects have a uid")
}

/// The holder of the Lease `name`, if any.
async fn lease_holder(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get Lease {namespace}/{name}: {e}"))
        .spec
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// Waits until `cp` leads and has reconciled `object` (its only object) while leading: either
/// its first reconcile of the object began after it took the lease, or a later one ran (taking
/// the lease re-reconciles everything). Any status write the control plane was going to make
/// is then made, or about to be.
async fn wait_reconciled_as_leader(cp: &ControlPlane, object: &str) {
    cp.wait_leader(K8S_SOON).await;
    eventually(
        &format!("control plane {} to reconcile {object} as the leader", cp.identity()),
        K8S_SOON,
        || async {
            let records = cp.logs().records();
            let position = |pred: &dyn Fn(&Value) -> bool| records.iter().position(pred);
            let led = position(&|r| field(r, "message") == Some("leadership changed") && r["leading"] == true);
            let audited = position(&|r| field(r, "target") == Some("audit") && field(r, "object") == Some(object));
            let again = cp.reconciles("unchanged").await >= 1.0;
            match (led, audited) {
                (Some(l), Some(a)) if l < a || again => Ok(()),
                _ => Err(format!("leadership at record {led:?}, first audit of {object} at {audited:?}, re-reconciled: {again}")),
            }
        },
    )
    .await;
}

/// Asserts that the object's resourceVersion stays `expected` for `window`.
async fn assert_untouched_for(rtc: &RoutingConfigs, name: &str, expected: &RoutingConfig, window: Duration) {
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        let now = rtc.get(name).await;
        assert_eq!(
            now.resource_version(),
            expected.resource_version(),
            "{} was written: status before {}, after {}; managedFields after: {:?}",
            rtc.key(name),
            serde_json::to_string(&expected.status).unwrap_or_default(),
            serde_json::to_string(&now.status).unwrap_or_default(),
            now.managed_fields()
        );
        tokio::time::sleep(K8S_POLL).await;
    }
}

/// Stops the scene's control plane (which must release its lease) and starts `cp-1` in its place.
async fn restart(s: &mut Scene) -> ControlPlane {
    s.cp.stop().await;
    let lease = s.options("cp-1").lease_name;
    assert_eq!(
        lease_holder(&s.client, &s.namespace, &lease).await,
        None,
        "cp-0 did not release its lease on shutdown"
    );
    ControlPlane::start_ready(&s.options("cp-1")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_writes_no_status_when_nothing_changed() {
    let mut s = Scene::start("restart").await;
    let object = s.rtc.key("routes");
    let uid = uid_of(&s.rtc.apply("routes", &valid_spec()).await);
    s.rtc.wait_for_accepted("routes", 1, "True").await;
    let moved = spec(
        "tier-b",
        &[("acme", "tier-a")],
        &[("tier-a", EP_A), ("tier-b", EP_B)],
    );
    s.rtc.apply("routes", &moved).await;
    let before = s.rtc.wait_for_accepted("routes", 2, "True").await;
    // Each decision's Event follows its status write: wait for generation 2's, so the count
    // compared below is settled before the restart.
    let note = condition_of(&before, "Accepted").message.clone();
    s.rtc.wait_for_event(&uid, "Accepted", &note).await;
    let events_before = s.rtc.events_about(&uid).await;

    let cp = restart(&mut s).await;
    wait_reconciled_as_leader(&cp, &object).await;
    let entry = cp.wait_served(&object, &uid, 2).await;
    let snapshot = before
        .status
        .clone()
        .and_then(|st| st.snapshot)
        .expect("snapshot");
    assert_eq!(entry["served"]["hash"], snapshot.hash.as_str(), "{entry}");

    // Two seconds is ample for a write that was coming: reconciles take milliseconds.
    assert_untouched_for(&s.rtc, "routes", &before, Duration::from_secs(2)).await;
    assert_eq!(
        cp.status_writes().await,
        0.0,
        "the restarted control plane wrote a status"
    );
    assert_eq!(cp.reconciles("error").await, 0.0);
    let events_after = s.rtc.events_about(&uid).await;
    assert_eq!(
        events_after.len(),
        events_before.len(),
        "the restart published Events: {}",
        describe_events(&events_after)
    );
}

/// An object whose generation 1 was accepted and generation 2 rejected, and the control plane
/// restarted after both: (its status before the restart, the restarted control plane).
async fn restart_with_a_rejected_object(s: &mut Scene) -> (RoutingConfig, ControlPlane, String) {
    let object = s.rtc.key("routes");
    let uid = uid_of(&s.rtc.apply("routes", &valid_spec()).await);
    s.rtc.wait_for_accepted("routes", 1, "True").await;
    s.rtc.apply("routes", &invalid_spec()).await;
    let before = s.rtc.wait_for_accepted("routes", 2, "False").await;
    assert_eq!(
        before
            .status
            .as_ref()
            .and_then(|st| st.snapshot.as_ref())
            .map(|sn| sn.version),
        Some(1),
        "before the restart the status names the last good snapshot"
    );
    let cp = restart(s).await;
    wait_reconciled_as_leader(&cp, &object).await;
    (before, cp, uid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_writes_no_status_for_a_rejected_object() {
    let mut s = Scene::start("restart-rejected").await;
    let (before, cp, _) = restart_with_a_rejected_object(&mut s).await;
    assert_untouched_for(&s.rtc, "routes", &before, Duration::from_secs(2)).await;
    assert_eq!(
        cp.status_writes().await,
        0.0,
        "the restarted control plane wrote a status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_control_plane_still_serves_the_last_good_snapshot_of_a_rejected_object() {
    let mut s = Scene::start("restart-lkg").await;
    let (before, cp, uid) = restart_with_a_rejected_object(&mut s).await;
    let snapshot = before
        .status
        .clone()
        .and_then(|st| st.snapshot)
        .expect("snapshot");
    let object = s.rtc.key("routes");
    let entry = cp.snapshot_of(&object).await;
    let served = entry.as_ref().map_or(&Value::Null, |e| &e["served"]);
    assert!(
        served["lineage"] == uid.as_str()
            && served["version"] == 1
            && served["hash"] == snapshot.hash.as_str(),
        "after a restart the control plane must still serve generation 1 ({}) of {object}, whose generation 2 is \
         invalid; /debug/snapshots has {entry:?}",
        snapshot.hash
    );
    // It did so because the record carries this control plane's signature, and found nothing
    // to distrust.
    assert!(snapshot.signature.is_some(), "{snapshot:?}");
    cp.wait_for_log("the recovery audit line", K8S_SOON, |r| {
        field(r, "target") == Some("audit")
            && field(r, "message")
                .is_some_and(|m| m.starts_with("recovered the served table from the status"))
            && r["version"] == 1
    })
    .await;
    assert_eq!(cp.metric("cellroute_untrusted_status_total", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_status_writer_and_hand_over_on_shutdown() {
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    cluster.install_crd(&client).await;
    let namespace = cluster.namespace(&client, "replicas").await;
    let rtc = RoutingConfigs::new(&client, &namespace);
    let object = rtc.key("routes");
    let options = |identity: &str| Options {
        lease_duration: Some(LEASE_SECS),
        ..Options::new(&cluster, &namespace, identity)
    };
    let (options_a, options_b) = (options("cp-a"), options("cp-b"));
    let (a, b) = tokio::join!(
        ControlPlane::start_ready(&options_a),
        ControlPlane::start_ready(&options_b)
    );
    let lease = options("cp-a").lease_name;

    let leading = eventually_every("exactly one leader", K8S_SOON, K8S_POLL, || async {
        match (a.is_leader().await, b.is_leader().await) {
            (true, false) => Ok("cp-a"),
            (false, true) => Ok("cp-b"),
            both => Err(format!("cellroute_leader (cp-a, cp-b) = {both:?}")),
        }
    })
    .await;
    let (mut leader, follower) = if leading == "cp-a" { (a, b) } else { (b, a) };
    assert_eq!(
        lease_holder(&client, &namespace, &lease).await.as_deref(),
        Some(leader.identity())
    );

    // A few edits, each waited for: valid, invalid, valid.
    let uid = uid_of(&rtc.apply("routes", &valid_spec()).await);
    rtc.wait_for_accepted("routes", 1, "True").await;
    rtc.apply("routes", &invalid_spec()).await;
    rtc.wait_for_accepted("routes", 2, "False").await;
    let third = spec(
        "tier-b",
        &[("acme", "tier-a")],
        &[("tier-a", EP_A), ("tier-b", EP_B)],
    );
    rtc.apply("routes", &third).await;
    let settled = rtc.wait_for_accepted("routes", 3, "True").await;
    // Every replica validates and serves, not only the leader.
    for cp in [&leader, &follower] {
        cp.wait_served(&object, &uid, 3).await;
    }

    // Settled means settled: no writes for longer than a lease renewal period, one writer.
    assert_untouched_for(&rtc, "routes", &settled, Duration::from_secs(LEASE_SECS)).await;
    assert!(
        leader.is_leader().await && !follower.is_leader().await,
        "leadership moved"
    );
    assert_eq!(
        status_managers(&settled),
        [(CONTROL_PLANE_MANAGER.to_owned(), "Update".to_owned())],
        "managedFields: {:?}",
        settled.managed_fields()
    );
    assert_eq!(follower.status_writes().await, 0.0, "the follower wrote status");
    assert_eq!(
        leader.status_writes_at_least(3.0).await,
        3.0,
        "one status write per generation"
    );
    assert!(
        follower.reconciles("accepted").await >= 2.0,
        "the follower did not validate"
    );
    let events = rtc.events_about(&uid).await;
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.reporting_controller.as_deref() == Some(leader.reporter().as_str())),
        "Events from a replica that does not lead: {}",
        describe_events(&events)
    );

    // The leader shuts down: it releases the lease, and the other replica takes over.
    leader.stop().await;
    let holder = lease_holder(&client, &namespace, &lease).await;
    assert_ne!(
        holder.as_deref(),
        Some(leader.identity()),
        "the lease was not released on shutdown"
    );
    let stopped = Instant::now();
    follower
        .wait_leader(Duration::from_secs(2 * LEASE_SECS + 10))
        .await;
    let takeover = stopped.elapsed();
    eprintln!("takeover after a clean shutdown took {takeover:?} with --lease-duration {LEASE_SECS}");

    let fourth = spec(
        "tier-a",
        &[("acme", "tier-a")],
        &[("tier-a", EP_A), ("tier-b", EP_B)],
    );
    rtc.apply("routes", &fourth).await;
    let obj = rtc.wait_for_accepted("routes", 4, "True").await;
    assert_eq!(
        obj.status
            .as_ref()
            .and_then(|st| st.snapshot.as_ref())
            .map(|sn| sn.version),
        Some(4)
    );
    assert_eq!(follower.status_writes_at_least(1.0).await, 1.0);
    let event = rtc
        .wait_for_event(&uid, "Accepted", &condition_of(&obj, "Accepted").message)
        .await;
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some(follower.reporter().as_str())
    );
    assert_eq!(
        status_managers(&obj),
        [(CONTROL_PLANE_MANAGER.to_owned(), "Update".to_owned())],
        "managedFields: {:?}",
        obj.managed_fields()
    );
    assert_eq!(follower.reconciles("error").await, 0.0);
}
