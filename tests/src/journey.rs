//! Helpers for the user journey test (`tests/tests/user_journey.rs`): the chart's RBAC rendered
//! with helm, the example edited for a test's namespace and cells, and what `kubectl get rtc`
//! and the status say.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use routing_model::crd::RoutingConfig;
use serde_json::Value;

use crate::client::{Reply, http_client};
use crate::control_plane::Options;
use crate::k8s::{Cluster, K8S_SOON, RoutingConfigs, condition};
use crate::process::{Process, bin_path, scrub_env};
use crate::wait::eventually;

/// The Helm chart users install.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/cellroute");

/// The chart's templates that hold the control plane's identity and permissions.
pub const RBAC_TEMPLATES: [&str; 3] = [
    "templates/serviceaccount.yaml",
    "templates/clusterrole.yaml",
    "templates/role.yaml",
];

/// `helm template RELEASE charts/cellroute --namespace NAMESPACE --show-only T...`.
pub async fn render_chart(cluster: &Cluster, release: &str, namespace: &str, templates: &[&str]) -> String {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    for t in templates {
        args.extend(["--show-only", t]);
    }
    cluster.helm_ok(&args).await
}

/// `text` with each `(from, to)` replaced; every `from` must occur, so a changed example fails
/// here rather than silently testing something else.
pub fn edit(text: &str, edits: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} is not in:\n{text}");
        text = text.replace(from, to);
    }
    text
}

/// The row of `kubectl get rtc NAME -n NAMESPACE`, as columns: NAME, ACCEPTED, VERSION, SYNCED
/// (AGE left out).
pub async fn get_rtc(cluster: &Cluster, namespace: &str, name: &str) -> Vec<String> {
    let table = cluster
        .kubectl_ok(&["get", "rtc", name, "-n", namespace], None)
        .await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ACCEPTED", "VERSION", "SYNCED", "AGE"],
        "{table}"
    );
    let row: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(row.len(), 5, "{table}");
    row[..4].to_vec()
}

/// Waits until the status of `name` describes `generation` with `Accepted` = `accepted`, serves
/// `version`, and says all `n` data planes applied it (`Synced` True, `dataPlanes` n/n).
pub async fn wait_synced(
    rtc: &RoutingConfigs,
    name: &str,
    generation: i64,
    accepted: &str,
    version: i64,
    n: i64,
) -> RoutingConfig {
    rtc.wait_for(
        name,
        &format!("Accepted={accepted} at generation {generation}, Synced {n}/{n} at version {version}"),
        |obj| {
            let status = obj.status.as_ref().ok_or("no status")?;
            if status.observed_generation != Some(generation) {
                return Err("observedGeneration".to_owned());
            }
            match condition(status, "Accepted") {
                Some(c) if c.status == accepted && c.observed_generation == Some(generation) => {}
                other => return Err(format!("Accepted: {other:?}")),
            }
            match condition(status, "Synced") {
                Some(c) if c.status == "True" && c.reason == "AllDataPlanesSynced" => {}
                other => return Err(format!("Synced: {other:?}")),
            }
            if status.snapshot.as_ref().map(|s| s.version) != Some(version) {
                return Err("snapshot.version".to_owned());
            }
            match &status.data_planes {
                Some(d)
                    if d.connected == n
                        && d.synced == n
                        && d.rejected == 0
                        && d.summary == format!("{n}/{n}")
                        && d.last_rejection.is_none() => {}
                other => Err(format!("dataPlanes: {other:?}"))?,
            }
            Ok(())
        },
    )
    .await
}

/// The message of condition `type_` of `obj`.
///
/// # Panics
///
/// When there is no such condition.
pub fn condition_message(obj: &RoutingConfig, type_: &str) -> String {
    obj.status
        .as_ref()
        .and_then(|s| condition(s, type_))
        .map(|c| c.message.clone())
        .unwrap_or_else(|| panic!("no {type_} condition: {:?}", obj.status))
}

/// `control-plane run` in cluster mode (TokenReview for data planes) that can be stopped and
/// started again on the same address, as a Service address stays the same across restarts.
#[derive(Debug)]
pub struct RestartableControlPlane {
    options: Options,
    process: Option<Process>,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl RestartableControlPlane {
    /// Starts it on a free loopback port and waits until it is ready (first list done).
    pub async fn start(options: Options) -> Self {
        let (process, addr) = spawn(&options, "127.0.0.1:0".parse().expect("address")).await;
        let cp = Self {
            options,
            process: Some(process),
            addr,
            http: http_client(),
        };
        cp.wait_ready().await;
        cp
    }

    /// `ws://ADDR`, for `data-plane run --control-plane`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops it (SIGKILL, as a node loss would) and waits until it is gone.
    pub fn stop(&mut self) {
        drop(self.process.take().expect("stop a running control plane"));
    }

    /// Starts a fresh process (empty memory) with the same options on the same address, and
    /// waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "restart a control plane that was stopped");
        let (process, addr) = spawn(&self.options, self.addr).await;
        assert_eq!(addr, self.addr, "restarted on another address");
        self.process = Some(process);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        eventually(
            &format!("control plane {} to be ready", self.options.identity),
            K8S_SOON,
            || async {
                let reply = self.get("/readyz").await;
                if reply.status == 200 {
                    Ok(())
                } else {
                    Err(reply.to_string())
                }
            },
        )
        .await;
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the control plane: {e}"));
        Reply::read(response).await
    }

    /// Waits until every data plane of `ids` is listed by `/debug/dataplanes` in `state`, and
    /// returns their entries.
    pub async fn wait_state(&self, ids: &[&str], state: &str, timeout: Duration) -> Vec<Value> {
        eventually(&format!("{ids:?} to be {state}"), timeout, || async {
            let reply = self.get("/debug/dataplanes").await;
            let all = reply.json["dataplanes"].as_array().cloned().unwrap_or_default();
            ids.iter()
                .map(|id| match all.iter().find(|d| d["id"] == *id) {
                    Some(entry) if entry["state"] == state => Ok(entry.clone()),
                    Some(entry) => Err(format!("{id}: {entry}")),
                    None => Err(format!("{id} not listed in {reply}")),
                })
                .collect()
        })
        .await
    }
}

async fn spawn(options: &Options, listen: SocketAddr) -> (Process, SocketAddr) {
    let bin = tokio::task::spawn_blocking(|| bin_path("control-plane"))
        .await
        .expect("binary build task");
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .args(["--listen", &listen.to_string(), "--log-format", "json"])
        .args(["--namespace", &options.namespace])
        .args(["--lease-namespace", &options.namespace])
        .args(["--lease-name", &options.lease_name])
        .args(["--identity", &options.identity]);
    scrub_env(&mut cmd);
    for name in [
        "POD_NAME",
        "POD_NAMESPACE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("KUBECONFIG", &options.kubeconfig);
    let mut process = Process::spawn(&format!("control plane {}", options.identity), &mut cmd);
    let addr = process.wait_listening(&["http"]).await[0];
    (process, addr)
}
