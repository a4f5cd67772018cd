//! The sidecar injector on the real API server: the chart's injector objects (the sidecar
//! ConfigMap, the empty certificate Secret, the MutatingWebhookConfiguration pointed at a
//! control plane on loopback through `injection.url`) and its RBAC are applied, and the real
//! `control-plane` binary runs out of cluster under a token of the chart's ServiceAccount, with
//! the `--inject-*` flags the chart's Deployment gives it.
//!
//! The webhook configuration only selects namespaces labelled with this scene's run label, so
//! parallel tests on the same API server never see it.

use std::net::TcpListener;
use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::chart::{container, documents, object, template};
use crate::control_plane::Options;
use crate::k8s::{Cluster, K8S_SOON, RBAC_TEMPLATES, unique_suffix, write_token_kubeconfig};
use crate::push_k8s::{KubeControlPlane, token};
use crate::wait::eventually;

/// The label that puts a namespace in a scene's reach.
pub const RUN_LABEL: &str = "tests.cellroute.dev/inject-run";

/// How an [`InjectScene`] is set up.
#[derive(Debug, Clone, Default)]
pub struct SceneOptions {
    /// `injection.nativeSidecar` ("true" or "false"; "auto" picks plain on 1.20).
    pub native: Option<&'static str>,
    /// `injection.certificate.validity`.
    pub validity: Option<&'static str>,
    /// Extra flags for the control plane.
    pub flags: Vec<String>,
}

/// A control plane serving the injector, and the chart's objects it needs.
pub struct InjectScene {
    /// The cluster.
    pub cluster: Cluster,
    /// An admin client.
    pub admin: Client,
    /// The release namespace (the control plane's Lease, Secret and ConfigMap).
    pub namespace: String,
    /// The Helm release name (cluster-scoped names start with it).
    pub release: String,
    /// This scene's value of [`RUN_LABEL`].
    pub run: String,
    /// The values file the chart is rendered with.
    pub values: PathBuf,
    /// The control plane.
    pub cp: Option<KubeControlPlane>,
    /// The injector's address.
    pub inject_addr: String,
    options: Option<Options>,
    flags: Vec<String>,
    _dir: tempfile::TempDir,
}

