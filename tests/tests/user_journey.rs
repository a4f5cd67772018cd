//! The whole user journey on a real Kubernetes API server, in order, as a user would walk it
//! (issue 5, "End to end, as a user would, on the real apiserver"):
//!
//! 1. the CRD and the chart's RBAC are installed, and the control plane runs out of cluster under
//!    a token of the chart's ServiceAccount;
//! 2. two data planes, with audience-bound (`cellroute`) tokens from the TokenRequest API, stand
//!    in front of two echo cells;
//! 3. `kubectl apply -f examples/routing.yaml` routes each customer to its cell through both;
//! 4. an applied edit reaches both;
//! 5. `kubectl get rtc` shows Accepted, Version and Synced 2/2;
//! 6. an invalid edit is rejected (get, describe, Event) while the data planes keep the previous
//!    version;
//! 7. with the control plane stopped the data planes keep serving, and one restarted meanwhile
//!    serves from its cache;
//! 8. the control plane started again: everything reconverges;
//! 9. the RoutingConfig deleted: the data planes keep serving and report orphaned.
//!
//! It needs the API server that `scripts/test` starts (and helm), and fails without them.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cellroute_tests::control_plane::Options;
use cellroute_tests::example::{self, CELLS, NAME, ROUTES as EXAMPLE_ROUTES};
use cellroute_tests::fixture::Cells;
use cellroute_tests::journey::{RestartableControlPlane, wait_synced};
use cellroute_tests::k8s::{
    Cluster, K8S_SOON, RBAC_TEMPLATES, RoutingConfigs, condition, condition_of, edit, get_rtc, render_chart,
    unique_suffix, without_version_skew_warnings, write_token_kubeconfig,
};
use cellroute_tests::push::Follower;
use cellroute_tests::push_k8s::{AUDIENCE, follow, service_account, token};
use cellroute_tests::wait::{SOON, eventually};
use kube::ResourceExt;
use serde_json::Value;

/// The ServiceAccount the data planes run as, in the RoutingConfig's namespace.
const DP_SERVICE_ACCOUNT: &str = "data-plane";
const DATA_PLANES: [&str; 2] = ["dp-1", "dp-2"];
/// After the first edit: globex moves to tier3.
const EDITED_ROUTES: [(&str, &str); 4] = [
    ("acme", "tier1"),
    ("globex", "tier3"),
    ("initech", "tier3"),
    ("unlisted-customer", "tier3"),
];
/// After the edit that follows the outage: acme moves to tier3 too.
const LAST_ROUTES: [(&str, &str); 4] = [
    ("acme", "tier3"),
    ("globex", "tier3"),
    ("initech", "tier3"),
    ("unlisted-customer", "tier3"),
];
/// How long "nothing changes" is watched for.
const STEADY: Duration = Duration::from_secs(1);

