//! Sidecar injection on the real API server (1.20 calls admission webhooks at an out-of-cluster
//! `clientConfig.url`; pods are stored, no kubelet runs them). The control plane runs under the
//! chart's ServiceAccount with the chart's flags (`tests/src/inject.rs`), and the tests read
//! back what the API server stored:
//!
//! - annotated pods, and pods of namespaces labelled `cellroute.dev/inject=enabled`, carry the
//!   sidecar, its token, cache volume, probes and a grace that covers its drain; the injected
//!   container is the one the chart's named templates render;
//! - unannotated pods, opted-out pods, disabled and unselected namespaces are untouched;
//! - bad annotations refuse the pod, naming the annotation; Events and metrics show each case;
//! - with the injector down, `Ignore` admits pods unmutated (the README's kubectl command finds
//!   them) and `Fail` refuses them;
//! - native sidecars go first in `initContainers`;
//! - the serving certificate is renewed while serving, and replicas share it.
//!
//! It needs the API server that `scripts/test` starts (and helm), and fails without them.

use std::time::Duration;

use cellroute_tests::chart::{container, object};
use cellroute_tests::inject::{InjectScene, SceneOptions, annotation, app_pod, container_names, review};
use cellroute_tests::k8s::{K8S_SOON, describe_events};
use cellroute_tests::process::field;
use cellroute_tests::push_k8s::KubeControlPlane;
use cellroute_tests::wait::eventually;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

const SIDECAR: &str = "cellroute-data-plane";

/// The columns of the README's command that finds pods admitted without the sidecar.
const FIND_UNINJECTED: &str = r"NAMESPACE:.metadata.namespace,NAME:.metadata.name,INJECT:.metadata.annotations.cellroute\.dev/inject,INJECTED:.metadata.annotations.cellroute\.dev/injected";

/// The injected sidecar as stored, as JSON.
fn stored_sidecar(pod: &Pod) -> Value {
    container(
        &serde_json::to_value(pod.spec.as_ref().expect("spec")).expect("JSON"),
        SIDECAR,
    )
    .clone()
}

/// The sidecar of the chart's example app rendered with the scene's values, as the API server
/// stores a pod template (defaults filled in), from a server-side dry run.
async fn named_template_sidecar(scene: &InjectScene, extra: &[&str]) -> Value {
    // For this cluster's version, as `helm install` would render it.
    let version =
        std::env::var("CELLROUTE_K8S_VERSION").expect("CELLROUTE_K8S_VERSION (scripts/test sets it)");
    let mut args = vec![
        "--set",
        "exampleApp.enabled=true",
        "--show-only",
        "templates/example-app.yaml",
        "--kube-version",
        version.as_str(),
    ];
    args.extend_from_slice(extra);
    let docs = scene.render(&args);
    let app = object(&docs, "Deployment", None);
    let out = scene
        .cluster
        .kubectl_ok(
            &[
                "create",
                "--dry-run=server",
                "-o",
                "json",
                "-n",
                &scene.namespace,
                "-f",
                "-",
            ],
            Some(&app.to_string()),
        )
        .await;
    let stored: Value = serde_json::from_str(&out).expect("JSON");
    container(&stored["spec"]["template"]["spec"], SIDECAR).clone()
}

/// Events in `namespace` about the object named `name`.
async fn events_about(scene: &InjectScene, namespace: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(scene.admin.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

async fn wait_event(scene: &InjectScene, namespace: &str, name: &str, reason: &str, says: &str) -> Event {
    eventually(&format!("an Event {reason} about {name}"), K8S_SOON, || async {
        let events = events_about(scene, namespace, name).await;
        events
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason) && e.note.as_deref().is_some_and(|n| n.contains(says))
            })
            .cloned()
            .ok_or_else(|| describe_events(&events))
    })
    .await
}

