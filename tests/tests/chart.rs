//! The Helm chart: it lints, renders with default and non-default values, rejects bad values,
//! renders the PodDisruptionBudget only where `policy/v1` is served and the CRD's CEL rules only
//! where CEL is evaluated, gives the sidecar safe defaults, works as a dependency of an
//! application's chart (rendered and installed from a parent chart), installs and upgrades its
//! CRD with `helm upgrade`, and what it renders is accepted by a real kube-apiserver.
//!
//! It needs helm and the API server that `scripts/test` provides, and fails without them.

use std::path::Path;

use cellroute_tests::chart::{ParentChart, container, documents, helm, helm_ok, kinds, object, template};
use cellroute_tests::k8s::{CHART, Cluster, K8S_SOON, edit, unique_suffix};
use cellroute_tests::wait::eventually;
use serde_json::{Value, json};

/// A non-default install: HA replicas, TLS, PDB, ServiceMonitor and the example sidecar app.
const HA_VALUES: &[&str] = &[
    "--set",
    "controlPlane.replicas=3",
    "--set",
    "controlPlane.tls.enabled=true",
    "--set",
    "controlPlane.tls.secretName=cellroute-tls",
    "--set",
    "controlPlane.podDisruptionBudget.enabled=true",
    "--set",
    "controlPlane.serviceMonitor.enabled=true",
    "--set",
    "controlPlane.networkPolicy.enabled=true",
    "--set",
    "exampleApp.enabled=true",
    "--set",
    "dataPlane.fallbackConfigMap=routes-fallback",
];

/// The version of the API server of this run, as `helm install` would see it.
fn cluster_version() -> String {
    std::env::var("CELLROUTE_K8S_VERSION").unwrap_or_else(|_| {
        panic!("CELLROUTE_K8S_VERSION is not set: run the chart tests under scripts/test (it starts the API server)")
    })
}

fn render(extra: &[&str]) -> Vec<Value> {
    documents(&template("cellroute", "cellroute-system", extra))
}

