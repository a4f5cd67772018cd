//! The control plane runs under a ServiceAccount bound to exactly the RBAC the Helm chart ships,
//! not as the cluster admin: this proves the chart grants enough, and no more.
//!
//! It needs the API server that `scripts/test` starts (and helm, which `tests/k8s/apiserver.sh
//! install` fetches), and fails without them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cellroute_tests::chart::{container, documents, kinds, object, template};
use cellroute_tests::control_plane::{ControlPlane, Options};
use cellroute_tests::k8s::{
    CHART_LEASE_NAME, Cluster, K8S_SOON, RBAC_TEMPLATES, RoutingConfigs, TEST_FIELD_MANAGER, client_for,
    condition_of, render_chart, spec, status_code, unique_suffix, write_token_kubeconfig,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use routing_model::crd::RoutingConfig;
use serde_json::{Value, json};

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

/// Asks the API server's authorizer each question of `table` about `user` (`kubectl auth can-i
/// --as`), with the placeholders of `names` (`("NS", "rbac-1234")`) in the flags replaced, and
/// returns the answers that differ from the expected ones.
async fn wrong_permissions(
    cluster: &Cluster,
    user: &str,
    table: &[(&str, &str, &[&str], bool)],
    names: &[(&str, &str)],
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (verb, resource, flags, expected) in table {
        let mut args = vec!["auth", "can-i", *verb, *resource, "--as", user];
        args.extend(flags.iter().map(|f| {
            names
                .iter()
                .find(|(placeholder, _)| placeholder == f)
                .map_or(*f, |(_, name)| *name)
        }));
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
    wrong
}
/// The control plane's whole job, done with the token it runs under: it leads (its Lease, in
/// `lease_namespace`, names `holder`), accepts a good RoutingConfig in `namespace` and serves
/// it, rejects a bad edit, records both as Events, and neither fails a reconcile nor warns.
/// Returns the good spec.
async fn does_its_job(
    cp: &ControlPlane,
    admin: &kube::Client,
    lease_namespace: &str,
    lease_name: &str,
    holder: &str,
    namespace: &str,
) -> Value {
    cp.wait_leader(K8S_SOON).await;
    let lease = Api::<Lease>::namespaced(admin.clone(), lease_namespace)
        .get(lease_name)
        .await
        .expect("the control plane created its Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(holder)
    );

    let rtc = RoutingConfigs::new(admin, namespace);
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
    good
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
    let wrong = wrong_permissions(&cluster, &user, PERMISSIONS, &[("NS", &namespace)]).await;
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
    does_its_job(&cp, &admin, &namespace, &options.lease_name, "cp-sa", &namespace).await;

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

/// `kubectl auth can-i` questions about the control plane's ServiceAccount when the chart is
/// installed with `controlPlane.watchNamespace`: `NS` is the release namespace (Lease, status
/// key), `W` the watched namespace, `OTHER` any other namespace.
const WATCHED_PERMISSIONS: &[(&str, &str, &[&str], bool)] = &[
    // What it needs: RoutingConfigs, their status and Events in the watched namespace ...
    ("get", "routingconfigs.cellroute.dev", &["-n", "W"], true),
    ("list", "routingconfigs.cellroute.dev", &["-n", "W"], true),
    ("watch", "routingconfigs.cellroute.dev", &["-n", "W"], true),
    (
        "patch",
        "routingconfigs.cellroute.dev",
        &["--subresource=status", "-n", "W"],
        true,
    ),
    ("create", "events.events.k8s.io", &["-n", "W"], true),
    ("patch", "events.events.k8s.io", &["-n", "W"], true),
    // ... TokenReviews, and its Leases and status key in its own namespace, as cluster-wide.
    ("create", "tokenreviews.authentication.k8s.io", &[], true),
    ("get", "leases.coordination.k8s.io", &["-n", "NS"], true),
    ("create", "leases.coordination.k8s.io", &["-n", "NS"], true),
    ("patch", "leases.coordination.k8s.io", &["-n", "NS"], true),
    ("list", "leases.coordination.k8s.io", &["-n", "NS"], true),
    ("delete", "leases.coordination.k8s.io", &["-n", "NS"], true),
    ("create", "secrets", &["-n", "NS"], true),
    (
        "get",
        "secrets/cellroute-control-plane-status-key",
        &["-n", "NS"],
        true,
    ),
    // Nothing about RoutingConfigs or Events beyond the watched namespace.
    (
        "list",
        "routingconfigs.cellroute.dev",
        &["--all-namespaces"],
        false,
    ),
    ("list", "routingconfigs.cellroute.dev", &["-n", "NS"], false),
    ("get", "routingconfigs.cellroute.dev", &["-n", "OTHER"], false),
    ("list", "routingconfigs.cellroute.dev", &["-n", "OTHER"], false),
    ("watch", "routingconfigs.cellroute.dev", &["-n", "OTHER"], false),
    (
        "patch",
        "routingconfigs.cellroute.dev",
        &["--subresource=status", "-n", "OTHER"],
        false,
    ),
    (
        "patch",
        "routingconfigs.cellroute.dev",
        &["--subresource=status", "-n", "NS"],
        false,
    ),
    ("create", "events.events.k8s.io", &["-n", "OTHER"], false),
    ("create", "events.events.k8s.io", &["-n", "NS"], false),
    ("create", "events.events.k8s.io", &["--all-namespaces"], false),
    // And no more in the watched namespace than the cluster-wide install grants anywhere.
    ("create", "routingconfigs.cellroute.dev", &["-n", "W"], false),
    ("patch", "routingconfigs.cellroute.dev", &["-n", "W"], false),
    ("delete", "routingconfigs.cellroute.dev", &["-n", "W"], false),
    (
        "update",
        "routingconfigs.cellroute.dev",
        &["--subresource=status", "-n", "W"],
        false,
    ),
    ("delete", "events.events.k8s.io", &["-n", "W"], false),
    ("get", "secrets", &["-n", "W"], false),
    ("get", "leases.coordination.k8s.io", &["-n", "W"], false),
    ("*", "*", &["--all-namespaces"], false),
];

/// With `controlPlane.watchNamespace`, the chart moves the RoutingConfig and Event rules from its
/// ClusterRole to a Role in the watched namespace. The control plane, run as the chart's
/// Deployment runs it (`--namespace` the watched one, its Lease in the release namespace), does
/// its whole job there under exactly that RBAC: it leads, reconciles, patches status and records
/// Events; its token is refused everywhere else, and a control plane pointed at another
/// namespace with it never gets ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_watched_namespace_the_control_plane_works_under_a_role_there_and_nowhere_else() {
    let cluster = Cluster::from_env();
    let admin = cluster.client().await;
    cluster.install_crd(&admin).await;
    let namespace = cluster.namespace(&admin, "rbac-release").await;
    let watched = cluster.namespace(&admin, "rbac-watched").await;
    let other = cluster.namespace(&admin, "rbac-other").await;
    let release = format!("rbac-{}", unique_suffix());
    let service_account = format!("{release}-control-plane");
    let watch_value = format!("controlPlane.watchNamespace={watched}");

    let mut args = vec!["--set", watch_value.as_str()];
    for t in RBAC_TEMPLATES.iter().chain(["templates/deployment.yaml"].iter()) {
        args.extend(["--show-only", *t]);
    }
    let docs = documents(&template(&release, &namespace, &args));
    let (deployment, rbac): (Vec<Value>, Vec<Value>) =
        docs.into_iter().partition(|d| d["kind"] == "Deployment");
    assert_eq!(
        kinds(&rbac),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "ServiceAccount"
        ]
    );
    let cluster_role = object(&rbac, "ClusterRole", None);
    for rule in cluster_role["rules"].as_array().expect("rules") {
        let resources = rule["resources"].to_string();
        assert!(
            !resources.contains("routingconfigs") && !resources.contains("events"),
            "the ClusterRole still grants {rule} cluster-wide"
        );
    }
    let role = object(&rbac, "Role", Some(&service_account));
    assert_eq!(role["metadata"]["namespace"], watched.as_str(), "{role}");
    // The chart's control plane watches that namespace only.
    let cp_args = container(
        &object(&deployment, "Deployment", None)["spec"]["template"]["spec"],
        "control-plane",
    )["args"]
        .clone();
    assert!(
        cp_args
            .as_array()
            .expect("args")
            .contains(&Value::from(format!("--namespace={watched}"))),
        "{cp_args}"
    );
    let rendered: Vec<&Value> = rbac.iter().collect();
    cluster
        .apply_yaml(&json!({"apiVersion": "v1", "kind": "List", "items": rendered}).to_string())
        .await;

    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = token_kubeconfig(&cluster, &service_account, &namespace, dir.path()).await;
    let user = format!("system:serviceaccount:{namespace}:{service_account}");
    let names = [
        ("NS", namespace.as_str()),
        ("W", watched.as_str()),
        ("OTHER", other.as_str()),
    ];
    let wrong = wrong_permissions(&cluster, &user, WATCHED_PERMISSIONS, &names).await;
    assert!(
        wrong.is_empty(),
        "the chart's RBAC for controlPlane.watchNamespace grants the wrong things:\n{}",
        wrong.join("\n")
    );

    // The control plane as the chart runs it, with that token.
    let options = Options {
        kubeconfig: kubeconfig.clone().into_os_string(),
        lease_namespace: Some(namespace.clone()),
        lease_name: CHART_LEASE_NAME.to_owned(),
        ..Options::new(&cluster, &watched, "cp-watched")
    };
    let cp = ControlPlane::start_ready(&options).await;
    let good = does_its_job(&cp, &admin, &namespace, CHART_LEASE_NAME, "cp-watched", &watched).await;

    // Elsewhere the token is refused: RoutingConfigs of another namespace (or of all), their
    // status, and Events there.
    let elsewhere = RoutingConfigs::new(&admin, &other);
    elsewhere.apply("routes", &good).await;
    let sa = client_for(&[kubeconfig]).await;
    let forbidden = |what: String, result: Result<(), kube::Error>| match result {
        Err(e) if status_code(&e) == Some(403) => {}
        other => panic!("the ServiceAccount could {what}: {other:?}"),
    };
    for ns in [other.as_str(), namespace.as_str()] {
        let api: Api<RoutingConfig> = Api::namespaced(sa.clone(), ns);
        forbidden(
            format!("list RoutingConfigs in {ns}"),
            api.list(&ListParams::default()).await.map(drop),
        );
    }
    forbidden(
        "list RoutingConfigs of all namespaces".to_owned(),
        Api::<RoutingConfig>::all(sa.clone())
            .list(&ListParams::default())
            .await
            .map(drop),
    );
    forbidden(
        format!("patch the status of {other}/routes"),
        Api::<RoutingConfig>::namespaced(sa.clone(), &other)
            .patch_status(
                "routes",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"observedGeneration": 1}})),
            )
            .await
            .map(drop),
    );
    let event: Event = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": "intruder-"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "cellroute-control-plane",
        "reportingInstance": "cp-watched",
        "action": "Reconcile",
        "reason": "Accepted",
        "type": "Normal",
        "regarding": {"apiVersion": "cellroute.dev/v1alpha1", "kind": "RoutingConfig", "namespace": other, "name": "routes"},
    }))
    .expect("an Event");
    forbidden(
        format!("create an Event in {other}"),
        Api::<Event>::namespaced(sa.clone(), &other)
            .create(&PostParams::default(), &event)
            .await
            .map(drop),
    );
    assert!(
        elsewhere.get("routes").await.status.is_none(),
        "something wrote the status of {other}/routes"
    );

    // A control plane pointed at another namespace with this token is refused its list, and so
    // never reports ready.
    let stray = ControlPlane::start(&Options {
        namespace: other.clone(),
        identity: "cp-stray".to_owned(),
        ..options.clone()
    })
    .await;
    stray
        .wait_for_log("a log record of the refused list", K8S_SOON, |r| {
            r.to_string().contains("forbidden")
        })
        .await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let ready = stray.get("/readyz").await;
        assert_eq!(
            ready.status, 503,
            "ready without being allowed to list RoutingConfigs in {other}: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
