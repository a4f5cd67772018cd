//! The control plane runs under a ServiceAccount bound to exactly the RBAC the Helm chart ships,
//! not as the cluster admin: this proves the chart grants enough, and no more.
//!
//! It needs the API server that `scripts/test` starts (and helm, which `tests/k8s/apiserver.sh
//! install` fetches), and fails without them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cellroute_tests::control_plane::{ControlPlane, Options};
use cellroute_tests::k8s::{
    CHART_LEASE_NAME, Cluster, K8S_SOON, RBAC_TEMPLATES, RoutingConfigs, TEST_FIELD_MANAGER, client_for,
    condition_of, render_chart, spec, status_code, unique_suffix, write_token_kubeconfig,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use routing_model::crd::RoutingConfig;
use serde_json::json;

/// `kubectl auth can-i` questions about the control plane's ServiceAccount: (verb, resource,
/// extra flags, expected answer). `NS` stands for the release namespace.
const PERMISSIONS: &[(&str, &str, &[&str], bool)] = &[
    // What it needs.
    ("get", "routingconfigs.cellroute.dev", &["-n", "NS"], true),
    ("list", "routingconfigs.cellroute.dev", &["-n", "NS"], true),
    ("watch", "routingconfigs.cellroute.dev", &["-n", "NS"], true),
    (
        "list",
        "routingconfigs.cellroute.dev",
        &["--all-namespaces"],
        true,
    ),
    (
        "patch",
        "routingconfigs.cellroute.dev",
        &["--subresource=status", "-n", "NS"],
        true,
    ),
    ("get", "routingshards.cellroute.dev", &["-n", "NS"], true),
    ("list", "routingshards.cellroute.dev", &["-n", "NS"], true),
    ("watch", "routingshards.cellroute.dev", &["-n", "NS"], true),
    ("list", "routingshards.cellroute.dev", &["--all-namespaces"], true),
    (
        "patch",
        "routingshards.cellroute.dev",
        &["--subresource=status", "-n", "NS"],
        true,
    ),
    ("create", "events.events.k8s.io", &["-n", "NS"], true),
    ("patch", "events.events.k8s.io", &["-n", "NS"], true),
    ("create", "tokenreviews.authentication.k8s.io", &[], true),
    ("get", "leases.coordination.k8s.io", &["-n", "NS"], true),
    ("create", "leases.coordination.k8s.io", &["-n", "NS"], true),
    ("patch", "leases.coordination.k8s.io", &["-n", "NS"], true),
    // The leader deletes the Leases of replicas that are gone, found by their label.
    ("list", "leases.coordination.k8s.io", &["-n", "NS"], true),
    ("delete", "leases.coordination.k8s.io", &["-n", "NS"], true),
    // The status key: created on first start, then read by name, and no other Secret.
    ("create", "secrets", &["-n", "NS"], true),
    (
        "get",
        "secrets/cellroute-control-plane-status-key",
        &["-n", "NS"],
        true,
    ),
    // What it must not do: change what users wrote, read other secrets, or reach beyond its
    // namespace.
    ("create", "routingconfigs.cellroute.dev", &["-n", "NS"], false),
    ("update", "routingconfigs.cellroute.dev", &["-n", "NS"], false),
    ("patch", "routingconfigs.cellroute.dev", &["-n", "NS"], false),
    ("delete", "routingconfigs.cellroute.dev", &["-n", "NS"], false),
    ("create", "routingshards.cellroute.dev", &["-n", "NS"], false),
    ("update", "routingshards.cellroute.dev", &["-n", "NS"], false),
    ("patch", "routingshards.cellroute.dev", &["-n", "NS"], false),
    ("delete", "routingshards.cellroute.dev", &["-n", "NS"], false),
    (
        "update",
        "routingconfigs.cellroute.dev",
        &["--subresource=status", "-n", "NS"],
        false,
    ),
    ("get", "secrets", &["-n", "NS"], false),
    ("get", "secrets/another-secret", &["-n", "NS"], false),
    ("list", "secrets", &["-n", "NS"], false),
    ("watch", "secrets", &["-n", "NS"], false),
    ("update", "secrets", &["-n", "NS"], false),
    ("patch", "secrets", &["-n", "NS"], false),
    ("delete", "secrets", &["-n", "NS"], false),
    ("list", "secrets", &["--all-namespaces"], false),
    ("create", "secrets", &["-n", "default"], false),
    ("get", "configmaps", &["-n", "NS"], false),
    ("create", "pods", &["-n", "NS"], false),
    ("patch", "leases.coordination.k8s.io", &["-n", "default"], false),
    ("delete", "leases.coordination.k8s.io", &["-n", "default"], false),
    ("delete", "events.events.k8s.io", &["-n", "NS"], false),
    ("*", "*", &["--all-namespaces"], false),
];

/// The `kind` of each document of a rendered YAML stream, sorted.
fn kinds_of(rendered: &str) -> Vec<&str> {
    let mut kinds: Vec<&str> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::trim)
        .collect();
    kinds.sort_unstable();
    kinds
}