impl InjectScene {
    /// Applies the chart's RBAC and injector objects, starts the control plane with them, and
    /// waits until the API server reaches the injector (a dry-run pod comes back injected).
    pub async fn start(prefix: &str, opts: SceneOptions) -> Self {
        let cluster = Cluster::from_env();
        let admin = cluster.client().await;
        cluster.install_crd(&admin).await;
        let namespace = cluster.namespace(&admin, prefix).await;
        // A letter first: a label value of hex digits like `1e396619` reads back as a float to a
        // YAML 1.2 parser (Helm, a YAML 1.1 writer, leaves it unquoted).
        let run = format!("r{}", unique_suffix());
        let release = format!("inj-{run}");
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let inject_addr = format!("127.0.0.1:{port}");
        let values = dir.path().join("values.yaml");
        std::fs::write(
            &values,
            format!(
                "injection:\n  url: https://{inject_addr}\n  nativeSidecar: \"{}\"\n  certificate:\n    validity: {}\n    dnsNames: [\"127.0.0.1\"]\n  namespaceSelector:\n    matchLabels:\n      {RUN_LABEL}: \"{run}\"\n",
                opts.native.unwrap_or("auto"),
                opts.validity.unwrap_or("8760h"),
            ),
        )
        .expect("write values.yaml");

        let mut scene = Self {
            cluster,
            admin,
            namespace,
            release,
            run,
            values,
            cp: None,
            inject_addr,
            options: None,
            flags: Vec::new(),
            _dir: dir,
        };
        let mut shown: Vec<&str> = RBAC_TEMPLATES.to_vec();
        shown.extend(["templates/injection.yaml", "templates/deployment.yaml"]);
        let mut args = Vec::new();
        for t in &shown {
            args.extend(["--show-only", *t]);
        }
        let docs = scene.render(&args);
        // Everything but the Deployment, which no kubelet would run here: the control plane runs
        // as a process instead, with the Deployment's flags.
        let objects: Vec<&Value> = docs.iter().filter(|d| d["kind"] != "Deployment").collect();
        scene
            .cluster
            .apply_yaml(&json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string())
            .await;
        let config = object(&docs, "ConfigMap", None)["data"]["sidecar.yaml"]
            .as_str()
            .expect("sidecar.yaml")
            .to_owned();
        let config_path = scene._dir.path().join("sidecar.yaml");
        std::fs::write(&config_path, config).expect("write sidecar.yaml");
        let deployment = object(&docs, "Deployment", None);
        let cp_args = container(&deployment["spec"]["template"]["spec"], "control-plane")["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .filter(|a| a.starts_with("--inject-"))
            .map(|a| match a.split_once('=') {
                Some(("--inject-listen", _)) => format!("--inject-listen={}", scene.inject_addr),
                Some(("--inject-config", _)) => format!("--inject-config={}", config_path.display()),
                _ => a.to_owned(),
            })
            .collect::<Vec<_>>();
        assert!(
            cp_args.iter().any(|a| a.starts_with("--inject-cert-secret=")),
            "the chart's Deployment runs the injector: {cp_args:?}"
        );
        scene.flags = cp_args;
        // Pods of the test namespaces subscribe to RoutingConfigs of their own namespaces.
        scene.flags.push("--allow-cross-namespace".to_owned());
        scene.flags.extend(opts.flags);

        let sa = format!("{}-control-plane", scene.release);
        let sa_token = token(&scene.cluster, &scene.namespace, &sa, None).await;
        let kubeconfig =
            write_token_kubeconfig(&scene.cluster, &sa_token, &scene.namespace, scene._dir.path()).await;
        scene.options = Some(Options {
            kubeconfig: kubeconfig.into_os_string(),
            // The chart's Role names the status-key Secret after the chart's lease name.
            lease_name: crate::k8s::CHART_LEASE_NAME.to_owned(),
            ..Options::new(&scene.cluster, &scene.namespace, "cp-inject")
        });
        scene.start_control_plane().await;
        scene
    }

    /// `helm template` of the chart as this scene's release, with its values file.
    pub fn render(&self, extra: &[&str]) -> Vec<Value> {
        let values = self.values.to_str().expect("UTF-8 path");
        let mut args = vec!["-f", values];
        args.extend_from_slice(extra);
        documents(&template(&self.release, &self.namespace, &args))
    }

    /// Starts (or starts again) the control plane and waits until the API server reaches its
    /// injector.
    pub async fn start_control_plane(&mut self) {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let options = self.options.as_ref().expect("options are set at start");
        self.cp = Some(KubeControlPlane::start(options, &flags).await);
        self.wait_ca_bundle().await;
        // The API server reaches the injector once a dry-run pod in reach is counted (a dry run
        // records no Event).
        let probe = self.namespace_for("probe", &[]).await;
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), &probe);
        let pod: Pod = serde_json::from_value(app_pod("probe", &[])).expect("pod");
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        eventually("the API server to reach the injector", K8S_SOON, || async {
            let before = self.injections("not_requested").await;
            pods.create(&dry_run, &pod).await.map_err(|e| e.to_string())?;
            if self.injections("not_requested").await > before {
                Ok(())
            } else {
                Err("the dry-run pod did not reach the injector".to_owned())
            }
        })
        .await;
    }

    /// How the control plane is started (its ServiceAccount's kubeconfig, namespace, Lease).
    pub fn options(&self) -> &Options {
        self.options.as_ref().expect("options are set at start")
    }

    /// The control plane's flags (the chart's `--inject-*` ones, with local paths).
    pub fn flags(&self) -> &[String] {
        &self.flags
    }

    /// The control plane.
    pub fn cp(&self) -> &KubeControlPlane {
        self.cp.as_ref().expect("the control plane runs")
    }

    /// Stops the control plane (SIGKILL, as a crash would).
    pub fn stop_control_plane(&mut self) {
        drop(self.cp.take());
    }

    /// Waits until the MutatingWebhookConfiguration's every entry carries the CA bundle of the
    /// Secret, and returns it.
    pub async fn wait_ca_bundle(&self) -> String {
        let webhooks: Api<MutatingWebhookConfiguration> = Api::all(self.admin.clone());
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), &self.namespace);
        let name = self.webhook_name();
        let secret = format!("{}-inject-tls", self.release);
        eventually(
            "the control plane to set the webhook's caBundle",
            K8S_SOON,
            || async {
                let stored = secrets.get(&secret).await.map_err(|e| e.to_string())?;
                let ca = stored
                    .data
                    .as_ref()
                    .and_then(|d| d.get("ca.crt"))
                    .map(|b| b.0.clone())
                    .ok_or("the Secret has no ca.crt yet")?;
                let config = webhooks.get(&name).await.map_err(|e| e.to_string())?;
                let entries = config.webhooks.unwrap_or_default();
                if !entries.is_empty()
                    && entries
                        .iter()
                        .all(|w| w.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&ca))
                {
                    Ok(String::from_utf8(ca).expect("PEM"))
                } else {
                    Err("caBundle not set yet".to_owned())
                }
            },
        )
        .await
    }

    /// The MutatingWebhookConfiguration's name.
    pub fn webhook_name(&self) -> String {
        format!("{}-inject", self.release)
    }

    /// A fresh namespace in this scene's reach, with `labels` besides the run label.
    pub async fn namespace_for(&self, prefix: &str, labels: &[(&str, &str)]) -> String {
        let ns = self.cluster.namespace(&self.admin, prefix).await;
        let mut args = vec![
            "label".to_owned(),
            "namespace".to_owned(),
            ns.clone(),
            format!("{RUN_LABEL}={}", self.run),
        ];
        args.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cluster.kubectl_ok(&args, None).await;
        ns
    }

    /// Creates `pod` in `namespace`; the API server's answer.
    pub async fn create_pod(&self, namespace: &str, pod: Value) -> Result<Pod, kube::Error> {
        let pod: Pod = serde_json::from_value(pod).expect("a Pod");
        Api::<Pod>::namespaced(self.admin.clone(), namespace)
            .create(&PostParams::default(), &pod)
            .await
    }

    /// Creates a ReplicaSet `name` (stored only: no controller runs here) and returns the pod
    /// `pod` as its controller would create it: `generateName` and a controller reference.
    pub async fn owned_by_replica_set(&self, namespace: &str, name: &str, mut pod: Value) -> Value {
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "app"}]}}},
        });
        let created: Value = serde_json::from_str(
            &self
                .cluster
                .kubectl_ok(&["create", "-o", "json", "-f", "-"], Some(&rs.to_string()))
                .await,
        )
        .expect("JSON");
        let uid = created["metadata"]["uid"].as_str().expect("uid").to_owned();
        pod["metadata"]["generateName"] = json!(format!("{name}-"));
        pod["metadata"].as_object_mut().expect("metadata").remove("name");
        pod["metadata"]["labels"] = json!({"app": name});
        pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": uid,
            "controller": true, "blockOwnerDeletion": true,
        }]);
        pod
    }

    /// `cellroute_injections_total{result}`.
    pub async fn injections(&self, result: &str) -> f64 {
        self.cp()
            .metric("cellroute_injections_total", &[("result", result)])
            .await
    }

    /// Removes the cluster-scoped objects of this scene (the namespaces stay).
    pub async fn cleanup(&self) {
        self.cluster
            .kubectl_ok(
                &[
                    "delete",
                    &format!("mutatingwebhookconfiguration/{}", self.webhook_name()),
                    &format!("clusterrole/{}-control-plane", self.release),
                    &format!("clusterrolebinding/{}-control-plane", self.release),
                    "--ignore-not-found",
                ],
                None,
            )
            .await;
    }
}