fn args(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_calls_the_injector_for_the_pods_that_ask_and_only_those() {
    let scene = InjectScene::start("inject", SceneOptions::default()).await;
    let by_pod = scene.namespace_for("inject-pod", &[]).await;
    let by_ns = scene
        .namespace_for("inject-ns", &[("cellroute.dev/inject", "enabled")])
        .await;
    let disabled = scene
        .namespace_for("inject-off", &[("cellroute.dev/inject", "disabled")])
        .await;
    // Not in the webhook's reach at all (no run label): as any other namespace of a cluster.
    let elsewhere = scene.cluster.namespace(&scene.admin, "inject-elsewhere").await;
    let before = |r: &'static str| {
        let scene = &scene;
        async move { scene.injections(r).await }
    };
    let (injected0, denied0, opted0, skipped0) = (
        before("injected").await,
        before("denied").await,
        before("opted_out").await,
        before("not_requested").await,
    );

    // An annotated pod, created as a ReplicaSet's controller would: the stored pod carries the
    // sidecar, and the ReplicaSet gets an Event.
    let web = scene
        .owned_by_replica_set(
            &by_pod,
            "web",
            app_pod("web", &[("cellroute.dev/inject", "true")]),
        )
        .await;
    let pod = scene.create_pod(&by_pod, web).await.expect("created");
    assert_eq!(
        container_names(&pod),
        (vec!["app".to_owned(), SIDECAR.to_owned()], vec![]),
        "1.20: a plain sidecar"
    );
    assert_eq!(
        annotation(&pod, "cellroute.dev/injected"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(
        spec.termination_grace_period_seconds,
        Some(30),
        "5 s delay + 20 s grace + 5"
    );
    let volumes: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(volumes, ["cellroute-token", "cellroute-cache"]);
    let token = serde_json::to_value(&spec.volumes.as_ref().unwrap()[0]).expect("JSON");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "cellroute"
    );
    let sidecar = stored_sidecar(&pod);
    let a = args(&sidecar);
    for arg in [
        "--listen=127.0.0.1:8080",
        "--admin-listen=127.0.0.1:9901",
        "--health-listen=0.0.0.0:9902",
        "--shutdown-delay=5s",
        "--shutdown-grace=20s",
        "--token-file=/var/run/secrets/cellroute/token",
        "--cache-dir=/var/cache/cellroute",
    ] {
        assert!(a.contains(&arg), "{arg} missing: {a:?}");
    }
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], "cellroute-probe");
    assert_eq!(
        sidecar["env"][2],
        json!({"name": "CELLROUTE_ROUTING_CONFIG", "value": "$(POD_NAMESPACE)/routes"})
    );
    // The very container the chart's named templates render for the same values.
    assert_eq!(
        sidecar,
        named_template_sidecar(&scene, &[]).await,
        "injected and templated sidecars differ"
    );
    let event = wait_event(
        &scene,
        &by_pod,
        "web",
        "Injected",
        "injected the cellroute data-plane sidecar",
    )
    .await;
    assert!(
        event
            .note
            .as_deref()
            .unwrap_or_default()
            .contains(&format!("serving {by_pod}/routes")),
        "{event:?}"
    );

    // Per-pod annotations choose the RoutingConfig, the ports and the shutdown timing.
    let custom = app_pod(
        "custom",
        &[
            ("cellroute.dev/inject", "true"),
            ("cellroute.dev/routing-config", "edge"),
            ("cellroute.dev/proxy-port", "7000"),
            ("cellroute.dev/admin-port", "7001"),
            ("cellroute.dev/health-port", "7002"),
            ("cellroute.dev/shutdown-delay", "10s"),
            ("cellroute.dev/shutdown-grace", "1m"),
        ],
    );
    let pod = scene.create_pod(&by_pod, custom).await.expect("created");
    let sidecar = stored_sidecar(&pod);
    let a = args(&sidecar);
    for arg in [
        "--listen=127.0.0.1:7000",
        "--admin-listen=127.0.0.1:7001",
        "--health-listen=0.0.0.0:7002",
        "--shutdown-delay=10s",
        "--shutdown-grace=60s",
    ] {
        assert!(a.contains(&arg), "{arg} missing: {a:?}");
    }
    assert_eq!(sidecar["env"][2]["value"], "$(POD_NAMESPACE)/edge");
    assert_eq!(sidecar["ports"][0]["containerPort"], 7002);
    assert_eq!(
        pod.spec.as_ref().unwrap().termination_grace_period_seconds,
        Some(75)
    );

    // Unannotated: untouched.
    let plain = scene
        .create_pod(&by_pod, app_pod("plain", &[]))
        .await
        .expect("created");
    assert_eq!(container_names(&plain), (vec!["app".to_owned()], vec![]));
    assert_eq!(annotation(&plain, "cellroute.dev/injected"), None);
    assert!(plain.spec.as_ref().unwrap().volumes.is_none());

    // Values it cannot honour refuse the pod, naming the annotation.
    for (annotations, says) in [
        (&[("cellroute.dev/inject", "yes")][..], "cellroute.dev/inject"),
        // The application declares port 8000.
        (
            &[
                ("cellroute.dev/inject", "true"),
                ("cellroute.dev/proxy-port", "8000"),
            ][..],
            "cellroute.dev/proxy-port",
        ),
        (
            &[
                ("cellroute.dev/inject", "true"),
                ("cellroute.dev/routing-config", "$(HOME)"),
            ][..],
            "cellroute.dev/routing-config",
        ),
    ] {
        let err = scene
            .create_pod(&by_pod, app_pod("refused", annotations))
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(says) && text.contains("cellroute sidecar injection"),
            "{annotations:?}: {text}"
        );
    }

    // A namespace labelled enabled: every pod, unless it opts out (visible as an Event).
    let pod = scene
        .create_pod(&by_ns, app_pod("all", &[]))
        .await
        .expect("created");
    assert_eq!(container_names(&pod).0, ["app", SIDECAR]);
    let out = scene
        .owned_by_replica_set(
            &by_ns,
            "batch",
            app_pod("batch", &[("cellroute.dev/inject", "false")]),
        )
        .await;
    let pod = scene.create_pod(&by_ns, out).await.expect("created");
    assert_eq!(container_names(&pod).0, ["app"]);
    wait_event(&scene, &by_ns, "batch", "NotInjected", "opted out").await;

    // Disabled and unselected namespaces: untouched, annotation or not.
    for ns in [&disabled, &elsewhere] {
        let pod = scene
            .create_pod(ns, app_pod("asks", &[("cellroute.dev/inject", "true")]))
            .await
            .expect("created");
        assert_eq!(container_names(&pod).0, ["app"], "{ns}");
    }

    // Every pod the API server sent is counted by result (the others never reached it).
    let counted = |r: &'static str, from: f64, n: f64| {
        let scene = &scene;
        async move {
            eventually(
                &format!("cellroute_injections_total{{result={r}}} to grow by {n}"),
                K8S_SOON,
                || async {
                    let now = scene.injections(r).await;
                    if now - from == n {
                        Ok(())
                    } else {
                        Err(format!("{now} (from {from})"))
                    }
                },
            )
            .await;
        }
    };
    counted("injected", injected0, 3.0).await;
    counted("denied", denied0, 3.0).await;
    counted("opted_out", opted0, 1.0).await;
    counted("not_requested", skipped0, 1.0).await;
    // Nothing went wrong besides the refusals it was asked to make.
    let warnings: Vec<Value> = scene
        .cp()
        .logs()
        .records()
        .into_iter()
        .filter(|r| matches!(r["level"].as_str(), Some("WARN" | "ERROR")))
        .filter(|r| !r.to_string().contains("refused a pod"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    scene.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_injector_down_ignore_admits_pods_unmutated_and_fail_refuses_them() {
    let mut scene = InjectScene::start("inject-down", SceneOptions::default()).await;
    let ns = scene.namespace_for("inject-down-pods", &[]).await;
    let asks = |name: &str| app_pod(name, &[("cellroute.dev/inject", "true")]);
    let pod = scene.create_pod(&ns, asks("up")).await.expect("created");
    assert_eq!(container_names(&pod).0, ["app", SIDECAR]);

    scene.stop_control_plane();
    // failurePolicy Ignore (the chart's default): created, without the sidecar, and without the
    // annotation that marks injected pods.
    let pod = scene
        .create_pod(&ns, asks("down-ignored"))
        .await
        .expect("created while the injector is down");
    assert_eq!(container_names(&pod).0, ["app"]);
    assert_eq!(annotation(&pod, "cellroute.dev/injected"), None);
    // The README's way to find it: INJECT true, INJECTED <none> (the injected one shows the
    // version).
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let command = format!("kubectl get pods -A -o custom-columns='{FIND_UNINJECTED}'");
    assert!(readme.contains(&command), "README.md no longer shows {command}");
    let table = scene
        .cluster
        .kubectl_ok(
            &[
                "get",
                "pods",
                "-A",
                "-o",
                &format!("custom-columns={FIND_UNINJECTED}"),
            ],
            None,
        )
        .await;
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&ns) && cols.get(1).map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no row for {ns}/{name} in:\n{table}"))
    };
    assert_eq!(row("down-ignored")[2..], ["true", "<none>"], "{table}");
    assert_eq!(row("up")[2..], ["true", env!("CARGO_PKG_VERSION")], "{table}");

    // failurePolicy Fail: refused while the injector is down.
    let docs = scene.render(&[
        "--set",
        "injection.failurePolicy=Fail",
        "--show-only",
        "templates/injection.yaml",
    ]);
    let webhook = object(&docs, "MutatingWebhookConfiguration", None);
    scene.cluster.apply_yaml(&webhook.to_string()).await;
    let err = eventually(
        "a pod to be refused with failurePolicy Fail",
        K8S_SOON,
        || async {
            match scene.create_pod(&ns, asks("down-failed")).await {
                Err(e) => Ok(e),
                Ok(pod) => {
                    let _ = Api::<Pod>::namespaced(scene.admin.clone(), &ns)
                        .delete("down-failed", &Default::default())
                        .await;
                    Err(format!("created: {:?}", container_names(&pod)))
                }
            }
        },
    )
    .await;
    let text = err.to_string();
    assert!(text.contains("pod.inject.cellroute.dev"), "{text}");
    // The caBundle the control plane wrote survived the re-apply (server-side apply keeps the
    // field another manager owns), and the restarted control plane injects again.
    scene.start_control_plane().await;
    let pod = scene.create_pod(&ns, asks("back")).await.expect("created");
    assert_eq!(container_names(&pod).0, ["app", SIDECAR]);
    scene.cleanup().await;
}

