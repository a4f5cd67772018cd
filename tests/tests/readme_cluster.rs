//! The README's "On a cluster" section, run as written: the fenced `sh` block under that heading
//! is read from `README.md` when the test runs (so an edit to the README is what is tested) and
//! handed to `bash -euo pipefail` unchanged: `helm install` of `charts/cellroute`, the
//! annotation patched into a Deployment's pod template, `kubectl apply -f
//! examples/routing.yaml`, `kubectl wait --for=condition=Synced rtc/routes`, `kubectl get rtc`.
//! It passes only if the sidecar that the injector added to the Deployment's new pod really
//! subscribed to the control plane the chart installed and applied the version.
//!
//! What is not as on a real cluster, and how it stands in:
//! - **The cluster** is a test's own 1.20 API server with kube-controller-manager running the
//!   `deployment`, `replicaset` and `endpoint` controllers ([`OwnCluster`]): cluster-scoped
//!   names (the release `cellroute`, its webhook, the namespace `default`) would collide with
//!   the parallel tests of the shared cluster, whose hand-made ReplicaSets a controller-manager
//!   would also disturb.
//! - **The kubelet, scheduler, kube-proxy and cluster DNS** are [`Kubelet`]: it binds the pods
//!   to its node, runs each container's image as the workspace binary of that name
//!   (`registry.example.com/cellroute/control-plane:0.1.0` is `control-plane`, the pause image
//!   runs nothing) with the container's stored args and env in a network namespace of the pod's
//!   own, gives projected ServiceAccount tokens from the TokenRequest API (bound to the pod,
//!   with the volume's audience), maps volume mount paths to directories of the pod's own,
//!   reports `podIP` and `Ready` from the containers' real readiness probes, and writes each
//!   pod's `/etc/hosts` from the Services' Endpoints (the emulated cluster DNS: the sidecar's
//!   `cellroute-control-plane.cellroute-system.svc` resolves to the control plane pod). The
//!   control plane's API credentials come through `KUBECONFIG` (a token of its ServiceAccount
//!   bound to its pod) instead of the in-cluster mount. The API server calls the webhook
//!   through the Service's Endpoints (`--enable-aggregator-routing`), as no kube-proxy serves
//!   its ClusterIP.
//! - **The shell**: the block runs from the repository root (so `charts/cellroute` and
//!   `examples/routing.yaml` are the checked-out ones) with the kubectl and helm that
//!   `tests/k8s/apiserver.sh install` fetched first on `PATH`, `KUBECONFIG` of the test's
//!   cluster, and a `HOME` of its own.
//! - **The user's app**: the README patches an existing Deployment `web` in `default`; the test
//!   creates it first (a pause container, with a ServiceAccount of its own) and waits until it
//!   runs, as a user's app would.
//!
//! It needs root (network namespaces), `ip`, and the binaries of `tests/k8s/apiserver.sh
//! install` (kube-apiserver, kube-controller-manager, etcd, kubectl, helm).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cellroute_tests::inject::annotation;
use cellroute_tests::k8s::{K8S_POLL, condition_of};
use cellroute_tests::kubelet::Kubelet;
use cellroute_tests::own_cluster::OwnCluster;
use cellroute_tests::wait::eventually_every;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use routing_model::crd::RoutingConfig;
use serde_json::json;

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The section whose first `sh` block is run.
const SECTION: &str = "## On a cluster";

/// How long the whole block may take (the chart's control plane starts, a Deployment rolls out,
/// a sidecar subscribes): generous, since it only costs time when something is broken.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// The first fenced `sh` block after the heading `SECTION` of `readme`.
fn cluster_block(readme: &str) -> String {
    let section = readme
        .split_once(&format!("\n{SECTION}\n"))
        .unwrap_or_else(|| panic!("README.md has no heading {SECTION:?}"))
        .1;
    let body = section
        .split_once("\n```sh\n")
        .unwrap_or_else(|| panic!("no ```sh block under {SECTION:?}"))
        .1;
    body.split_once("\n```")
        .unwrap_or_else(|| panic!("the ```sh block under {SECTION:?} does not end"))
        .0
        .to_owned()
}

