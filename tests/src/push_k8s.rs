//! The snapshot push on a real Kubernetes API server: a control plane watching RoutingConfigs
//! and authenticating data planes with TokenReview, and data planes presenting ServiceAccount
//! tokens made by the TokenRequest API, as a projected token volume would give them.
//!
//! - [`KubeControlPlane`]: `control-plane run` in cluster mode with extra flags (such as
//!   `--allow-cross-namespace`, which [`crate::control_plane::ControlPlane`] cannot pass), and
//!   its push endpoints: `/debug/dataplanes`, `/metrics`, the WebSocket address;
//! - [`service_account`] and [`token`]: ServiceAccounts and their tokens, through kubectl (a lone
//!   apiserver has no token controller, so TokenRequest is the only way to get one);
//!   [`pod`] and [`pod_token`]: a Pod object (never scheduled: there is no kubelet) and a token
//!   bound to it, which names the pod in its TokenReview (`authentication.kubernetes.io/pod-name`),
//!   as a projected token volume's does;
//! - [`follow`]: a real data plane following such a control plane with such a token.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::admin::AdminClient;
use crate::control_plane::{self, Options};
use crate::cp_http::CpHttp;
use crate::fixture::TOKEN as ADMIN_TOKEN;
use crate::k8s::{Cluster, K8S_SOON};
use crate::process::{DataPlane, Logs, Process};
use crate::proxy::ProxyClient;
use crate::push::Follower;

/// The audience the control plane's TokenReview asks for.
pub const AUDIENCE: &str = "cellroute";

/// `control-plane run` against the cluster of `options.kubeconfig`, with `extra` flags.
#[derive(Debug)]
pub struct KubeControlPlane {
    process: Process,
    http: CpHttp,
}

/// `GET`s, metrics and `/debug/dataplanes` of the shared client.
impl std::ops::Deref for KubeControlPlane {
    type Target = CpHttp;

    fn deref(&self) -> &CpHttp {
        &self.http
    }
}

impl KubeControlPlane {
    /// Starts `control-plane run --listen 127.0.0.1:0 --log-format json` watching
    /// `options.namespace`, with the Lease and identity of `options` and `extra` flags, and
    /// waits until it is ready (its first list is done).
    ///
    /// Without `--static-token-file` it authenticates data planes with TokenReview.
    ///
    /// # Panics
    ///
    /// When it cannot be started or does not get ready; the message includes its logs.
    pub async fn start(options: &Options, extra: &[&str]) -> Self {
        let (process, addr) = control_plane::spawn(options, "127.0.0.1:0", extra).await;
        let cp = Self {
            process,
            http: CpHttp::new(addr, &options.identity),
        };
        cp.wait_ready(K8S_SOON).await;
        cp
    }

    /// Its logs so far.
    pub fn logs(&self) -> &Logs {
        self.process.logs()
    }

    /// Waits up to `timeout` for a log record satisfying `pred`, and returns it.
    pub async fn wait_for_log(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.process.wait_for_log(what, timeout, pred).await
    }
}

/// Creates the ServiceAccount `name` in `namespace`, as the admin.
///
/// # Panics
///
/// When kubectl fails.
pub async fn service_account(cluster: &Cluster, namespace: &str, name: &str) {
    cluster
        .kubectl_ok(&["create", "serviceaccount", name, "-n", namespace], None)
        .await;
}

/// A one-hour token of the ServiceAccount `namespace/name` from the TokenRequest API (`kubectl
/// create token`), for `audience`, or for the API server's own audience when `None`.
///
/// # Panics
///
/// When kubectl fails or prints no token.
pub async fn token(cluster: &Cluster, namespace: &str, name: &str, audience: Option<&str>) -> String {
    let mut args = vec!["create", "token", name, "-n", namespace, "--duration", "1h"];
    if let Some(audience) = audience {
        args.extend(["--audience", audience]);
    }
    let token = cluster.kubectl_ok(&args, None).await.trim().to_owned();
    assert!(!token.is_empty(), "kubectl {args:?} printed no token");
    token
}

/// Creates the Pod `name` in `namespace` running as the ServiceAccount `service_account`, as the
/// admin. Nothing runs it (the test apiserver has no scheduler or kubelet): it exists so tokens
/// can be bound to it.
///
/// # Panics
///
/// When kubectl fails.
pub async fn pod(cluster: &Cluster, namespace: &str, name: &str, service_account: &str) {
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "registry.invalid/app:never-pulled"}],
        },
    });
    cluster
        .kubectl_ok(&["create", "-f", "-"], Some(&manifest.to_string()))
        .await;
}

/// A one-hour token of the ServiceAccount `namespace/service_account` for `audience`, bound to
/// the Pod `pod` (`kubectl create token --bound-object-kind Pod`).
///
/// # Panics
///
/// When kubectl fails or prints no token.
pub async fn pod_token(
    cluster: &Cluster,
    namespace: &str,
    service_account: &str,
    pod: &str,
    audience: &str,
) -> String {
    let args = [
        "create",
        "token",
        service_account,
        "-n",
        namespace,
        "--duration",
        "1h",
        "--audience",
        audience,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        pod,
    ];
    let token = cluster.kubectl_ok(&args, None).await.trim().to_owned();
    assert!(!token.is_empty(), "kubectl {args:?} printed no token");
    token
}

/// Starts data plane `id` following the control plane at `url` for `routing_config`
/// (`namespace/name`), presenting `token` from a token file, with its own cache directory and
/// no table of its own (its `--config` file does not exist), under `dir/id/`.
///
/// # Panics
///
/// When the files cannot be written or the data plane does not start.
pub async fn follow(url: &str, routing_config: &str, id: &str, token: &str, dir: &Path) -> Follower {
    follow_with(url, routing_config, id, token, dir, &[]).await
}

/// [`follow`] with `extra` arguments for the data plane.
///
/// # Panics
///
/// When the files cannot be written or the data plane does not start.
pub async fn follow_with(
    url: &str,
    routing_config: &str,
    id: &str,
    token: &str,
    dir: &Path,
    extra: &[&str],
) -> Follower {
    let home = dir.join(id);
    std::fs::create_dir_all(&home).expect("create the data plane's directory");
    let token_file = home.join("token");
    std::fs::write(&token_file, token).expect("write the data plane's token");
    let admin_token = home.join("admin-token");
    std::fs::write(&admin_token, format!("{ADMIN_TOKEN}\n")).expect("write the admin token");
    let config_path = home.join("routing.yaml");
    let token_file = token_file.display().to_string();
    let cache_dir = home.join("cache").display().to_string();
    let args = [
        "--control-plane",
        url,
        "--routing-config",
        routing_config,
        "--id",
        id,
        "--token-file",
        &token_file,
        "--cache-dir",
        &cache_dir,
        "--reconnect-max",
        "1s",
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    let dp = DataPlane::start(&config_path, Some(&admin_token), &args).await;
    Follower {
        id: id.to_owned(),
        admin: AdminClient::new(dp.admin_addr(), ADMIN_TOKEN),
        proxy: ProxyClient::new(dp.proxy_addr()),
        dp,
        config_path,
    }
}