/// The chart's appVersion, from its Chart.yaml.
fn app_version() -> String {
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(format!("{CHART}/Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml is YAML");
    chart["appVersion"].as_str().expect("appVersion").to_owned()
}

fn args_of(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

#[test]
fn lints_with_default_and_non_default_values() {
    helm_ok(&["lint", "--strict", CHART]);
    let mut args = vec!["lint", "--strict", CHART];
    args.extend_from_slice(HA_VALUES);
    helm_ok(&args);
    for set in [
        "controlPlane.watchNamespace=apps",
        "injection.certManager.enabled=true",
        "injection.enabled=false",
        "crds.install=false",
    ] {
        helm_ok(&["lint", "--strict", CHART, "--set", set]);
    }
    helm_ok(&[
        "lint",
        "--strict",
        CHART,
        "--set",
        "controlPlane.enabled=false",
        "--set",
        "dataPlane.controlPlaneUrl=ws://cp.cellroute-system.svc:8090",
    ]);
}

#[test]
fn renders_defaults_and_the_ha_tls_set() {
    let defaults = render(&[]);
    assert_eq!(
        kinds(&defaults),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "MutatingWebhookConfiguration",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
    let deployment = object(&defaults, "Deployment", None);
    assert!(
        deployment["spec"]["template"]["spec"]["affinity"].is_null(),
        "one replica needs no anti-affinity"
    );

    let mut args: Vec<&str> = HA_VALUES.to_vec();
    args.extend_from_slice(&["--api-versions", "policy/v1/PodDisruptionBudget"]);
    let ha = render(&args);
    let found = kinds(&ha);
    for kind in ["PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"] {
        assert!(found.iter().any(|k| k == kind), "{kind} missing from {found:?}");
    }
    let cp = object(&ha, "Deployment", Some("cellroute-control-plane"));
    assert_eq!(cp["spec"]["replicas"], 3);
    let pod = &cp["spec"]["template"]["spec"];
    assert!(
        pod["affinity"]["podAntiAffinity"].is_object(),
        "several replicas spread over nodes"
    );
    let control_plane = container(pod, "control-plane");
    assert!(args_of(control_plane).contains(&"--tls-cert=/etc/cellroute/tls/tls.crt".to_owned()));
    assert_eq!(
        control_plane["readinessProbe"]["httpGet"]["scheme"], "HTTPS",
        "probes follow TLS"
    );
    // The sidecar, rendered from the named templates, follows the control plane over wss://.
    let app = object(&ha, "Deployment", Some("cellroute-example-app"));
    let app_spec = &app["spec"]["template"]["spec"];
    let sidecar = container(app_spec, "cellroute-data-plane");
    assert!(
        args_of(sidecar)
            .contains(&"--control-plane=wss://cellroute-control-plane.cellroute-system.svc:8090".to_owned())
    );
    let volumes = app_spec["volumes"].to_string();
    assert!(
        volumes.contains(r#""audience":"cellroute""#),
        "projected token: {volumes}"
    );
    assert!(volumes.contains("emptyDir"), "cache volume: {volumes}");
    assert!(
        volumes.contains("routes-fallback"),
        "fallback ConfigMap: {volumes}"
    );
    // The NetworkPolicy admits the push port and the webhook port of the control plane's pods.
    let policy = object(&ha, "NetworkPolicy", None);
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "control-plane"
    );
    let ports: Vec<&Value> = policy["spec"]["ingress"]
        .as_array()
        .expect("ingress")
        .iter()
        .map(|rule| &rule["ports"][0]["port"])
        .collect();
    assert_eq!(ports, [&json!("http"), &json!("webhook")], "{policy}");
}

#[test]
fn the_pdb_is_rendered_only_where_policy_v1_is_served() {
    let without = render(&["--set", "controlPlane.podDisruptionBudget.enabled=true"]);
    assert!(!kinds(&without).iter().any(|k| k == "PodDisruptionBudget"));
    let with = render(&[
        "--set",
        "controlPlane.podDisruptionBudget.enabled=true",
        "--api-versions",
        "policy/v1/PodDisruptionBudget",
    ]);
    assert!(kinds(&with).iter().any(|k| k == "PodDisruptionBudget"));
}

/// `value` with every `x-kubernetes-validations` removed.
fn without_cel(mut value: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

#[test]
fn the_crd_is_a_template_with_cel_rules_only_where_the_server_evaluates_them() {
    let file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/routingconfig.yaml"))
            .expect("CRD file"),
    )
    .expect("CRD YAML");
    assert!(
        file.to_string().contains("x-kubernetes-validations"),
        "the CRD has CEL rules"
    );
    for (version, cel) in [
        ("1.20.2", false),
        ("1.24.0", false),
        ("1.25.0", true),
        ("1.33.1", true),
    ] {
        let docs = render(&[
            "--kube-version",
            version,
            "--show-only",
            "templates/crd-routingconfig.yaml",
        ]);
        let crd = object(
            &docs,
            "CustomResourceDefinition",
            Some("routingconfigs.cellroute.dev"),
        );
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "uninstall keeps the CRD"
        );
        assert_eq!(crd["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm");
        let expected = if cel {
            file["spec"].clone()
        } else {
            without_cel(file["spec"].clone())
        };
        assert_eq!(
            crd["spec"], expected,
            "Kubernetes {version}: the template's CRD differs from crds/routingconfig.yaml"
        );
    }
    let unkept = render(&[
        "--set",
        "crds.keep=false",
        "--show-only",
        "templates/crd-routingconfig.yaml",
    ]);
    assert!(object(&unkept, "CustomResourceDefinition", None)["metadata"]["annotations"].is_null());

    // The RoutingShard CRD, the same way (it has no CEL rules: what it is checked against lives
    // in another object).
    let shard_file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/routingshard.yaml"))
            .expect("CRD file"),
    )
    .expect("CRD YAML");
    for version in ["1.20.2", "1.33.1"] {
        let docs = render(&[
            "--kube-version",
            version,
            "--show-only",
            "templates/crd-routingshard.yaml",
        ]);
        let crd = object(
            &docs,
            "CustomResourceDefinition",
            Some("routingshards.cellroute.dev"),
        );
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "uninstall keeps the CRD"
        );
        assert_eq!(
            crd["spec"], shard_file["spec"],
            "Kubernetes {version}: the template's CRD differs from crds/routingshard.yaml"
        );
    }
    for off in ["crds.install=false", "controlPlane.enabled=false"] {
        let out = helm(&[
            "template",
            "cellroute",
            CHART,
            "--set",
            off,
            "--set",
            "dataPlane.controlPlaneUrl=ws://cp:8090",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let docs = documents(&String::from_utf8_lossy(&out.stdout));
        assert!(
            !kinds(&docs).iter().any(|k| k == "CustomResourceDefinition"),
            "--set {off}"
        );
    }
}

#[test]
fn the_sidecar_keeps_proxy_and_admin_on_loopback_and_drains_before_it_is_killed() {
    for (version, native) in [("1.28.0", false), ("1.29.0", true)] {
        let docs = render(&["--set", "exampleApp.enabled=true", "--kube-version", version]);
        let app = object(&docs, "Deployment", Some("cellroute-example-app"));
        let spec = &app["spec"]["template"]["spec"];
        let in_init = spec["initContainers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "cellroute-data-plane"));
        let in_containers = spec["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .any(|c| c["name"] == "cellroute-data-plane");
        assert_eq!(
            (in_init, in_containers),
            (native, !native),
            "Kubernetes {version}: {spec}"
        );
        let sidecar = container(spec, "cellroute-data-plane");
        assert_eq!(
            sidecar["restartPolicy"],
            if native { json!("Always") } else { Value::Null }
        );
        let args = args_of(sidecar);
        for arg in [
            "--listen=127.0.0.1:8080",
            "--admin-listen=127.0.0.1:9901",
            "--health-listen=0.0.0.0:9902",
            "--shutdown-delay=5s",
            "--shutdown-grace=20s",
        ] {
            assert!(args.contains(&arg.to_owned()), "{arg} missing: {args:?}");
        }
        assert!(
            !args
                .iter()
                .any(|a| a.contains("0.0.0.0:8080") || a.contains("0.0.0.0:9901")),
            "{args:?}"
        );
        assert_eq!(
            sidecar["ports"],
            json!([{"name": "cellroute-probe", "containerPort": 9902}])
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(sidecar[probe]["httpGet"]["port"], "cellroute-probe", "{probe}");
        }
        // The pod's grace covers the sidecar's delay and drain, with room to spare.
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    }
    let longer = render(&[
        "--set",
        "exampleApp.enabled=true",
        "--set",
        "dataPlane.shutdownDelaySeconds=10",
        "--set",
        "dataPlane.shutdownGraceSeconds=45",
        "--set",
        "dataPlane.nativeSidecar=false",
    ]);
    let app = object(&longer, "Deployment", Some("cellroute-example-app"));
    assert_eq!(
        app["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        60
    );
    assert!(
        args_of(container(
            &app["spec"]["template"]["spec"],
            "cellroute-data-plane"
        ))
        .contains(&"--shutdown-grace=45s".to_owned())
    );
}

#[test]
fn one_namespace_watched_means_a_role_there_instead_of_cluster_wide_access() {
    let docs = render(&["--set", "controlPlane.watchNamespace=apps"]);
    let cluster_role = object(&docs, "ClusterRole", None);
    let rules = cluster_role["rules"].to_string();
    assert!(!rules.contains("routingconfigs"), "{rules}");
    assert!(!rules.contains("events"), "{rules}");
    assert!(
        rules.contains("tokenreviews"),
        "TokenReview is cluster-scoped: {rules}"
    );
    let role = object(&docs, "Role", Some("cellroute-control-plane"));
    assert_eq!(role["metadata"]["namespace"], "apps");
    assert!(role["rules"].to_string().contains("routingconfigs/status"));
    let binding = object(&docs, "RoleBinding", Some("cellroute-control-plane"));
    assert_eq!(binding["subjects"][0]["namespace"], "cellroute-system");
    let cp = object(&docs, "Deployment", None);
    assert!(
        args_of(container(&cp["spec"]["template"]["spec"], "control-plane"))
            .contains(&"--namespace=apps".to_owned())
    );
    // On a cluster that labels namespaces with their name, only that namespace is injected.
    let on_121 = render(&[
        "--set",
        "controlPlane.watchNamespace=apps",
        "--kube-version",
        "1.21.0",
    ]);
    let webhook = object(&on_121, "MutatingWebhookConfiguration", None);
    assert!(
        webhook["webhooks"][1]["namespaceSelector"]["matchExpressions"]
            .to_string()
            .contains(r#""key":"kubernetes.io/metadata.name","operator":"In","values":["apps"]"#),
        "{webhook}"
    );
}

#[test]
fn injection_objects_self_managed_and_with_cert_manager() {
    let docs = render(&["--set", "injection.failurePolicy=Fail"]);
    let webhook = object(&docs, "MutatingWebhookConfiguration", Some("cellroute-inject"));
    let entries = webhook["webhooks"].as_array().expect("webhooks");
    assert_eq!(entries.len(), 2);
    for (entry, scope) in entries.iter().zip(["namespace", "pod"]) {
        assert_eq!(entry["failurePolicy"], "Fail");
        assert_eq!(entry["sideEffects"], "NoneOnDryRun");
        assert_eq!(
            entry["clientConfig"]["service"]["path"],
            format!("/inject/{scope}")
        );
        assert!(
            entry["clientConfig"]["caBundle"].is_null(),
            "the control plane sets the caBundle"
        );
        assert!(
            entry["objectSelector"].to_string().contains("disabled"),
            "its own pods are never sent"
        );
    }
    let cp = object(&docs, "Deployment", None);
    let pod = &cp["spec"]["template"]["spec"];
    assert_eq!(pod_label(cp, "cellroute.dev/inject"), "disabled");
    let args = args_of(container(pod, "control-plane"));
    for arg in [
        "--inject-listen=0.0.0.0:9443",
        "--inject-webhook-config=cellroute-inject",
        "--inject-cert-secret=cellroute-inject-tls",
        "--inject-cert-dns-names=cellroute-control-plane.cellroute-system.svc,cellroute-control-plane.cellroute-system.svc.cluster.local",
    ] {
        assert!(args.contains(&arg.to_owned()), "{arg} missing: {args:?}");
    }
    let leader = object(&docs, "Role", Some("cellroute-control-plane-leader"));
    assert!(
        leader["rules"]
            .to_string()
            .contains(r#""resourceNames":["cellroute-inject-tls"]"#),
        "{leader}"
    );
    let cluster_role = object(&docs, "ClusterRole", None);
    assert!(
        cluster_role["rules"]
            .to_string()
            .contains(r#""resourceNames":["cellroute-inject"]"#),
        "{cluster_role}"
    );

    let cm = render(&["--set", "injection.certManager.enabled=true"]);
    let found = kinds(&cm);
    assert!(
        found.iter().any(|k| k == "Certificate") && found.iter().any(|k| k == "Issuer"),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|k| k == "Secret"),
        "cert-manager writes the Secret: {found:?}"
    );
    let webhook = object(&cm, "MutatingWebhookConfiguration", None);
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "cellroute-system/cellroute-inject"
    );
    let args = args_of(container(
        &object(&cm, "Deployment", None)["spec"]["template"]["spec"],
        "control-plane",
    ));
    assert!(
        args.contains(&"--inject-tls-cert=/etc/cellroute/inject-tls/tls.crt".to_owned()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--inject-cert-secret")),
        "{args:?}"
    );
    // With cert-manager the control plane never touches the injector's TLS Secret (the status
    // key Secret is another one, always needed).
    let rules = object(&cm, "Role", Some("cellroute-control-plane-leader"))["rules"].to_string();
    assert!(!rules.contains("inject-tls"), "{rules}");
    assert!(rules.contains("cellroute-control-plane-status-key"), "{rules}");
}

fn pod_label<'v>(deployment: &'v Value, key: &str) -> &'v Value {
    &deployment["spec"]["template"]["metadata"]["labels"][key]
}

#[test]
fn bad_values_are_rejected_naming_the_value() {
    for (set, field) in [
        ("controlPlane.replicas=0", "replicas"),
        ("controlPlane.logFormat=xml", "logFormat"),
        ("controlPlane.tls.enabled=true", "secretName"),
        ("dataPlane.routingConfig=NoSlash", "routingConfig"),
        ("controlPlane.bogus=1", "bogus"),
        ("injection.failurePolicy=Sometimes", "failurePolicy"),
        ("injection.url=http://127.0.0.1:9443", "url"),
        ("dataPlane.controlPlaneUrl=http://cp:8090", "controlPlaneUrl"),
        ("dataPlane.nativeSidecar=maybe", "nativeSidecar"),
        ("controlPlane.watchNamespace=Not_A_Namespace", "watchNamespace"),
        // A sidecar-only install must say which control plane to follow.
        ("controlPlane.enabled=false", "controlPlaneUrl"),
    ] {
        let out = helm(&["template", "cellroute", CHART, "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            stderr.contains(field),
            "--set {set}: error does not name `{field}`:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn rendered_manifests_are_accepted_by_the_apiserver() {
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    let namespace = cluster.namespace(&client, "chart").await;
    let version = cluster_version();
    let watch = format!("controlPlane.watchNamespace={namespace}");
    for extra in [
        &[][..],
        &[
            "--set",
            "controlPlane.replicas=3",
            "--set",
            "controlPlane.tls.enabled=true",
            "--set",
            "controlPlane.tls.secretName=cellroute-tls",
            "--set",
            "controlPlane.networkPolicy.enabled=true",
            "--set",
            watch.as_str(),
            "--set",
            "exampleApp.enabled=true",
        ][..],
    ] {
        // As `helm install` renders for this cluster: its version decides the CRD's CEL rules.
        let mut args = vec!["--kube-version", version.as_str()];
        args.extend_from_slice(extra);
        let rendered = template(&format!("chart-{}", unique_suffix()), &namespace, &args);
        // The server checks every object against its real schema, admission and RBAC rules
        // without storing anything. (ServiceMonitor needs the Prometheus Operator's CRD, which a
        // bare apiserver lacks; it is checked by rendering above.)
        let out = cluster
            .kubectl_ok(
                &["apply", "--dry-run=server", "-n", namespace.as_str(), "-f", "-"],
                Some(&rendered),
            )
            .await;
        for kind in [
            "deployment.apps",
            "service",
            "serviceaccount",
            "clusterrole.rbac.authorization.k8s.io",
            "customresourcedefinition.apiextensions.k8s.io",
            "mutatingwebhookconfiguration.admissionregistration.k8s.io",
        ] {
            assert!(out.contains(kind), "{kind} not in the dry run:\n{out}");
        }
    }
}

/// The README's recipe, from an application's chart: the dependency renders only the sidecar
/// (no second control plane, RBAC or CRD), reads its own values, tags its image from
/// cellroute's appVersion, accepts Helm's `global`, follows the control plane it is told to,
/// and the result installs on the real API server.
#[tokio::test]
async fn an_application_chart_adds_the_sidecar_with_the_named_templates() {
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    let namespace = cluster.namespace(&client, "parent").await;
    let url = "wss://cellroute-control-plane.cellroute-system.svc:8090";
    let parent = ParentChart::create(&format!(
        "image: registry.k8s.io/pause:3.9\nglobal:\n  imageRegistry: example.com\ncellroute:\n  controlPlane:\n    enabled: false\n  dataPlane:\n    controlPlaneUrl: {url}\n    routingConfig: shared/routes\n"
    ));
    let rendered = helm_ok(&[
        "template",
        "web",
        parent.arg(),
        "--namespace",
        &namespace,
        "--kube-version",
        &cluster_version(),
    ]);
    let docs = documents(&rendered);
    assert_eq!(
        kinds(&docs),
        ["Deployment"],
        "the dependency must render nothing of its own:\n{rendered}"
    );
    let spec = &docs[0]["spec"]["template"]["spec"];
    let sidecar = container(spec, "cellroute-data-plane");
    assert_eq!(
        sidecar["image"],
        format!("ghcr.io/cellroute/data-plane:{}", app_version()),
        "tagged from cellroute's appVersion, not the parent's"
    );
    assert!(args_of(sidecar).contains(&format!("--control-plane={url}")));
    assert_eq!(
        sidecar["env"][2]["value"], "shared/routes",
        "cellroute's own values"
    );
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert!(spec["volumes"].to_string().contains(r#""audience":"cellroute""#));

    // Installed on the API server (no kubelet runs it; the stored Deployment is what counts).
    let kubeconfig = cluster
        .kubeconfig()
        .to_str()
        .expect("UTF-8 KUBECONFIG")
        .to_owned();
    helm_ok(&[
        "install",
        "web",
        parent.arg(),
        "--namespace",
        &namespace,
        "--kubeconfig",
        &kubeconfig,
        "--wait=false",
    ]);
    let stored: Value = serde_json::from_str(
        &cluster
            .kubectl_ok(
                &["get", "deployment", "web-web", "-n", &namespace, "-o", "json"],
                None,
            )
            .await,
    )
    .expect("JSON");
    let stored_sidecar = container(&stored["spec"]["template"]["spec"], "cellroute-data-plane");
    assert_eq!(stored_sidecar["image"], sidecar["image"]);
    helm_ok(&[
        "uninstall",
        "web",
        "--namespace",
        &namespace,
        "--kubeconfig",
        &kubeconfig,
    ]);

    // The same dependency with its control plane on renders one, and the parent's own values
    // still do not leak into it.
    let full = ParentChart::create("image: registry.k8s.io/pause:3.9\n");
    let docs = documents(&helm_ok(&["template", "web", full.arg(), "--namespace", "apps"]));
    let found = kinds(&docs);
    for kind in [
        "ClusterRole",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
    ] {
        assert!(found.iter().any(|k| k == kind), "{kind} missing: {found:?}");
    }
    let web = object(&docs, "Deployment", Some("web-web"));
    assert!(
        args_of(container(
            &web["spec"]["template"]["spec"],
            "cellroute-data-plane"
        ))
        .contains(&"--control-plane=ws://web-control-plane.apps.svc:8090".to_owned())
    );
}

/// Copies `charts/cellroute` into `dir`, with the CRD renamed into a group of its own (so this
/// test never touches the RoutingConfig CRD the other tests share), and returns the copy.
fn chart_with_own_crd(dir: &Path, group: &str, edit: impl Fn(String) -> String) -> String {
    let copy = dir.join("cellroute");
    let status = std::process::Command::new("cp")
        .args(["-r", CHART, copy.to_str().expect("UTF-8")])
        .status()
        .expect("cp runs");
    assert!(status.success());
    let crd_path = copy.join("templates/crd-routingconfig.yaml");
    let crd = std::fs::read_to_string(&crd_path).expect("the CRD template");
    let renamed = crd
        .replace("routingconfigs.cellroute.dev", &format!("routingconfigs.{group}"))
        .replace("group: cellroute.dev", &format!("group: {group}"))
        .replace("- rtc\n", "- rtctest\n");
    assert_ne!(renamed, crd);
    std::fs::write(&crd_path, edit(renamed)).expect("write the CRD template");
    let shard_path = copy.join("templates/crd-routingshard.yaml");
    let shard = std::fs::read_to_string(&shard_path).expect("the RoutingShard CRD template");
    let renamed = shard
        .replace("routingshards.cellroute.dev", &format!("routingshards.{group}"))
        .replace("group: cellroute.dev", &format!("group: {group}"))
        .replace("- rts\n", "- rtstest\n");
    assert_ne!(renamed, shard);
    std::fs::write(&shard_path, renamed).expect("write the RoutingShard CRD template");
    copy.display().to_string()
}

/// Helm installs the CRD as a template on the 1.20 API server (no CEL there), `helm upgrade`
/// changes it, and `helm uninstall` keeps it.
#[tokio::test]
async fn helm_installs_upgrades_and_keeps_the_crd() {
    let cluster = Cluster::from_env();
    let client = cluster.client().await;
    let namespace = cluster.namespace(&client, "crd-upgrade").await;
    let suffix = unique_suffix();
    let group = format!("t{suffix}.test.cellroute.dev");
    let crd_name = format!("routingconfigs.{group}");
    let release = format!("crd-{suffix}");
    let kubeconfig = cluster
        .kubeconfig()
        .to_str()
        .expect("UTF-8 KUBECONFIG")
        .to_owned();
    let dir = tempfile::tempdir().expect("temporary directory");
    let base = [
        "--namespace",
        namespace.as_str(),
        "--kubeconfig",
        kubeconfig.as_str(),
        "--set",
        "injection.enabled=false",
    ];

    let v1 = chart_with_own_crd(&dir.path().join("v1").tap_mkdir(), &group, |t| t);
    let mut args = vec!["install", release.as_str(), v1.as_str()];
    args.extend_from_slice(&base);
    helm_ok(&args);
    let columns = |crd: &Value| -> Vec<String> {
        crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("printer columns")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let get_crd = || async {
        serde_json::from_str::<Value>(
            &cluster
                .kubectl_ok(&["get", "crd", &crd_name, "-o", "json"], None)
                .await,
        )
        .expect("JSON")
    };
    let stored = get_crd().await;
    assert_eq!(
        columns(&stored),
        ["Accepted", "Version", "Synced", "Rollout", "Shards", "Age"]
    );
    assert_eq!(
        stored["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );

    // The next chart version adds a printer column: `helm upgrade` applies it.
    let v2 = chart_with_own_crd(&dir.path().join("v2").tap_mkdir(), &group, |t| {
        // `edit` fails when the text to replace is not there: the upgrade must change something.
        edit(
            &t,
            &[(
                "  - additionalPrinterColumns:\n",
                "  - additionalPrinterColumns:\n    - jsonPath: .status.observedGeneration\n      name: Observed\n      type: integer\n",
            )],
        )
    });
    let mut args = vec!["upgrade", release.as_str(), v2.as_str()];
    args.extend_from_slice(&base);
    helm_ok(&args);
    eventually("the upgraded CRD", K8S_SOON, || async {
        let crd = get_crd().await;
        if columns(&crd).first().map(String::as_str) == Some("Observed") {
            Ok(())
        } else {
            Err(format!("columns {:?}", columns(&crd)))
        }
    })
    .await;

    // Uninstalled: the CRD (and so every RoutingConfig) stays.
    helm_ok(&[
        "uninstall",
        &release,
        "--namespace",
        &namespace,
        "--kubeconfig",
        &kubeconfig,
    ]);
    let kept = get_crd().await;
    assert_eq!(kept["metadata"]["name"], crd_name.as_str());
    let shard_crd = format!("routingshards.{group}");
    cluster.kubectl_ok(&["get", "crd", &shard_crd], None).await;
    cluster
        .kubectl_ok(&["delete", "crd", &crd_name, &shard_crd, "--wait=false"], None)
        .await;
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).expect("create a directory");
        self
    }
}
