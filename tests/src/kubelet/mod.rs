//! A kubelet (and scheduler) for a test's own cluster ([`crate::own_cluster`]): it runs the pods
//! the cluster's controllers create with the workspace's real binaries, so a Deployment of the
//! Helm chart really serves, and an injected sidecar really follows it.
//!
//! What it does, every [`TICK`]:
//! - **schedules**: binds every pod without a node to its Node (registered at start), as the
//!   scheduler would (no filtering: one node);
//! - **starts** the pods bound to it: a network namespace with the next address of its pod
//!   network ([`network`]), the pod's volumes as directories (`emptyDir`; `configMap` and
//!   `secret` from the API; projected `serviceAccountToken` from the TokenRequest API, for the
//!   pod's ServiceAccount, bound to the pod, with the volume's audience and expiry), and each
//!   container (plain containers, and init containers with `restartPolicy: Always`, the native
//!   sidecars) as [`container`] says: the workspace binary of its image, its stored `args` and
//!   `env`;
//! - gives containers of a pod with a ServiceAccount **API credentials**: where a cluster mounts
//!   the ServiceAccount token at `/var/run/secrets/kubernetes.io/serviceaccount` and sets
//!   `KUBERNETES_SERVICE_HOST`, the harness sets `KUBECONFIG` to a kubeconfig with a token of
//!   that ServiceAccount bound to the pod (TokenRequest, API server audience), reaching the API
//!   server through a relay on the node's address of the pod network (the API server listens on
//!   loopback only) and verifying its certificate as `kubernetes.default.svc`, the name an
//!   in-cluster client verifies;
//! - **probes** each container's `readinessProbe` (`httpGet`, from the node, as a kubelet
//!   does; every tick rather than every `periodSeconds`; a container without one is ready when
//!   running) and **reports** the pod's status: `Running`, `podIP`, `hostIP`, the `Ready` and
//!   `ContainersReady` conditions, container states. Endpoints controllers and Deployments act
//!   on exactly that;
//! - keeps each pod's `/etc/hosts` up to date with the cluster's Services ([`dns`]);
//! - **deletes** pods marked for deletion: SIGTERM to its processes, SIGKILL after its grace
//!   period, then the final delete (grace 0), as a kubelet confirms a pod is gone.
//!
//! What it does not do: restart containers (an exit is reported and recorded as an error),
//! liveness probes, `securityContext` (processes run as the test's user, on the host's file
//! system), resource limits, token refresh (tokens last an hour), plain init containers,
//! `command`, `envFrom`, `subPath`. Unsupported pod specs are errors ([`Kubelet::errors`]),
//! never silently run differently.

pub mod container;
pub mod dns;
pub mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Endpoints, Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::k8s::{Cluster, apiserver_addr};
use crate::process::{Logs, Process, bin_path};
use network::{PodNetns, PodNetwork};

/// How often the kubelet looks at the cluster.
pub const TICK: Duration = Duration::from_millis(250);

/// The name a client inside a cluster verifies the API server's certificate against.
const API_SERVER_NAME: &str = "kubernetes.default.svc";