/// POSTs an AdmissionReview v1 about creating `pod` in `namespace` to the injector at `addr`
/// (`path`: `/inject/pod` or `/inject/namespace`) over HTTPS, trusting only `ca_pem`, as the API
/// server does; returns the `response` and its decoded JSON patch (empty when none).
///
/// # Panics
///
/// When the request fails or the answer is not an AdmissionReview.
pub async fn review(
    addr: &str,
    ca_pem: &str,
    path: &str,
    namespace: &str,
    pod: &Value,
) -> (Value, Vec<Value>) {
    use base64::Engine as _;
    use http_body_util::{BodyExt as _, Full};
    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the injector");
    let host = addr.split(':').next().expect("host").to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).expect("server name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the injector, verified against its published CA");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "tests"},
            "object": pod,
            "dryRun": true,
        },
    });
    let request = http::Request::post(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .expect("request");
    let reply = sender.send_request(request).await.expect("the injector answers");
    assert_eq!(reply.status(), 200, "{reply:?}");
    let bytes = reply.into_body().collect().await.expect("body").to_bytes();
    let review: Value = serde_json::from_slice(&bytes).expect("JSON");
    let response = review["response"].clone();
    assert_eq!(
        response["uid"], "00000000-0000-0000-0000-000000000001",
        "{review}"
    );
    // `[]byte` in the API's JSON: a base64 string, or (as kube-rs writes it, and Go reads it)
    // an array of byte values.
    let bytes: Option<Vec<u8>> = match &response["patch"] {
        Value::String(b64) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 patch"),
        ),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()).expect("a byte"))
                .collect(),
        ),
        _ => None,
    };
    let patch = bytes
        .map(|b| serde_json::from_slice(&b).expect("a JSON patch"))
        .unwrap_or_default();
    (response, patch)
}

/// An application pod `name` with one container `app` declaring port 8000, and `annotations`.
/// It names its ServiceAccount, as the API server's ServiceAccount admission plugin would (this
/// test API server runs without it).
pub fn app_pod(name: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9", "ports": [{"containerPort": 8000}]}],
        },
    })
}

/// The names of a stored pod's containers and init containers.
pub fn container_names(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = pod.spec.as_ref().expect("spec");
    (
        spec.containers.iter().map(|c| c.name.clone()).collect(),
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect(),
    )
}

/// The annotation `key` of a stored pod.
pub fn annotation<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.annotations().get(key).map(String::as_str)
}