/// The user's existing application.
fn web_deployment() -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "serviceAccountName": "web",
                    "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.9"}],
                },
            },
        },
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `block` with bash from the repository root, with `tools` first on `PATH`.
fn run_block(block: &str, tools: &Path, kubeconfig: &str, home: &Path) -> Output {
    Command::new("timeout")
        .arg(BLOCK_TIMEOUT.as_secs().to_string())
        .args(["bash", "-euo", "pipefail", "-c", block])
        .current_dir(REPO)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", tools.display()),
        )
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .output()
        .expect("run bash")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_cluster_section_works_verbatim() {
    let readme = std::fs::read_to_string(README).expect("read README.md");
    let block = cluster_block(&readme);
    assert!(block.contains("helm install"), "{block}");

    let own = OwnCluster::start(&["deployment", "replicaset", "endpoint"]).await;
    let cluster = own.cluster();
    let admin = cluster.client().await;
    let kubelet = Kubelet::start(cluster, "node-1").await;
    let fail = |what: &str| -> String {
        format!(
            "{what}\n{}\n---- kube-controller-manager ----\n{}",
            kubelet.report(60),
            own.controller_manager_log(30)
        )
    };

    // The user's app, running before cellroute arrives.
    cluster
        .kubectl_ok(&["create", "serviceaccount", "web", "-n", "default"], None)
        .await;
    cluster
        .kubectl_ok(&["apply", "-f", "-"], Some(&web_deployment().to_string()))
        .await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let web_pods = || async {
        pods.list(&ListParams::default().labels("app=web"))
            .await
            .map_err(|e| e.to_string())
            .map(|l| l.items)
    };
    eventually_every(
        "the app web to run",
        Duration::from_secs(60),
        K8S_POLL,
        || async {
            let web = deployments.get("web").await.map_err(|e| e.to_string())?;
            let available = web.status.as_ref().and_then(|s| s.available_replicas);
            if available == Some(1) {
                Ok(())
            } else {
                Err(fail(&format!("status: {:?}", web.status)))
            }
        },
    )
    .await;
    let before = web_pods().await.expect("list the app's pods");
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(annotation(&before[0], "cellroute.dev/injected").is_none());

    // The README's commands, as written.
    let tools = tempfile::tempdir().expect("temporary directory");
    std::os::unix::fs::symlink(cluster.kubectl_path(), tools.path().join("kubectl")).expect("link kubectl");
    std::os::unix::fs::symlink(cluster.helm_path().expect("helm"), tools.path().join("helm"))
        .expect("link helm");
    let home = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = cluster
        .kubeconfig()
        .to_str()
        .expect("UTF-8 KUBECONFIG")
        .to_owned();
    let (tools_dir, home_dir, script) = (tools.path().to_owned(), home.path().to_owned(), block.clone());
    let out = tokio::task::spawn_blocking(move || run_block(&script, &tools_dir, &kubeconfig, &home_dir))
        .await
        .expect("block task");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{}",
        fail(&format!(
            "the README's cluster block failed ({}):\n{block}\n---- stdout ----\n{stdout}\n---- stderr ----\n{stderr}",
            out.status
        ))
    );

    // `kubectl get rtc`, its last command: the one data plane applied the version.
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| {
            l.split_whitespace().collect::<Vec<_>>()
                == [
                    "NAME", "ACCEPTED", "VERSION", "SYNCED", "ROLLOUT", "SHARDS", "AGE",
                ]
        })
        .unwrap_or_else(|| panic!("no `kubectl get rtc` table in:\n{stdout}"));
    let row: Vec<&str> = lines
        .get(header + 1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        row.get(..5),
        Some(&["routes", "True", "1", "1/1", "0"][..]),
        "{stdout}"
    );
    let rtc = Api::<RoutingConfig>::namespaced(admin.clone(), "default")
        .get("routes")
        .await
        .expect("the RoutingConfig");
    let synced = condition_of(&rtc, "Synced");
    assert_eq!(
        (synced.status.as_str(), synced.observed_generation),
        ("True", Some(1)),
        "{synced:?}"
    );

    // The app's pods now carry the sidecar, added by the injector, and are ready: their
    // readiness includes the sidecar's /readyz, which needs an applied table.
    let after: Vec<Pod> = web_pods()
        .await
        .expect("list the app's pods")
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
    let pod = &after[0];
    assert_ne!(
        pod.metadata.uid, before[0].metadata.uid,
        "the pod was replaced by the rollout"
    );
    // The injector writes the cellroute version (the workspace shares one version).
    assert_eq!(
        annotation(pod, "cellroute.dev/injected"),
        Some(env!("CARGO_PKG_VERSION")),
        "{pod:?}"
    );
    let spec = pod.spec.as_ref().expect("spec");
    assert!(
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == "cellroute-data-plane"),
        "{spec:?}"
    );
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(
        ready,
        "{}",
        fail(&format!("the injected pod is not ready: {:?}", pod.status))
    );
    assert!(
        kubelet.errors().is_empty(),
        "{}",
        fail("the kubelet harness recorded errors")
    );
}
