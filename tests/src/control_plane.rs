//! The real `control-plane` binary, run against a Kubernetes API server.
//!
//! [`ControlPlane::start`] runs `control-plane run --listen 127.0.0.1:0 --log-format json` with
//! the watch, the leader-election Lease and the identity of one test, learns its HTTP address
//! from its `"message":"listening"` log line, and talks to it over loopback like Prometheus and
//! an operator would: `GET /readyz`, `/metrics` and `/debug/snapshots`.
//!
//! [`Scene`] is what most operator tests start from: the cluster, the CRD, a fresh namespace and
//! one control plane watching only that namespace, so parallel tests never see each other.

use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use kube::Client;
use serde_json::Value;

use crate::cp_http::CpHttp;
use crate::k8s::{Cluster, K8S_SOON, RoutingConfigs};
use crate::process::{Logs, Process, bin_path, scrub_env};
use crate::wait::eventually;

/// How a control plane is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `KUBECONFIG` it gets (the admin's, or a ServiceAccount's).
    pub kubeconfig: std::ffi::OsString,
    /// `--namespace`: the only namespace it watches. Also the Lease's namespace, unless
    /// `lease_namespace` says otherwise.
    pub namespace: String,
    /// `--lease-namespace`, when it is not `namespace` (a chart install with
    /// `controlPlane.watchNamespace` keeps its Lease in the release namespace).
    pub lease_namespace: Option<String>,
    /// `--lease-name`: replicas sharing it elect one status writer.
    pub lease_name: String,
    /// `--identity`: its name in the Lease and in its Events' reporter.
    pub identity: String,
    /// `--lease-duration` in seconds (the binary's default when `None`).
    pub lease_duration: Option<u64>,
}

impl Options {
    /// A control plane with the admin's credentials, watching `namespace`, holding the Lease
    /// `cellroute-<namespace>` there as `identity`.
    pub fn new(cluster: &Cluster, namespace: &str, identity: &str) -> Self {
        Self {
            kubeconfig: cluster.kubeconfig().clone(),
            namespace: namespace.to_owned(),
            lease_namespace: None,
            lease_name: format!("cellroute-{namespace}"),
            identity: identity.to_owned(),
            lease_duration: None,
        }
    }
}

/// A running `control-plane run` watching a Kubernetes API server.
#[derive(Debug)]
pub struct ControlPlane {
    process: Process,
    identity: String,
    http: CpHttp,
}

/// `GET`s, metrics and `/debug/dataplanes` of the shared client.
impl std::ops::Deref for ControlPlane {
    type Target = CpHttp;

    fn deref(&self) -> &CpHttp {
        &self.http
    }
}

impl ControlPlane {
    /// Starts the control plane and waits until its HTTP server listens (not until it is
    /// ready: see [`ControlPlane::start_ready`]).
    ///
    /// # Panics
    ///
    /// When the binary cannot be built or started, or does not listen within the startup
    /// timeout; the message includes its logs.
    pub async fn start(options: &Options) -> Self {
        let (process, addr) = spawn(options, "127.0.0.1:0", &[]).await;
        Self {
            process,
            identity: options.identity.clone(),
            http: CpHttp::new(addr, &options.identity),
        }
    }

    /// [`ControlPlane::start`] with `extra` flags.
    pub async fn start_with(options: &Options, extra: &[&str]) -> Self {
        let (process, addr) = spawn(options, "127.0.0.1:0", extra).await;
        Self {
            process,
            identity: options.identity.clone(),
            http: CpHttp::new(addr, &options.identity),
        }
    }

    /// [`ControlPlane::start_with`] on `listen` (the address of a control plane stopped
    /// before: a restart behind a Service, whose address stays).
    pub async fn start_on(options: &Options, listen: SocketAddr, extra: &[&str]) -> Self {
        let (process, addr) = spawn(options, &listen.to_string(), extra).await;
        assert_eq!(addr, listen, "started on another address");
        Self {
            process,
            identity: options.identity.clone(),
            http: CpHttp::new(addr, &options.identity),
        }
    }