/// The kubelet of one node.
pub struct Kubelet {
    node: String,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the kubelet's loop and the test share.
#[derive(Default)]
struct Shared {
    errors: Mutex<Vec<String>>,
    logs: Mutex<Vec<(String, Logs)>>,
}

impl Shared {
    fn error(&self, message: String) {
        let mut errors = self.errors.lock().expect("errors");
        if !errors.contains(&message) {
            errors.push(message);
        }
    }
}

impl Kubelet {
    /// Registers the Node `node` with `cluster` and starts running the cluster's pods.
    ///
    /// # Panics
    ///
    /// When the pod network cannot be created (root and `ip` are needed) or the API server
    /// refuses the Node.
    pub async fn start(cluster: &Cluster, node: &str) -> Self {
        let client = cluster.client().await;
        // The images it can run: the workspace's binaries, built first when needed.
        let bin_dir = tokio::task::spawn_blocking(|| {
            bin_path("control-plane");
            let data_plane = bin_path("data-plane");
            data_plane.parent().expect("a binary directory").to_owned()
        })
        .await
        .expect("binary build task");
        let network = Arc::new(
            tokio::task::spawn_blocking(PodNetwork::create)
                .await
                .expect("network task"),
        );
        let apiserver = apiserver_addr(cluster).await;
        let relay = tokio::net::TcpListener::bind((network.gateway(), 0))
            .await
            .expect("bind the API server relay on the pod network");
        let relay_addr = relay.local_addr().expect("relay address");
        let relay_task = tokio::spawn(relay_to(relay, apiserver));
        let ca = admin_ca(cluster).await;
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let manifest: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
        }))
        .expect("a Node");
        nodes
            .create(&PostParams::default(), &manifest)
            .await
            .unwrap_or_else(|e| panic!("register Node {node}: {e}"));
        let now = timestamp();
        nodes
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "addresses": [{"type": "InternalIP", "address": network.gateway().to_string()},
                                  {"type": "Hostname", "address": node}],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                    "message": "cellroute kubelet harness", "lastHeartbeatTime": now, "lastTransitionTime": now}],
                }})),
            )
            .await
            .unwrap_or_else(|e| panic!("report Node {node} ready: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("cellroute-kubelet.")
            .tempdir()
            .expect("temporary directory");
        let shared = Arc::new(Shared::default());
        let state = State {
            client,
            node: node.to_owned(),
            network,
            relay: relay_addr,
            ca,
            bin_dir,
            dir,
            shared: shared.clone(),
            pods: BTreeMap::new(),
            done: BTreeSet::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(1))
                .build()
                .expect("probe client"),
        };
        let loop_task = tokio::spawn(state.run());
        Self {
            node: node.to_owned(),
            shared,
            tasks: vec![relay_task, loop_task],
        }
    }

    /// The Node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// What went wrong so far (unsupported pod specs, exited containers, refused API calls).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().expect("errors").clone()
    }

    /// The logs of the container `container` of the pod `namespace/pod`, once it has started.
    pub fn logs(&self, namespace: &str, pod: &str, container: &str) -> Option<Logs> {
        let key = format!("{namespace}/{pod}/{container}");
        self.shared
            .logs
            .lock()
            .expect("logs")
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, l)| l.clone())
    }

    /// The errors and the last `lines` lines of every container's log, for failure messages.
    pub fn report(&self, lines: usize) -> String {
        let mut text = format!("kubelet {} errors: {:?}\n", self.node, self.errors());
        for (key, logs) in self.shared.logs.lock().expect("logs").iter() {
            text.push_str(&format!("---- {key} ----\n{}\n", logs.tail(lines)));
        }
        text
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        // Dropping the loop's future drops its pods: their processes are killed and their
        // network namespaces removed, then the bridge.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Copies connections from `listener` to `target` and back.
async fn relay_to(listener: tokio::net::TcpListener, target: SocketAddr) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// The CA data of the admin kubeconfig's cluster.
async fn admin_ca(cluster: &Cluster) -> String {
    let view: Value = serde_json::from_str(
        &cluster
            .kubectl_ok(&["config", "view", "--raw", "--minify", "-o", "json"], None)
            .await,
    )
    .expect("kubectl config view prints JSON");
    view["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap_or_else(|| panic!("the admin kubeconfig embeds no CA: {view}"))
        .to_owned()
}

/// Now, as the API's timestamps.
fn timestamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The kubelet's loop and everything it owns.
struct State {
    client: Client,
    node: String,
    relay: SocketAddr,
    ca: String,
    bin_dir: PathBuf,
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
    /// Running pods by uid.
    pods: BTreeMap<String, RunningPod>,
    /// Pods (by uid) that were stopped, failed to start or are being deleted: never started.
    done: BTreeSet<String>,
    http: reqwest::Client,
    /// Last: fields drop in order, and the bridge goes after the pods' namespaces.
    network: Arc<PodNetwork>,
}

/// One pod the kubelet runs.
struct RunningPod {
    namespace: String,
    name: String,
    netns: PodNetns,
    containers: Vec<RunningContainer>,
    init_count: usize,
    started_at: String,
    ready_since: (bool, String),
    reported: Value,
}

/// One container of a running pod.
struct RunningContainer {
    name: String,
    image: String,
    process: Option<Process>,
    probe: Option<(u16, String)>,
    started_at: String,
    exit: Option<(i32, String)>,
}

impl State {
    async fn run(mut self) {
        loop {
            if let Err(e) = self.tick().await {
                self.shared.error(format!("kubelet loop: {e}"));
            }
            tokio::time::sleep(TICK).await;
        }
    }

    async fn tick(&mut self) -> Result<(), kube::Error> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let listed: BTreeSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let endpoints = Api::<Endpoints>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        for pod in &pods {
            let (Some(uid), Some(ns), Some(name)) = (
                pod.metadata.uid.clone(),
                pod.metadata.namespace.clone(),
                pod.metadata.name.clone(),
            ) else {
                continue;
            };
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                if node.as_deref().is_none_or(|n| n == self.node) && self.done.insert(uid.clone()) {
                    let running = self.pods.remove(&uid);
                    let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
                    tokio::spawn(terminate(self.client.clone(), ns, name, uid, running, grace));
                }
                continue;
            }
            match node {
                None => self.bind(&ns, &name).await,
                Some(n) if n == self.node && !self.pods.contains_key(&uid) && !self.done.contains(&uid) => {
                    match self.start_pod(pod, &endpoints).await {
                        Ok(running) => {
                            self.pods.insert(uid, running);
                        }
                        Err(e) => {
                            self.shared.error(format!("pod {ns}/{name}: {e}"));
                            self.done.insert(uid);
                        }
                    }
                }
                Some(_) => {}
            }
        }
        // Gone without our final delete (force-deleted): stop them.
        self.pods.retain(|uid, _| listed.contains(uid));

        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in uids {
            self.report(&uid, &endpoints).await;
        }
        Ok(())
    }

    /// Binds a pod to this node, as the scheduler would.
    async fn bind(&self, namespace: &str, name: &str) {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        });
        let result: Result<Value, _> = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .create_subresource("binding", name, &PostParams::default(), &binding)
            .await;
        if let Err(e) = result {
            self.shared
                .error(format!("bind pod {namespace}/{name} to {}: {e}", self.node));
        }
    }

    /// A token of `service_account` bound to `pod`, for `audience` (the API server's own when
    /// `None`), from the TokenRequest API.
    async fn token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &Pod,
        audience: Option<&str>,
        expiration: i64,
    ) -> Result<String, String> {
        let mut spec = json!({
            "expirationSeconds": expiration,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                               "name": pod.metadata.name, "uid": pod.metadata.uid},
        });
        if let Some(audience) = audience {
            spec["audiences"] = json!([audience]);
        }
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let answer: Value = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
            .create_subresource("token", service_account, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("TokenRequest for ServiceAccount {namespace}/{service_account}: {e}"))?;
        answer["status"]["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("TokenRequest answered without a token: {answer}"))
    }

    /// Writes `data` (keys → bytes), or the `items` of it, into `dir`.
    fn write_keys(
        dir: &Path,
        data: BTreeMap<String, Vec<u8>>,
        items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    ) -> Result<(), String> {
        let files: Vec<(String, Vec<u8>)> = match items {
            None => data.into_iter().collect(),
            Some(items) => items
                .iter()
                .map(|i| {
                    data.get(&i.key)
                        .map(|v| (i.path.clone(), v.clone()))
                        .ok_or_else(|| format!("no key {:?}", i.key))
                })
                .collect::<Result<_, _>>()?,
        };
        for (path, bytes) in files {
            let file = dir.join(&path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&file, bytes).map_err(|e| format!("write {}: {e}", file.display()))?;
        }
        Ok(())
    }

    async fn config_map(&self, namespace: &str, name: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let cm = Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))?;
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        Ok(data)
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("Secret {namespace}/{name}: {e}"))?;
        Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect())
    }

    /// Makes the pod's volumes, as directories under `root`, by name.
    async fn volumes(&self, pod: &Pod, root: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let spec = pod.spec.as_ref().ok_or("no spec")?;
        let service_account = spec.service_account_name.as_deref();
        let mut dirs = BTreeMap::new();
        for volume in spec.volumes.iter().flatten() {
            let dir = root.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let name = &volume.name;
            if volume.empty_dir.is_some() {
            } else if let Some(cm) = &volume.config_map {
                let data = self.config_map(namespace, &cm.name).await?;
                Self::write_keys(&dir, data, cm.items.as_ref())?;
            } else if let Some(secret) = &volume.secret {
                let secret_name = secret.secret_name.as_deref().unwrap_or_default();
                let data = self.secret(namespace, secret_name).await?;
                Self::write_keys(&dir, data, secret.items.as_ref())?;
            } else if let Some(projected) = &volume.projected {
                for source in projected.sources.iter().flatten() {
                    if let Some(t) = &source.service_account_token {
                        let sa = service_account.ok_or_else(|| {
                            format!("volume {name} asks for a ServiceAccount token, but the pod names no ServiceAccount")
                        })?;
                        let token = self
                            .token(
                                namespace,
                                sa,
                                pod,
                                t.audience.as_deref(),
                                t.expiration_seconds.unwrap_or(3600),
                            )
                            .await?;
                        std::fs::write(dir.join(&t.path), token).map_err(|e| e.to_string())?;
                    } else if let Some(cm) = &source.config_map {
                        let data = self.config_map(namespace, &cm.name).await?;
                        Self::write_keys(&dir, data, cm.items.as_ref())?;
                    } else if let Some(secret) = &source.secret {
                        let data = self.secret(namespace, &secret.name).await?;
                        Self::write_keys(&dir, data, secret.items.as_ref())?;
                    } else {
                        return Err(format!(
                            "volume {name}: the kubelet harness supports projected serviceAccountToken, configMap and secret sources only"
                        ));
                    }
                }
            } else {
                return Err(format!(
                    "volume {name}: the kubelet harness supports emptyDir, configMap, secret and projected volumes only"
                ));
            }
            dirs.insert(volume.name.clone(), dir);
        }
        Ok(dirs)
    }

    /// The kubeconfig standing in for the in-cluster ServiceAccount mount.
    async fn api_credentials(&self, pod: &Pod, root: &Path) -> Result<Vec<(String, String)>, String> {
        let spec = pod.spec.as_ref().ok_or("no spec")?;
        let (Some(sa), true) = (
            spec.service_account_name.as_deref(),
            spec.automount_service_account_token != Some(false),
        ) else {
            return Ok(Vec::new());
        };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let token = self.token(namespace, sa, pod, None, 3600).await?;
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "in-cluster", "cluster": {
                "server": format!("https://{}", self.relay),
                "certificate-authority-data": self.ca,
                "tls-server-name": API_SERVER_NAME,
            }}],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": sa, "namespace": namespace}}],
            "current-context": "in-cluster",
        });
        let path = root.join("kubeconfig");
        std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
        Ok(vec![("KUBECONFIG".to_owned(), path.display().to_string())])
    }

    async fn start_pod(&self, pod: &Pod, endpoints: &[Endpoints]) -> Result<RunningPod, String> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref().ok_or("no spec")?;
        let mut containers: Vec<&Container> = Vec::new();
        for init in spec.init_containers.iter().flatten() {
            if init.restart_policy.as_deref() != Some("Always") {
                return Err(format!(
                    "init container {}: the kubelet harness runs native sidecars (restartPolicy: Always) only",
                    init.name
                ));
            }
            containers.push(init);
        }
        let init_count = containers.len();
        containers.extend(spec.containers.iter());

        let root = self.dir.path().join(format!("{namespace}_{name}"));
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let volumes = self.volumes(pod, &root).await?;
        let extra = self.api_credentials(pod, &root).await?;
        let network = self.network.clone();
        let netns = tokio::task::spawn_blocking(move || network.add_pod())
            .await
            .map_err(|e| e.to_string())?;
        // Names resolve from the first moment, as with a cluster DNS.
        netns.write_hosts(&dns::hosts(&namespace, &name, netns.addr(), endpoints));
        let pod_ip = netns.addr().to_string();
        let host_ip = self.network.gateway().to_string();
        let mut running = Vec::new();
        for c in containers {
            let launch = container::launch(pod, c, &volumes, (&pod_ip, &host_ip), &extra, &self.bin_dir)?;
            let process = launch.program.as_ref().map(|program| {
                let mut cmd = Command::new("ip");
                cmd.args(&netns.wrapper()[1..])
                    .arg(program)
                    .args(&launch.args)
                    .env_clear()
                    .envs(launch.env.iter().map(|(k, v)| (k, v)))
                    .current_dir(&root);
                let process = Process::spawn(&format!("{namespace}/{name}/{}", c.name), &mut cmd);
                self.shared
                    .logs
                    .lock()
                    .expect("logs")
                    .push((format!("{namespace}/{name}/{}", c.name), process.logs().clone()));
                process
            });
            running.push(RunningContainer {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                process,
                probe: probe_of(c)?,
                started_at: timestamp(),
                exit: None,
            });
        }
        Ok(RunningPod {
            namespace,
            name,
            netns,
            containers: running,
            init_count,
            started_at: timestamp(),
            ready_since: (false, timestamp()),
            reported: Value::Null,
        })
    }

    /// Refreshes the pod's hosts file, probes its containers and patches its status when it
    /// changed.
    async fn report(&mut self, uid: &str, endpoints: &[Endpoints]) {
        let Some(pod) = self.pods.get_mut(uid) else { return };
        pod.netns.write_hosts(&dns::hosts(
            &pod.namespace,
            &pod.name,
            pod.netns.addr(),
            endpoints,
        ));
        let addr = pod.netns.addr();
        let mut statuses = Vec::new();
        for c in &mut pod.containers {
            if c.exit.is_none()
                && let Some(p) = c.process.as_mut()
                && let Some(status) = p.wait_for_exit(Duration::ZERO).await
            {
                c.exit = Some((status.code().unwrap_or(-1), timestamp()));
                self.shared.error(format!(
                    "container {}/{}/{} exited with {status}",
                    pod.namespace, pod.name, c.name
                ));
            }
            let ready = c.exit.is_none()
                && match &c.probe {
                    None => true,
                    Some((port, path)) => self
                        .http
                        .get(format!("http://{addr}:{port}{path}"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success() || r.status().is_redirection()),
                };
            let state = match &c.exit {
                None => json!({"running": {"startedAt": c.started_at}}),
                Some((code, at)) => json!({"terminated": {"exitCode": code, "reason": "Error",
                                                          "startedAt": c.started_at, "finishedAt": at}}),
            };
            statuses.push(json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "containerID": format!("cellroute-kubelet://{}", c.process.as_ref().map_or(0, Process::pid)),
                "ready": ready,
                "started": c.exit.is_none(),
                "restartCount": 0,
                "state": state,
            }));
        }
        let all_ready = statuses.iter().all(|s| s["ready"] == true);
        if all_ready != pod.ready_since.0 {
            pod.ready_since = (all_ready, timestamp());
        }
        let ready = if all_ready { "True" } else { "False" };
        let since = &pod.ready_since.1;
        let containers = statuses.split_off(pod.init_count);
        let init = statuses;
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": self.network.gateway().to_string(),
            "podIP": addr.to_string(),
            "podIPs": [{"ip": addr.to_string()}],
            "startTime": pod.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": pod.started_at},
                {"type": "Initialized", "status": "True", "lastTransitionTime": pod.started_at},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": since},
                {"type": "Ready", "status": ready, "lastTransitionTime": since},
            ],
            "initContainerStatuses": init,
            "containerStatuses": containers,
        }});
        if status == pod.reported {
            return;
        }
        let result = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace)
            .patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&status))
            .await;
        match result {
            Ok(_) => pod.reported = status,
            Err(e) => self.shared.error(format!(
                "report the status of pod {}/{}: {e}",
                pod.namespace, pod.name
            )),
        }
    }
}