/// Native sidecars need Kubernetes 1.29 (1.20 refuses probes on init containers), so the
/// injector's answer is read directly, over HTTPS verified against the CA it published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_sidecar_goes_first_in_init_containers() {
    let scene = InjectScene::start(
        "inject-native",
        SceneOptions {
            native: Some("true"),
            ..Default::default()
        },
    )
    .await;
    let ca = scene.wait_ca_bundle().await;
    let mut pod = app_pod("native", &[("cellroute.dev/inject", "true")]);
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "registry.k8s.io/pause:3.9"}]);
    let (response, patch) = review(&scene.inject_addr, &ca, "/inject/pod", "apps", &pod).await;
    assert_eq!(response["allowed"], true, "{response}");
    let first = patch
        .iter()
        .find(|op| op["path"] == "/spec/initContainers/0")
        .unwrap_or_else(|| panic!("no sidecar first in initContainers: {patch:?} {response}"));
    assert_eq!(first["op"], "add");
    let sidecar = &first["value"];
    assert_eq!(sidecar["name"], SIDECAR);
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert!(
        !patch.iter().any(|op| op["path"] == "/spec/containers/-"),
        "{patch:?}"
    );
    // The named template's native form, as helm renders it, is the same container.
    let docs = scene.render(&[
        "--set",
        "exampleApp.enabled=true",
        "--set",
        "dataPlane.nativeSidecar=true",
    ]);
    let app = object(
        &docs,
        "Deployment",
        Some(&format!("{}-example-app", scene.release)),
    );
    assert_eq!(sidecar, container(&app["spec"]["template"]["spec"], SIDECAR));
    // An unannotated pod through the same door: allowed, no patch.
    let (response, patch) = review(
        &scene.inject_addr,
        &ca,
        "/inject/pod",
        "apps",
        &app_pod("plain", &[]),
    )
    .await;
    assert_eq!(
        (response["allowed"].clone(), patch.len()),
        (json!(true), 0),
        "{response}"
    );
    // A bad annotation: refused with the annotation named.
    let (response, _) = review(
        &scene.inject_addr,
        &ca,
        "/inject/namespace",
        "apps",
        &app_pod("bad", &[("cellroute.dev/health-port", "99999")]),
    )
    .await;
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cellroute.dev/health-port"),
        "{response}"
    );
    scene.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_is_renewed_while_serving_and_shared_by_replicas() {
    let scene = InjectScene::start(
        "inject-renew",
        SceneOptions {
            validity: Some("30s"),
            flags: vec!["--inject-cert-check=1s".to_owned()],
            ..Default::default()
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(scene.admin.clone(), &scene.namespace);
    let secret = format!("{}-inject-tls", scene.release);
    let tls = |s: &Secret, key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .unwrap_or_default()
    };
    let first = secrets.get(&secret).await.expect("the Secret");
    let ca = scene.wait_ca_bundle().await;

    // A second replica with the same flags serves what the Secret holds: it makes nothing.
    let second_options = cellroute_tests::control_plane::Options {
        identity: "cp-inject-2".to_owned(),
        ..scene_options(&scene)
    };
    let flags: Vec<String> = scene_flags(&scene);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let second = KubeControlPlane::start(&second_options, &flags).await;
    eventually(
        "the second replica to serve the shared certificate",
        K8S_SOON,
        || async {
            let expiry = second
                .metric("cellroute_inject_certificate_expiry_timestamp_seconds", &[])
                .await;
            if expiry > 0.0 {
                Ok(())
            } else {
                Err("no certificate yet".to_owned())
            }
        },
    )
    .await;
    assert_eq!(
        second
            .metric("cellroute_inject_certificate_renewals_total", &[])
            .await,
        0.0
    );

    // Renewed when a third of its 30 s is left, under the same CA: the caBundle stays.
    let renewed = eventually(
        "the serving certificate to be renewed",
        Duration::from_secs(60),
        || async {
            let now = secrets.get(&secret).await.map_err(|e| e.to_string())?;
            if tls(&now, "tls.crt") != tls(&first, "tls.crt") {
                Ok(now)
            } else {
                Err("not yet".to_owned())
            }
        },
    )
    .await;
    assert_eq!(tls(&renewed, "ca.crt"), tls(&first, "ca.crt"), "same CA");
    assert_eq!(scene.wait_ca_bundle().await, ca);
    // Still injecting, with the renewed certificate, whichever replica made it.
    let ns = scene.namespace_for("inject-renew-pods", &[]).await;
    let pod = scene
        .create_pod(&ns, app_pod("after", &[("cellroute.dev/inject", "true")]))
        .await
        .expect("created");
    assert_eq!(container_names(&pod).0, ["app", SIDECAR]);
    let made = scene
        .cp()
        .metric("cellroute_inject_certificate_renewals_total", &[])
        .await
        + second
            .metric("cellroute_inject_certificate_renewals_total", &[])
            .await;
    assert!(
        made >= 2.0,
        "the first certificate and at least one renewal: {made}"
    );
    drop(second);
    scene.cleanup().await;
}

/// With the injector on, a replica is ready only once it serves a certificate whose CA the API
/// server trusts: the webhook Service must not send the API server's calls to a replica that
/// would fail their handshake (with `failurePolicy: Ignore`, those pods would be admitted without
/// the sidecar). Here its webhook configuration is missing, so the CA cannot be published: the
/// replica stays unready, saying why, until the configuration is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_ready_only_once_the_api_server_trusts_its_injector() {
    let scene = InjectScene::start("inject-ready", SceneOptions::default()).await;
    let docs = scene.render(&["--show-only", "templates/injection.yaml"]);
    let webhook = object(&docs, "MutatingWebhookConfiguration", None).clone();
    scene
        .cluster
        .kubectl_ok(
            &[
                "delete",
                &format!("mutatingwebhookconfiguration/{}", scene.webhook_name()),
            ],
            None,
        )
        .await;

    let flags = scene_flags(&scene);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let second = cellroute_tests::control_plane::ControlPlane::start_with(
        &cellroute_tests::control_plane::Options {
            identity: "cp-inject-unready".to_owned(),
            ..scene_options(&scene)
        },
        &flags,
    )
    .await;
    second
        .wait_for_log("the certificate set-up to fail", K8S_SOON, |r| {
            field(r, "message") == Some("cannot set up the injector's certificate; retrying")
        })
        .await;
    // Its RoutingConfigs are loaded; only the injector holds it back.
    eventually("/readyz to wait for the injector alone", K8S_SOON, || async {
        let reply = second.get("/readyz").await;
        assert_ne!(
            reply.status, 200,
            "ready while the API server cannot trust its injector"
        );
        if reply.json["reason"]
            .as_str()
            .is_some_and(|r| r.contains("injector"))
        {
            Ok(())
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await;
    assert_eq!(second.get("/healthz").await.status, 200, "alive all the same");

    scene.cluster.apply_yaml(&webhook.to_string()).await;
    second.wait_ready(K8S_SOON).await;
    scene.wait_ca_bundle().await;
    scene.cleanup().await;
}

fn scene_options(scene: &InjectScene) -> cellroute_tests::control_plane::Options {
    scene.options().clone()
}

fn scene_flags(scene: &InjectScene) -> Vec<String> {
    // The second replica listens on a port of its own; the webhook keeps calling the first.
    scene
        .flags()
        .iter()
        .map(|f| {
            if f.starts_with("--inject-listen=") {
                "--inject-listen=127.0.0.1:0".to_owned()
            } else {
                f.clone()
            }
        })
        .collect()
}