    /// Waits up to `timeout` for the process to exit, and returns its status.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_for_exit(timeout).await
    }

    /// Starts the control plane and waits until `/readyz` answers 200 (its first list is done).
    pub async fn start_ready(options: &Options) -> Self {
        let cp = Self::start(options).await;
        cp.wait_ready(K8S_SOON).await;
        cp
    }

    /// Its `--identity`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The reporter its Events carry (`reportingController` and `reportingInstance`).
    pub fn reporter(&self) -> String {
        format!("{}/{}", crate::k8s::CONTROL_PLANE_MANAGER, self.identity)
    }

    /// The logs collected so far.
    pub fn logs(&self) -> &Logs {
        self.process.logs()
    }

    /// `cellroute_reconciles_total{result}`.
    pub async fn reconciles(&self, result: &str) -> f64 {
        self.metric("cellroute_reconciles_total", &[("result", result)])
            .await
    }

    /// `cellroute_status_writes_total`.
    pub async fn status_writes(&self) -> f64 {
        self.metric("cellroute_status_writes_total", &[]).await
    }

    /// `cellroute_status_writes_total` once it has reached `at_least`. The counter moves after
    /// the write's response arrives, so a test that has just *seen* the written status can
    /// read it a moment too early; callers then assert the exact count.
    pub async fn status_writes_at_least(&self, at_least: f64) -> f64 {
        crate::wait::eventually(
            &format!("cellroute_status_writes_total to reach {at_least}"),
            crate::wait::SOON,
            || async move {
                let n = self.status_writes().await;
                if n >= at_least { Ok(n) } else { Err(format!("{n}")) }
            },
        )
        .await
    }

    /// True while `cellroute_leader` is 1.
    pub async fn is_leader(&self) -> bool {
        self.metric("cellroute_leader", &[]).await == 1.0
    }

    /// Waits until this replica holds the lease.
    pub async fn wait_leader(&self, timeout: Duration) {
        eventually(
            &format!("control plane {} to lead", self.identity),
            timeout,
            || async {
                if self.is_leader().await {
                    Ok(())
                } else {
                    Err("cellroute_leader is not 1".to_owned())
                }
            },
        )
        .await;
    }

    /// Every entry of `GET /debug/snapshots`.
    ///
    /// # Panics
    ///
    /// When the answer is not the documented JSON.
    pub async fn snapshots(&self) -> Vec<Value> {
        let reply = self.get("/debug/snapshots").await;
        assert_eq!(reply.status, 200, "{reply}");
        reply.json["snapshots"]
            .as_array()
            .unwrap_or_else(|| panic!("no snapshots array in /debug/snapshots: {reply}"))
            .clone()
    }

    /// The `/debug/snapshots` entry of `object` (`namespace/name`), if listed.
    pub async fn snapshot_of(&self, object: &str) -> Option<Value> {
        self.snapshots().await.into_iter().find(|s| s["object"] == object)
    }

    /// Waits until `/debug/snapshots` serves `object` at `version` of `lineage`, and returns the
    /// entry.
    pub async fn wait_served(&self, object: &str, lineage: &str, version: i64) -> Value {
        eventually(
            &format!(
                "control plane {} to serve {object} version {version}",
                self.identity
            ),
            K8S_SOON,
            || async {
                let entry = self.snapshot_of(object).await.ok_or("not listed")?;
                let served = &entry["served"];
                if served["lineage"] == lineage && served["version"] == version {
                    Ok(entry)
                } else {
                    Err(format!("entry: {entry}"))
                }
            },
        )
        .await
    }

    /// Waits up to `timeout` for a structured log record satisfying `pred`, and returns it.
    ///
    /// # Panics
    ///
    /// When no such record appears in time; the message includes the recent logs.
    pub async fn wait_for_log(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.process.wait_for_log(what, timeout, pred).await
    }

    /// Sends SIGTERM (release the lease, stop, exit).
    pub fn sigterm(&self) {
        self.process.signal(rustix::process::Signal::TERM);
    }

    /// Sends SIGTERM and waits for a clean exit.
    ///
    /// # Panics
    ///
    /// When it does not exit within 20 s, or exits unsuccessfully.
    pub async fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        let status = self
            .process
            .wait_for_exit(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "control plane {} did not exit within 20s of SIGTERM",
                    self.identity
                )
            });
        assert!(
            status.success(),
            "control plane {} exited with {status} after SIGTERM; logs:\n{}",
            self.identity,
            self.logs().tail(100)
        );
        status
    }

    /// Log records at WARN or ERROR level, for asserting that nothing went wrong. Audit records
    /// (`"target":"audit"`) are left out: a rejected RoutingConfig is audited at WARN by design.
    pub fn warnings(&self) -> Vec<Value> {
        self.logs()
            .records()
            .into_iter()
            .filter(|r| matches!(r["level"].as_str(), Some("WARN" | "ERROR")) && r["target"] != "audit")
            .collect()
    }
}

/// A fresh namespace, the CRD and one ready control plane watching that namespace.
pub struct Scene {
    /// The cluster.
    pub cluster: Cluster,
    /// An admin client.
    pub client: Client,
    /// The test's namespace.
    pub namespace: String,
    /// RoutingConfigs of the namespace.
    pub rtc: RoutingConfigs,
    /// The control plane (identity `cp-0`).
    pub cp: ControlPlane,
}

impl Scene {
    /// Sets the scene; `prefix` names the namespace after the test.
    pub async fn start(prefix: &str) -> Self {
        let cluster = Cluster::from_env();
        let client = cluster.client().await;
        cluster.install_crd(&client).await;
        let namespace = cluster.namespace(&client, prefix).await;
        let cp = ControlPlane::start_ready(&Options::new(&cluster, &namespace, "cp-0")).await;
        let rtc = RoutingConfigs::new(&client, &namespace);
        Self {
            cluster,
            client,
            namespace,
            rtc,
            cp,
        }
    }

    /// Options for another control plane of this scene (same namespace and Lease).
    pub fn options(&self, identity: &str) -> Options {
        Options::new(&self.cluster, &self.namespace, identity)
    }
}

/// Starts `control-plane run` against the cluster of `options.kubeconfig` on `listen`, watching
/// `options.namespace` with the Lease and identity of `options` plus `extra` flags, and waits
/// until it listens. Every wrapper of a cluster-mode control plane starts it through here.
///
/// # Panics
///
/// When the binary cannot be built or started, or does not listen in time.
pub async fn spawn(options: &Options, listen: &str, extra: &[&str]) -> (Process, SocketAddr) {
    let bin = tokio::task::spawn_blocking(|| bin_path("control-plane"))
        .await
        .expect("binary build task");
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .args(["--listen", listen, "--log-format", "json"])
        .args(["--namespace", &options.namespace])
        .args([
            "--lease-namespace",
            options.lease_namespace.as_deref().unwrap_or(&options.namespace),
        ])
        .args(["--lease-name", &options.lease_name])
        .args(["--identity", &options.identity]);
    if let Some(secs) = options.lease_duration {
        cmd.args(["--lease-duration", &secs.to_string()]);
    }
    cmd.args(extra);
    scrub_env(&mut cmd);
    // In a pod these come from the downward API; here they must not leak in from the shell.
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