/// The port and path of a container's `readinessProbe`.
fn probe_of(c: &Container) -> Result<Option<(u16, String)>, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(probe) = &c.readiness_probe else {
        return Ok(None);
    };
    let get = probe.http_get.as_ref().ok_or_else(|| {
        format!(
            "container {}: the kubelet harness supports httpGet readiness probes only",
            c.name
        )
    })?;
    if get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
        return Err(format!(
            "container {}: the kubelet harness probes over HTTP only",
            c.name
        ));
    }
    let port = match &get.port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|e| e.to_string())?,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container {}: no port named {name:?}", c.name))?,
    };
    Ok(Some((port, get.path.clone().unwrap_or_else(|| "/".to_owned()))))
}

/// Stops a pod marked for deletion (SIGTERM, SIGKILL after `grace` seconds) and deletes it for
/// good, as a kubelet does.
async fn terminate(
    client: Client,
    namespace: String,
    name: String,
    uid: String,
    running: Option<RunningPod>,
    grace: i64,
) {
    if let Some(mut pod) = running {
        for c in &pod.containers {
            if c.exit.is_none()
                && let Some(p) = &c.process
            {
                p.signal(rustix::process::Signal::TERM);
            }
        }
        let grace = Duration::from_secs(u64::try_from(grace.clamp(0, 60)).unwrap_or(0));
        for c in &mut pod.containers {
            if let Some(p) = c.process.as_mut() {
                let _ = p.wait_for_exit(grace).await;
            }
        }
        // Dropping kills what is left and removes the network namespace.
        drop(pod);
    }
    let params = DeleteParams::default()
        .grace_period(0)
        .preconditions(Preconditions {
            uid: Some(uid),
            resource_version: None,
        });
    let _ = Api::<Pod>::namespaced(client, &namespace)
        .delete(&name, &params)
        .await;
}
