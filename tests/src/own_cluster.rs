//! A cluster of the test's own: `tests/k8s/apiserver.sh start` with a kube-controller-manager
//! running only the controllers the test asks for (`CELLROUTE_K8S_CONTROLLERS`).
//!
//! The run's shared API server has no controller-manager, and must not get one: its tests store
//! ReplicaSets and pods by hand, which a ReplicaSet controller would delete. A test that needs
//! Deployments to roll out pods and Endpoints to follow them (the README's cluster walk-through,
//! with [`crate::kubelet`] playing the kubelet) starts its own cluster instead. It is always a
//! local one (`CELLROUTE_K8S_MODE=local`), built by `tests/k8s/apiserver.sh install`, and it is
//! stopped when the [`OwnCluster`] is dropped, or by the script's watchdog if the test process
//! dies first.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::k8s::Cluster;

/// The script that starts and stops the test API servers.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/apiserver.sh");

/// etcd, kube-apiserver and kube-controller-manager of one test, stopped on drop.
#[derive(Debug)]
pub struct OwnCluster {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    cluster: Cluster,
}

impl OwnCluster {
    /// Starts the cluster with the kube-controller-manager `controllers` (for example
    /// `["deployment", "replicaset", "endpoint"]`) and waits until it is ready.
    ///
    /// # Panics
    ///
    /// When the script fails (for example because `tests/k8s/apiserver.sh install` has not been
    /// run); the message holds its output.
    pub async fn start(controllers: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cellroute-own-k8s.")
            .tempdir()
            .expect("temporary directory");
        let path = dir.path().to_owned();
        let controllers = controllers.join(",");
        let out = tokio::task::spawn_blocking(move || {
            Command::new(SCRIPT)
                .arg("start")
                .arg(&path)
                .env("CELLROUTE_K8S_MODE", "local")
                .env("CELLROUTE_K8S_CONTROLLERS", &controllers)
                .env("CELLROUTE_K8S_OWNER_PID", std::process::id().to_string())
                .env_remove("KUBECONFIG")
                .output()
                .expect("run tests/k8s/apiserver.sh")
        })
        .await
        .expect("start task");
        assert!(
            out.status.success(),
            "{SCRIPT} start failed (run `{SCRIPT} install` first):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = read_env(&dir.path().join("env"));
        let get = |key: &str| {
            env.get(key)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| panic!("{} names no {key}", dir.path().join("env").display()))
                .clone()
        };
        let cluster = Cluster::with_tools(
            OsString::from(get("KUBECONFIG")),
            PathBuf::from(get("CELLROUTE_KUBECTL")),
            Some(PathBuf::from(get("CELLROUTE_HELM"))),
        );
        Self { dir, env, cluster }
    }

    /// The cluster, to drive with kubectl, helm and kube clients.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// What `DIR/env` exports (`KUBECONFIG`, `CELLROUTE_KUBECTL`, `CELLROUTE_HELM`, ...).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// The state directory (logs of etcd, kube-apiserver and kube-controller-manager).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of the controller-manager's log, for failure messages.
    pub fn controller_manager_log(&self, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("kube-controller-manager.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).arg("stop").arg(self.dir.path()).output();
    }
}

/// The variables `DIR/env` exports, as a shell that sources it sees them.
fn read_env(path: &Path) -> BTreeMap<String, String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"set -a; . "$1"; env -0"#)
        .arg("bash")
        .arg(path)
        .env_clear()
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "cannot source {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}