/// Asserts for [`STEADY`] that every data plane of `dps` keeps routing as `routes`.
async fn assert_steady(dps: &[Follower], routes: &[(&str, &str)]) {
    let until = Instant::now() + STEADY;
    while Instant::now() < until {
        for dp in dps {
            dp.assert_routes(routes).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `dp` serves `version` of `lineage` from `source`.
async fn wait_serving(dp: &Follower, lineage: &str, version: i64, source: &str) -> Value {
    eventually(
        &format!("{} to serve version {version} from {source}", dp.id),
        K8S_SOON,
        || async {
            let config = dp.config().await;
            if config["snapshot"]["lineage"] == lineage
                && config["snapshot"]["version"] == version
                && config["source"] == source
            {
                Ok(config)
            } else {
                Err(format!("{config}"))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_installs_applies_edits_survives_an_outage_and_deletes() {
    let started = Instant::now();
    let cluster = Cluster::from_env();
    let admin = cluster.client().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let manifest = dir.path().join("routing.yaml");
    let manifest_arg = manifest.display().to_string();
    let apply = |text: String| {
        let cluster = &cluster;
        let manifest = &manifest;
        let manifest_arg = &manifest_arg;
        async move {
            std::fs::write(manifest, &text).expect("write the manifest");
            let out = cluster.kubectl(&["apply", "-f", manifest_arg], None).await;
            assert!(
                out.status.success(),
                "kubectl apply failed with {}:\n{}\n{text}",
                out.status,
                without_version_skew_warnings(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };

    // 1. The CRD and the chart's RBAC; the control plane under the chart's ServiceAccount.
    cluster.install_crd(&admin).await;
    let namespace = cluster.namespace(&admin, "journey").await;
    let release = format!("journey-{}", unique_suffix());
    let cp_service_account = format!("{release}-control-plane");
    let rbac = render_chart(&cluster, &release, &namespace, &RBAC_TEMPLATES).await;
    let mut kinds: Vec<&str> = rbac.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ],
        "{rbac}"
    );
    cluster.apply_yaml(&rbac).await;
    let cp_token = token(&cluster, &namespace, &cp_service_account, None).await;
    let kubeconfig = write_token_kubeconfig(&cluster, &cp_token, &namespace, dir.path()).await;
    // The chart's Lease name, as its Deployment passes it: the Role names the status key Secret
    // after it.
    let options = Options {
        kubeconfig: kubeconfig.into_os_string(),
        lease_name: cellroute_tests::k8s::CHART_LEASE_NAME.to_owned(),
        ..Options::new(&cluster, &namespace, "cp-0")
    };
    let mut cp = RestartableControlPlane::start(options).await;
    eprintln!(
        "1. control plane ready under {cp_service_account} after {:?}",
        started.elapsed()
    );

    // 2. Two data planes with `cellroute` tokens from the TokenRequest API, two echo cells.
    let cells = Cells::start(&CELLS).await;
    service_account(&cluster, &namespace, DP_SERVICE_ACCOUNT).await;
    let dp_token = token(&cluster, &namespace, DP_SERVICE_ACCOUNT, Some(AUDIENCE)).await;
    let object = format!("{namespace}/{NAME}");
    let mut dps = Vec::new();
    for id in DATA_PLANES {
        dps.push(follow(&cp.url(), &object, id, &dp_token, dir.path()).await);
    }
    let dp_user = format!("system:serviceaccount:{namespace}:{DP_SERVICE_ACCOUNT}");
    for entry in cp.wait_state(&DATA_PLANES, "ORPHANED", None, K8S_SOON).await {
        assert_eq!(entry["record"]["user"], dp_user.as_str(), "{entry}");
    }
    for dp in &dps {
        dp.wait_connected(true, K8S_SOON).await;
    }

    // 3. `kubectl apply -f examples/routing.yaml`, with only the namespace and endpoints changed.
    let example = example::localized(&namespace, &cells);
    let out = apply(example.clone()).await;
    assert!(out.contains("created"), "{out}");
    for dp in &dps {
        dp.wait_routes(&EXAMPLE_ROUTES, K8S_SOON).await;
        dp.proxy.wait_for_cell(None, "tier3", SOON).await;
    }
    let rtc = RoutingConfigs::new(&admin, &namespace);
    let obj = wait_synced(&rtc, NAME, 1, "True", 1, 2).await;
    let uid = obj.uid().expect("uid");
    eprintln!(
        "3. the example routes through both data planes after {:?}",
        started.elapsed()
    );

    // 4. An edit: both converge.
    let edited = edit(&example, &[("globex: tier1", "globex: tier3")]);
    let out = apply(edited.clone()).await;
    assert!(out.contains("configured"), "{out}");
    for dp in &dps {
        dp.wait_routes(&EDITED_ROUTES, K8S_SOON).await;
        wait_serving(dp, &uid, 2, "control-plane").await;
    }

    // 5. `kubectl get rtc`: Accepted, Version, Synced 2/2.
    let obj = wait_synced(&rtc, NAME, 2, "True", 2, 2).await;
    assert_eq!(
        get_rtc(&cluster, &namespace, NAME).await,
        ["routes", "True", "2", "2/2"]
    );
    assert_eq!(
        condition_of(&obj, "Synced").message.clone(),
        "all 2 data planes applied version 2"
    );
    let hash_v2 = obj
        .status
        .as_ref()
        .and_then(|s| s.snapshot.as_ref())
        .map(|s| s.hash.clone())
        .expect("snapshot");
    for dp in &dps {
        dp.wait_counter("cellroute_cache_writes_total", 2.0, SOON).await;
    }
    eprintln!("5. kubectl get rtc: True 2 2/2 after {:?}", started.elapsed());

    // 6. An invalid edit: rejected, naming the field, with an Event; the data planes keep v2.
    let invalid = edit(&edited, &[("defaultPlacement: tier3", "defaultPlacement: tier2")]);
    // A 1.20 API server has no CEL: the object is stored and the control plane judges it.
    apply(invalid).await;
    let obj = wait_synced(&rtc, NAME, 3, "False", 2, 2).await;
    let status = obj.status.clone().expect("status");
    let accepted = condition(&status, "Accepted").expect("Accepted");
    assert_eq!(accepted.reason, "InvalidSpec", "{accepted:?}");
    assert!(
        accepted.message.contains("spec.defaultPlacement"),
        "the rejection must name the field: {accepted:?}"
    );
    assert_eq!(
        get_rtc(&cluster, &namespace, NAME).await,
        ["routes", "False", "2", "2/2"]
    );
    rtc.wait_for_event(&uid, "Rejected", &accepted.message).await;
    let described = eventually("kubectl describe to show the rejection", K8S_SOON, || async {
        let text = cluster
            .kubectl_ok(&["describe", "rtc", NAME, "-n", &namespace], None)
            .await;
        let events = text.split("Events:").nth(1).unwrap_or_default();
        if text.contains("InvalidSpec")
            && text.contains("spec.defaultPlacement")
            && events
                .lines()
                .any(|l| l.contains("Rejected") && l.contains("spec.defaultPlacement"))
        {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    eprintln!("6. kubectl describe:\n{described}");
    assert_steady(&dps, &EDITED_ROUTES).await;
    for dp in &dps {
        let config = dp.config().await;
        assert_eq!(config["snapshot"]["version"], 2, "{}: {config}", dp.id);
        assert_eq!(config["hash"], hash_v2.as_str(), "{}: {config}", dp.id);
        assert_eq!(
            config["control_plane"]["last_nack"],
            Value::Null,
            "{}: {config}",
            dp.id
        );
        assert_eq!(dp.admin.readyz().await.status, 200, "{}", dp.id);
    }

    // 7. The control plane stops: the data planes keep serving; one restarted meanwhile serves
    // from its cache.
    cp.stop();
    for dp in &dps {
        dp.wait_connected(false, SOON).await;
    }
    assert_steady(&dps, &EDITED_ROUTES).await;
    for dp in &dps {
        assert_eq!(dp.admin.readyz().await.status, 200, "{} must stay ready", dp.id);
    }
    let stopping = dps.pop().expect("dp-2");
    let id = stopping.id.clone();
    let mut process = stopping.dp;
    process.sigterm();
    assert!(
        process.wait_for_exit(SOON).await.is_some(),
        "{id} did not stop on SIGTERM"
    );
    let restarted = follow(&cp.url(), &object, &id, &dp_token, dir.path()).await;
    assert_eq!(
        restarted.admin.readyz().await.status,
        200,
        "{id}: not ready from its cache at once"
    );
    restarted.assert_routes(&EDITED_ROUTES).await;
    let config = restarted.config().await;
    assert_eq!(config["source"], "cache", "{config}");
    assert_eq!(config["snapshot"]["lineage"], uid.as_str(), "{config}");
    assert_eq!(config["snapshot"]["version"], 2, "{config}");
    assert_eq!(config["hash"], hash_v2.as_str(), "{config}");
    assert_eq!(config["control_plane"]["connected"], false, "{config}");
    dps.push(restarted);
    eprintln!(
        "7. outage survived, {id} restarted from its cache after {:?}",
        started.elapsed()
    );

    // 8. The control plane again: both reconnect, Synced 2/2 again, and an edit converges.
    cp.restart().await;
    for dp in &dps {
        dp.wait_connected(true, K8S_SOON).await;
    }
    cp.wait_state(&DATA_PLANES, "SYNCED", None, K8S_SOON).await;
    // The stored spec is still the invalid generation 3: still rejected, version 2 still served.
    wait_synced(&rtc, NAME, 3, "False", 2, 2).await;
    assert_eq!(
        get_rtc(&cluster, &namespace, NAME).await,
        ["routes", "False", "2", "2/2"]
    );
    assert_steady(&dps, &EDITED_ROUTES).await;
    let fixed = edit(&edited, &[("acme: tier1", "acme: tier3")]);
    let out = apply(fixed).await;
    assert!(out.contains("configured"), "{out}");
    for dp in &dps {
        dp.wait_routes(&LAST_ROUTES, K8S_SOON).await;
        wait_serving(dp, &uid, 4, "control-plane").await;
    }
    let obj = wait_synced(&rtc, NAME, 4, "True", 4, 2).await;
    assert_eq!(
        get_rtc(&cluster, &namespace, NAME).await,
        ["routes", "True", "4", "2/2"]
    );
    assert_eq!(
        condition_of(&obj, "Synced").message.clone(),
        "all 2 data planes applied version 4"
    );
    eprintln!("8. reconverged after {:?}", started.elapsed());

    // 9. Deleted: the data planes keep serving, and say they are orphaned.
    let out = cluster.kubectl_ok(&["delete", "-f", &manifest_arg], None).await;
    assert!(out.contains("deleted"), "{out}");
    for dp in &dps {
        eventually(&format!("{} to report orphaned", dp.id), K8S_SOON, || async {
            let config = dp.config().await;
            if config["control_plane"]["orphaned"] == true {
                Ok(())
            } else {
                Err(format!("control_plane: {}", config["control_plane"]))
            }
        })
        .await;
        assert_eq!(
            dp.admin.metric("routing_config_orphaned", &[]).await,
            Some(1.0),
            "{}",
            dp.id
        );
        assert_eq!(dp.admin.readyz().await.status, 200, "{}", dp.id);
        let config = dp.config().await;
        assert_eq!(config["snapshot"]["version"], 4, "{}: {config}", dp.id);
        assert_eq!(config["control_plane"]["connected"], true, "{}: {config}", dp.id);
    }
    assert_steady(&dps, &LAST_ROUTES).await;
    cp.wait_state(&DATA_PLANES, "ORPHANED", None, SOON).await;
    eprintln!("9. orphaned and serving after {:?}", started.elapsed());

    // Cluster-scoped leftovers of this test; the namespace stays.
    cluster
        .kubectl_ok(
            &[
                "delete",
                &format!("clusterrole/{cp_service_account}"),
                &format!("clusterrolebinding/{cp_service_account}"),
                "--ignore-not-found",
            ],
            None,
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the journey took {:?}",
        started.elapsed()
    );
}
