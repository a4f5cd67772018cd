//! The Helm chart: it lints, renders with default and non-default values, rejects bad values,
//! renders the PodDisruptionBudget only where `policy/v1` is served, and what it renders is
//! accepted by a real kube-apiserver (`kubectl apply --dry-run=server`).
//!
//! It needs helm and the API server that `scripts/test` provides, and fails without them.

use std::process::Command;

use cellroute_tests::k8s::{CHART, Cluster};

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
    "exampleApp.enabled=true",
    "--set",
    "dataPlane.fallbackConfigMap=routes-fallback",
];

fn helm(args: &[&str]) -> std::process::Output {
    let helm = std::env::var_os("CELLROUTE_HELM").unwrap_or_else(|| {
        panic!("CELLROUTE_HELM is not set: run tests/k8s/apiserver.sh install and scripts/test")
    });
    Command::new(helm).args(args).output().expect("helm runs")
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn template(extra: &[&str]) -> String {
    let mut args = vec!["template", "cellroute", CHART, "--namespace", "cellroute-system"];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

fn kinds(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn lints_with_default_and_non_default_values() {
    helm_ok(&["lint", "--strict", CHART]);
    let mut args = vec!["lint", "--strict", CHART];
    args.extend_from_slice(HA_VALUES);
    helm_ok(&args);
}

#[test]
fn renders_defaults_and_the_ha_tls_set() {
    let defaults = template(&[]);
    let mut found = kinds(&defaults);
    found.sort();
    assert_eq!(
        found,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    assert!(
        !defaults.contains("podAntiAffinity"),
        "one replica needs no anti-affinity"
    );

    let mut args: Vec<&str> = HA_VALUES.to_vec();
    args.extend_from_slice(&["--api-versions", "policy/v1/PodDisruptionBudget"]);
    let ha = template(&args);
    let found = kinds(&ha);
    for kind in ["PodDisruptionBudget", "ServiceMonitor"] {
        assert!(found.iter().any(|k| k == kind), "{kind} missing from {found:?}");
    }
    assert!(ha.contains("replicas: 3"));
    assert!(
        ha.contains("podAntiAffinity"),
        "several replicas spread over nodes"
    );
    assert!(ha.contains("--tls-cert=/etc/cellroute/tls/tls.crt"));
    assert!(ha.contains("scheme: HTTPS"), "probes follow TLS");
    // The sidecar, rendered from the named templates, follows the control plane over wss://.
    assert!(ha.contains("name: cellroute-data-plane"));
    assert!(ha.contains("--control-plane=wss://cellroute-control-plane.cellroute-system.svc:8090"));
    assert!(
        ha.contains("audience: cellroute"),
        "projected token for the control plane"
    );
    assert!(ha.contains("emptyDir"), "cache volume");
    assert!(ha.contains("name: routes-fallback"), "fallback ConfigMap");
}

#[test]
fn the_pdb_is_rendered_only_where_policy_v1_is_served() {
    let without = template(&["--set", "controlPlane.podDisruptionBudget.enabled=true"]);
    assert!(!kinds(&without).iter().any(|k| k == "PodDisruptionBudget"));
    let with = template(&[
        "--set",
        "controlPlane.podDisruptionBudget.enabled=true",
        "--api-versions",
        "policy/v1/PodDisruptionBudget",
    ]);
    assert!(kinds(&with).iter().any(|k| k == "PodDisruptionBudget"));
}

#[test]
fn bad_values_are_rejected_naming_the_value() {
    for (set, field) in [
        ("controlPlane.replicas=0", "replicas"),
        ("controlPlane.logFormat=xml", "logFormat"),
        ("controlPlane.tls.enabled=true", "secretName"),
        ("dataPlane.routingConfig=NoSlash", "routingConfig"),
        ("controlPlane.bogus=1", "bogus"),
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
            "exampleApp.enabled=true",
        ][..],
    ] {
        let mut args = vec!["template", "cellroute", CHART, "--namespace", namespace.as_str()];
        args.extend_from_slice(extra);
        let rendered = helm_ok(&args);
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
        ] {
            assert!(out.contains(kind), "{kind} not in the dry run:\n{out}");
        }
    }
}