/// A one-hour token for `service_account` from the TokenRequest API, in a kubeconfig in `dir`.
async fn token_kubeconfig(cluster: &Cluster, service_account: &str, namespace: &str, dir: &Path) -> PathBuf {
    let args = [
        "create",
        "token",
        service_account,
        "-n",
        namespace,
        "--duration",
        "1h",
    ];
    let token = cluster.kubectl_ok(&args, None).await.trim().to_owned();
    assert!(!token.is_empty(), "kubectl {args:?} printed no token");
    write_token_kubeconfig(cluster, &token, namespace, dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_works_with_exactly_the_charts_rbac_and_no_more() {
    let cluster = Cluster::from_env();
    let admin = cluster.client().await;
    cluster.install_crd(&admin).await;
    let namespace = cluster.namespace(&admin, "rbac").await;
    // ClusterRoles are cluster-scoped: a release name of its own keeps parallel runs apart.
    let release = format!("rbac-{}", unique_suffix());
    let service_account = format!("{release}-control-plane");

    let rendered = render_chart(&cluster, &release, &namespace, &RBAC_TEMPLATES).await;
    let kinds = kinds_of(&rendered);
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ],
        "{rendered}"
    );
    cluster.apply_yaml(&rendered).await;

    // A token for the ServiceAccount from the TokenRequest API, and a kubeconfig that uses it.
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = token_kubeconfig(&cluster, &service_account, &namespace, dir.path()).await;

    // What the ServiceAccount may do, asked of the API server's authorizer.
    let user = format!("system:serviceaccount:{namespace}:{service_account}");
    let mut wrong = Vec::new();
    for (verb, resource, flags, expected) in PERMISSIONS {
        let mut args = vec!["auth", "can-i", *verb, *resource, "--as", user.as_str()];
        args.extend(
            flags
                .iter()
                .map(|f| if *f == "NS" { namespace.as_str() } else { f }),
        );
        let out = cluster.kubectl(&args, None).await;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            answer == "yes" || answer == "no",
            "kubectl {args:?}: {answer:?} {out:?}"
        );
        if (answer == "yes") != *expected {
            wrong.push(format!(
                "can-i {verb} {resource} {flags:?}: {answer}, expected {}",
                if *expected { "yes" } else { "no" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the chart's RBAC grants the wrong things:\n{}",
        wrong.join("\n")
    );

    // The control plane does its whole job with that token, under the chart's Lease name
    // (which names the status key Secret the Role lets it read).
    let options = Options {
        kubeconfig: kubeconfig.clone().into_os_string(),
        lease_name: CHART_LEASE_NAME.to_owned(),
        ..Options::new(&cluster, &namespace, "cp-sa")
    };
    let cp = ControlPlane::start_ready(&options).await;
    cp.wait_leader(K8S_SOON).await;
    let lease = Api::<Lease>::namespaced(admin.clone(), &namespace)
        .get(&options.lease_name)
        .await
        .expect("the control plane created its Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("cp-sa")
    );

    let rtc = RoutingConfigs::new(&admin, &namespace);
    let good = spec(
        "a",
        &[("acme", "b")],
        &[("a", "http://127.0.0.1:9/a"), ("b", "http://127.0.0.1:9/b")],
    );
    let uid = rtc.apply("routes", &good).await.uid().expect("uid");
    let obj = rtc.wait_for_accepted("routes", 1, "True").await;
    assert_eq!(
        obj.status
            .as_ref()
            .and_then(|s| s.snapshot.as_ref())
            .map(|s| s.version),
        Some(1)
    );
    rtc.wait_for_event(&uid, "Accepted", &condition_of(&obj, "Accepted").message)
        .await;
    cp.wait_served(&rtc.key("routes"), &uid, 1).await;

    let bad = spec("z", &[], &[("a", "http://127.0.0.1:9/a")]);
    rtc.apply("routes", &bad).await;
    let obj = rtc.wait_for_accepted("routes", 2, "False").await;
    rtc.wait_for_event(&uid, "Rejected", &condition_of(&obj, "Accepted").message)
        .await;
    assert_eq!(cp.reconciles("error").await, 0.0);
    assert!(
        cp.warnings().is_empty(),
        "the control plane warned: {:?}",
        cp.warnings()
    );

    // And the token really cannot do more than that.
    let sa = client_for(&[kubeconfig]).await;
    let sa_rtc: Api<RoutingConfig> = Api::namespaced(sa.clone(), &namespace);
    let forbidden = |what: &str, result: Result<(), kube::Error>| match result {
        Err(e) if status_code(&e) == Some(403) => {}
        other => panic!("the ServiceAccount could {what}: {other:?}"),
    };
    let spec_patch = json!({
        "apiVersion": "cellroute.dev/v1alpha1",
        "kind": "RoutingConfig",
        "spec": {"defaultPlacement": "a", "placementToEndpoint": {"a": "http://127.0.0.1:9/a"}},
    });
    forbidden(
        "patch a RoutingConfig's spec",
        sa_rtc
            .patch(
                "routes",
                &PatchParams::apply(TEST_FIELD_MANAGER).force(),
                &Patch::Apply(&spec_patch),
            )
            .await
            .map(drop),
    );
    forbidden(
        "delete a RoutingConfig",
        sa_rtc.delete("routes", &DeleteParams::default()).await.map(drop),
    );
    let mut new_rtc: RoutingConfig = serde_json::from_value(json!({
        "apiVersion": "cellroute.dev/v1alpha1",
        "kind": "RoutingConfig",
        "metadata": {"name": "intruder"},
        "spec": {"defaultPlacement": "a", "placementToEndpoint": {"a": "http://127.0.0.1:9/a"}},
    }))
    .expect("RoutingConfig");
    new_rtc.metadata.namespace = Some(namespace.clone());
    forbidden(
        "create a RoutingConfig",
        sa_rtc.create(&PostParams::default(), &new_rtc).await.map(drop),
    );
    forbidden(
        "list Secrets",
        Api::<Secret>::namespaced(sa.clone(), &namespace)
            .list(&ListParams::default())
            .await
            .map(drop),
    );

    // Cluster-scoped leftovers of this test; the namespace stays (it cannot be finalized here).
    cluster
        .kubectl_ok(
            &[
                "delete",
                &format!("clusterrole/{service_account}"),
                &format!("clusterrolebinding/{service_account}"),
                "--ignore-not-found",
            ],
            None,
        )
        .await;
}

/// Readiness means "the first list of RoutingConfigs is done": a control plane that may hold its
/// Lease but may not list RoutingConfigs (the chart's Role without its ClusterRole) must stay
/// unready and say why in its logs, rather than report ready with nothing loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cluster_role_the_control_plane_stays_unready() {
    let cluster = Cluster::from_env();
    let admin = cluster.client().await;
    cluster.install_crd(&admin).await;
    let namespace = cluster.namespace(&admin, "rbac-unready").await;
    let service_account = "cellroute-control-plane";
    let templates = ["templates/serviceaccount.yaml", "templates/role.yaml"];
    let rendered = render_chart(&cluster, "cellroute", &namespace, &templates).await;
    assert_eq!(
        kinds_of(&rendered),
        ["Role", "RoleBinding", "ServiceAccount"],
        "{rendered}"
    );
    cluster.apply_yaml(&rendered).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = token_kubeconfig(&cluster, service_account, &namespace, dir.path()).await;

    let options = Options {
        kubeconfig: kubeconfig.into_os_string(),
        lease_name: CHART_LEASE_NAME.to_owned(),
        ..Options::new(&cluster, &namespace, "cp-unready")
    };
    let cp = ControlPlane::start(&options).await;
    // The Role is enough to lead; listing RoutingConfigs is refused, so it never gets ready.
    cp.wait_leader(K8S_SOON).await;
    cp.wait_for_log("a log record of the refused list", K8S_SOON, |r| {
        r.to_string().contains("forbidden")
    })
    .await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let ready = cp.get("/readyz").await;
        assert_eq!(
            ready.status, 503,
            "ready without being allowed to list RoutingConfigs: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cp.get("/healthz").await.status, 200, "alive all the same");
}
