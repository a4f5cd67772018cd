//! A RoutingConfig near the API server's object limit: its status always writes.
//!
//! `kubectl create` stores a 60,000-customer RoutingConfig (about 1.56 MB of JSON, just under
//! etcd's 1.5 MiB request limit; the same table with a few percent more customers is refused).
//! An object that large carries no `managedFields`: the API server drops them when the object
//! would not fit with them. A server-side apply to it (of its status, too) makes the API server
//! compute the ownership of every customer key, which doubles the request past the limit: every
//! status write then failed with a 500, forever. The control plane writes status with merge
//! patches, which the API server stores without those field lists when they would not fit, and
//! keeps the status small: it must say Accepted, Synced 1/1 with a real data plane following the
//! table, and Accepted=False naming the bad key after an invalid edit.
//!
//! It needs the API server that `scripts/test` starts, and fails without it.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use cellroute_tests::control_plane::Scene;
use cellroute_tests::fixture::Cells;
use cellroute_tests::k8s::{K8S_SOON, condition, condition_of, get_rtc, without_version_skew_warnings};
use cellroute_tests::push_k8s::{AUDIENCE, follow, service_account, token};
use cellroute_tests::wait::eventually;
use kube::ResourceExt;
use serde_json::{Value, json};

/// Customers of the table near the limit.
const CUSTOMERS: usize = 60_000;

/// `customer-000000` … → tier1, tier2, tier3 in turn.
fn customers(n: usize) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| (format!("customer-{i:06}"), format!("tier{}", i % 3 + 1)))
        .collect()
}

fn manifest(namespace: &str, name: &str, cells: &Cells, n: usize) -> Value {
    json!({
        "apiVersion": "cellroute.dev/v1alpha1",
        "kind": "RoutingConfig",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "defaultPlacement": "tier1",
            "customerToPlacement": customers(n),
            "placementToEndpoint": {
                "tier1": cells.url("tier1"),
                "tier2": cells.url("tier2"),
                "tier3": cells.url("tier3"),
            },
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_near_the_object_limit_gets_its_status_written_accepted_synced_and_rejected() {
    let s = Scene::start("object-size").await;
    let cells = Cells::start(&["tier1", "tier2", "tier3"]).await;
    let dir = tempfile::tempdir().expect("temporary directory");

    // Near the limit: a few percent more customers and the API server refuses the object.
    let over = dir.path().join("over.json");
    let bigger = manifest(&s.namespace, "over", &cells, CUSTOMERS * 105 / 100);
    std::fs::write(&over, bigger.to_string()).expect("write the manifest");
    let out = s
        .cluster
        .kubectl(&["create", "-f", &over.display().to_string()], None)
        .await;
    let stderr = without_version_skew_warnings(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("too large"),
        "the apiserver stored {} customers, so {CUSTOMERS} is not near its limit: {stderr}",
        CUSTOMERS * 105 / 100
    );

    let path = dir.path().join("routes.json");
    let text = manifest(&s.namespace, "routes", &cells, CUSTOMERS).to_string();
    std::fs::write(&path, &text).expect("write the manifest");
    s.cluster
        .kubectl_ok(&["create", "-f", &path.display().to_string()], None)
        .await;
    let obj = s.rtc.wait_for_accepted("routes", 1, "True").await;
    let uid = obj.uid().expect("uid");
    assert_eq!(
        condition_of(&obj, "Accepted").message,
        format!("generation 1 accepted: {CUSTOMERS} customers, 3 placements")
    );
    let entry = s.cp.wait_served(&s.rtc.key("routes"), &uid, 1).await;
    assert_eq!(entry["served"]["customers"], CUSTOMERS, "{entry}");

    // A data plane follows it; its replica entry and the totals are status writes too.
    service_account(&s.cluster, &s.namespace, "data-plane").await;
    let token = token(&s.cluster, &s.namespace, "data-plane", Some(AUDIENCE)).await;
    let dp = follow(&s.cp.url(), &s.rtc.key("routes"), "dp-0", &token, dir.path()).await;
    dp.wait_routes(
        &[
            ("customer-000000", "tier1"),
            ("customer-059999", "tier3"),
            ("nobody", "tier1"),
        ],
        K8S_SOON,
    )
    .await;
    s.rtc
        .wait_for("routes", "Synced 1/1", |obj| {
            let status = obj.status.as_ref().ok_or("no status")?;
            match condition(status, "Synced") {
                Some(c) if c.status == "True" => Ok(()),
                other => Err(format!("Synced: {other:?}")),
            }
        })
        .await;
    assert_eq!(
        get_rtc(&s.cluster, &s.namespace, "routes").await,
        ["routes", "True", "1", "1/1"]
    );

    // An invalid edit of one customer: rejected, naming it; the status says so and keeps the
    // served version.
    s.cluster
        .kubectl_ok(
            &[
                "patch",
                "rtc",
                "routes",
                "-n",
                &s.namespace,
                "--type=merge",
                "-p",
                r#"{"spec":{"customerToPlacement":{"customer-000042":"tier9"}}}"#,
            ],
            None,
        )
        .await;
    let obj = s.rtc.wait_for_accepted("routes", 2, "False").await;
    let accepted = condition_of(&obj, "Accepted");
    assert!(
        accepted
            .message
            .contains("spec.customerToPlacement.customer-000042")
            && accepted.message.contains("tier9"),
        "{accepted:?}"
    );
    let snapshot = obj
        .status
        .as_ref()
        .and_then(|s| s.snapshot.clone())
        .expect("snapshot");
    assert_eq!(snapshot.version, 1, "{snapshot:?}");
    // Recording the served spec beside an object this large would push it over the limit.
    assert!(
        snapshot.served_spec.is_none() && accepted.message.contains("not recorded in the status"),
        "{snapshot:?} {accepted:?}"
    );
    dp.assert_routes(&[("customer-000042", "tier1")]).await;

    // No status write failed, ever: no failed reconcile, no warning about the status.
    eventually("no reconcile to have failed", K8S_SOON, || async {
        let errors = s.cp.reconciles("error").await;
        if errors == 0.0 {
            Ok(())
        } else {
            Err(format!("{errors} failed reconciles"))
        }
    })
    .await;
    let failures: Vec<Value> =
        s.cp.warnings()
            .into_iter()
            .filter(|w| w.to_string().contains("status") || w.to_string().contains("data-plane counts"))
            .collect();
    assert!(failures.is_empty(), "status writes failed: {failures:?}");
}
