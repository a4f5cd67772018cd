//! The Kubernetes API server the operator tests run against, and typed helpers to drive it.
//!
//! Tests never start a cluster themselves. `scripts/test` starts one real kube-apiserver for the
//! whole run (`tests/k8s/apiserver.sh`, see `tests/k8s/README.md`) and exports its settings
//! (`KUBECONFIG`, `CELLROUTE_KUBECTL`, `CELLROUTE_HELM`, ...), or points them at the developer's
//! own cluster. [`Cluster::from_env`] reads them and *fails* with instructions when they are
//! missing: a test that needs a cluster never passes without one.
//!
//! Tests share that cluster and run in parallel (one process per test under nextest), so:
//! - each works in its own namespace ([`Cluster::namespace`]), which it leaves behind: a lone
//!   apiserver has no controller-manager to finish deleting a namespace;
//! - the only cluster-scoped objects they share, the RoutingConfig and RoutingShard CRDs, are
//!   installed idempotently from `crds/` ([`Cluster::install_crd`]), and each replaced only when
//!   its file changed, so one test's install never disturbs another test's watches.
//!
//! RoutingConfigs are written with server-side apply under [`TEST_FIELD_MANAGER`], as `kubectl
//! apply --server-side` would, so the control plane's status is the only thing another manager
//! owns.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use routing_model::crd::{RoutingConfig, RoutingConfigStatus};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::wait::eventually_every;

/// How to get a cluster when none is configured; every "no cluster" failure says this.
pub const HOW_TO_START: &str = "start one with scripts/test (it starts a local kube-apiserver for the whole run), \
     or run `tests/k8s/apiserver.sh install && tests/k8s/apiserver.sh start DIR && . DIR/env` and then \
     cargo nextest / cargo test in that shell";

/// The field manager of the control plane's status writes.
pub const CONTROL_PLANE_MANAGER: &str = "cellroute-control-plane";

/// The field manager the tests apply RoutingConfig specs with.
pub const TEST_FIELD_MANAGER: &str = "cellroute-tests";

/// Name of the RoutingConfig CRD.
pub const CRD_NAME: &str = "routingconfigs.cellroute.dev";

/// The CRD file users install, relative to this crate.
const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/routingconfig.yaml");

/// Name of the RoutingShard CRD.
pub const SHARD_CRD_NAME: &str = "routingshards.cellroute.dev";

/// The RoutingShard CRD file, relative to this crate.
const SHARD_CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/routingshard.yaml");

/// Annotation holding the SHA-256 of the CRD file a stored CRD was installed from.
const CRD_SOURCE_ANNOTATION: &str = "tests.cellroute.dev/source-sha256";

/// How long anything a controller should do "soon" may take on a loaded 2-core machine.
pub const K8S_SOON: Duration = Duration::from_secs(30);

/// How often tests poll the API server: often enough to be quick, rarely enough that parallel
/// tests do not load it.
pub const K8S_POLL: Duration = Duration::from_millis(100);

/// Upper bound on one kubectl or helm run.
const TOOL_TIMEOUT: &str = "30s";

/// The cluster described by the environment.
#[derive(Debug, Clone)]
pub struct Cluster {
    kubeconfig: OsString,
    kubectl: PathBuf,
    helm: Option<PathBuf>,
}

impl Cluster {
    /// The cluster of `KUBECONFIG`, with the tools named by `CELLROUTE_KUBECTL` and
    /// `CELLROUTE_HELM` (as `tests/k8s/apiserver.sh start DIR` writes them to `DIR/env`).
    ///
    /// # Panics
    ///
    /// When `KUBECONFIG` or `CELLROUTE_KUBECTL` is unset or points at nothing; the message says
    /// how to start a cluster. Tests that need a cluster fail without one, they never skip.
    pub fn from_env() -> Self {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                panic!("this test needs a Kubernetes API server but KUBECONFIG is not set: {HOW_TO_START}")
            });
        for path in std::env::split_paths(&kubeconfig) {
            assert!(
                path.is_file(),
                "KUBECONFIG names {}, which does not exist (a stopped test cluster?): {HOW_TO_START}",
                path.display()
            );
        }
        let kubectl = std::env::var_os("CELLROUTE_KUBECTL")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                panic!("this test needs kubectl but CELLROUTE_KUBECTL is not set: {HOW_TO_START}")
            });
        assert!(
            kubectl.is_file(),
            "CELLROUTE_KUBECTL={} does not exist: run tests/k8s/apiserver.sh install",
            kubectl.display()
        );
        let helm = std::env::var_os("CELLROUTE_HELM")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Self {
            kubeconfig,
            kubectl,
            helm,
        }
    }

    /// The cluster of the admin kubeconfig `kubeconfig`, driven with `kubectl` and `helm` (for a
    /// cluster a test started itself, see [`crate::own_cluster`]).
    pub fn with_tools(kubeconfig: OsString, kubectl: PathBuf, helm: Option<PathBuf>) -> Self {
        Self {
            kubeconfig,
            kubectl,
            helm,
        }
    }

    /// The kubectl binary.
    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl
    }

    /// The helm binary, if there is one.
    pub fn helm_path(&self) -> Option<&Path> {
        self.helm.as_deref()
    }

    /// The `KUBECONFIG` value, to hand to a control plane running as the admin.
    pub fn kubeconfig(&self) -> &OsString {
        &self.kubeconfig
    }

    /// A client with the admin credentials of `KUBECONFIG`.
    ///
    /// # Panics
    ///
    /// When the kubeconfig cannot be read or the cluster does not answer.
    pub async fn client(&self) -> Client {
        let paths: Vec<PathBuf> = std::env::split_paths(&self.kubeconfig).collect();
        client_for(&paths).await
    }

    /// Runs kubectl (with this cluster's `KUBECONFIG`) and returns its output, whatever the exit
    /// status. `stdin` is fed to it when given.
    ///
    /// # Panics
    ///
    /// When kubectl cannot be started.
    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg(format!("--request-timeout={TOOL_TIMEOUT}"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig);
        run_tool(cmd, stdin.map(str::to_owned)).await
    }

    /// Runs kubectl without the per-request timeout [`Cluster::kubectl`] sets, for commands that
    /// watch and bound themselves (`kubectl wait --timeout=...`); returns its output, whatever
    /// the exit status.
    ///
    /// # Panics
    ///
    /// When kubectl cannot be started.
    pub async fn kubectl_watching(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.kubectl);
        cmd.args(args).env("KUBECONFIG", &self.kubeconfig);
        run_tool(cmd, None).await
    }

    /// Runs kubectl and returns its stdout.
    ///
    /// # Panics
    ///
    /// When kubectl fails; the message holds its stderr.
    pub async fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed with {}:\n{}",
            out.status,
            without_version_skew_warnings(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `helm ARGS...` and returns its stdout.
    ///
    /// # Panics
    ///
    /// When `CELLROUTE_HELM` is unset or helm fails.
    pub async fn helm_ok(&self, args: &[&str]) -> String {
        let helm = self.helm.as_ref().unwrap_or_else(|| {
            panic!("this test needs helm but CELLROUTE_HELM is not set: run tests/k8s/apiserver.sh install, then {HOW_TO_START}")
        });
        let mut cmd = Command::new(helm);
        cmd.args(args);
        let out = run_tool(cmd, None).await;
        assert!(
            out.status.success(),
            "helm {args:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Installs the CRDs of `crds/` (RoutingConfig and RoutingShard), each unless the cluster
    /// already has that exact file's CRD, waits until they are `Established`, and returns the
    /// RoutingConfig CRD. Safe to call from parallel tests.
    ///
    /// A CRD goes through the API as a plain create or update, not server-side apply: a 1.20
    /// apiserver's typed apply rejects the `x-kubernetes-validations` field it does not know,
    /// while create and update store the CRD without it (1.20 has no CEL).
    ///
    /// # Panics
    ///
    /// When a file cannot be read or the API server refuses a CRD.
    pub async fn install_crd(&self, client: &Client) -> CustomResourceDefinition {
        self.install_crd_file(client, SHARD_CRD_FILE, SHARD_CRD_NAME)
            .await;
        self.install_crd_file(client, CRD_FILE, CRD_NAME).await
    }

    async fn install_crd_file(&self, client: &Client, file: &str, name: &str) -> CustomResourceDefinition {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let digest = hex(&Sha256::digest(text.as_bytes()));
        let mut crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file} is not a CRD: {e}"));
        assert_eq!(crd.metadata.name.as_deref(), Some(name), "{file}");
        crd.annotations_mut()
            .insert(CRD_SOURCE_ANNOTATION.to_owned(), digest.clone());
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        eventually_every(
            &format!("the CRD {name} to be installed"),
            K8S_SOON,
            K8S_POLL,
            || {
                let api = api.clone();
                let mut crd = crd.clone();
                let digest = digest.clone();
                async move {
                    let result = match api.get_opt(name).await.map_err(|e| e.to_string())? {
                        None => api.create(&PostParams::default(), &crd).await,
                        Some(current)
                            if current.annotations().get(CRD_SOURCE_ANNOTATION) == Some(&digest) =>
                        {
                            return Ok(());
                        }
                        Some(current) => {
                            crd.metadata.resource_version = current.metadata.resource_version;
                            api.replace(name, &PostParams::default(), &crd).await
                        }
                    };
                    match result {
                        Ok(_) => Ok(()),
                        // Another test got there first; look again.
                        Err(e) if status_code(&e) == Some(409) => Err(e.to_string()),
                        Err(e) => panic!("the API server refused the CRD of {file}: {e}"),
                    }
                }
            },
        )
        .await;
        eventually_every(
            &format!("the CRD {name} to be Established"),
            K8S_SOON,
            K8S_POLL,
            || {
                let api = api.clone();
                async move {
                    let crd = api.get(name).await.map_err(|e| e.to_string())?;
                    let established = crd
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .into_iter()
                        .flatten()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    if established {
                        Ok(crd)
                    } else {
                        Err(format!("status: {:?}", crd.status))
                    }
                }
            },
        )
        .await
    }

    /// Creates a fresh namespace `PREFIX-<random>` and returns its name.
    ///
    /// # Panics
    ///
    /// When the API server refuses it.
    pub async fn namespace(&self, client: &Client, prefix: &str) -> String {
        let prefix: String = prefix.chars().take(40).collect();
        let name = format!("{prefix}-{}", unique_suffix());
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"tests.cellroute.dev/test": prefix}},
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        name
    }

    /// Server-side-applies the objects of a multi-document YAML stream (for example what `helm
    /// template` renders) with kubectl, as the admin.
    ///
    /// # Panics
    ///
    /// When kubectl fails.
    pub async fn apply_yaml(&self, yaml: &str) -> String {
        self.kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--field-manager",
                TEST_FIELD_MANAGER,
                "-f",
                "-",
            ],
            Some(yaml),
        )
        .await
    }
}

/// A client for the kubeconfig file(s) `paths`, merged as `KUBECONFIG` would merge them.
///
/// # Panics
///
/// When a file cannot be read or names no usable context.
pub async fn client_for(paths: &[PathBuf]) -> Client {
    let mut merged: Option<Kubeconfig> = None;
    for path in paths {
        let one =
            Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", path.display()));
        merged = Some(match merged {
            None => one,
            Some(m) => m
                .merge(one)
                .unwrap_or_else(|e| panic!("merge kubeconfig {}: {e}", path.display())),
        });
    }
    let kubeconfig = merged.unwrap_or_else(|| panic!("no kubeconfig files given: {HOW_TO_START}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {paths:?} is not usable: {e}"));
    Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a Kubernetes client: {e}"))
}

/// True when the API server evaluates CEL `x-kubernetes-validations` on custom resources
/// (beta and on by default since 1.25). A 1.20 server stores CRDs without them.
pub async fn evaluates_cel(client: &Client) -> bool {
    let Ok(info) = client.apiserver_version().await else {
        return false;
    };
    let minor: u32 = info
        .minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0);
    info.major == "1" && minor >= 25
}

/// The HTTP status of an API error, if the server answered.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// A RoutingConfig spec: `default` placement, `customers` → placement, placement → endpoint.
pub fn spec(default: &str, customers: &[(&str, &str)], endpoints: &[(&str, &str)]) -> Value {
    let map = |pairs: &[(&str, &str)]| -> serde_json::Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect()
    };
    json!({
        "defaultPlacement": default,
        "customerToPlacement": map(customers),
        "placementToEndpoint": map(endpoints),
    })
}

/// RoutingConfigs of one namespace, written the way a user's `kubectl apply --server-side` would.
#[derive(Clone)]
pub struct RoutingConfigs {
    /// The typed API of the namespace.
    pub api: Api<RoutingConfig>,
    /// The namespace.
    pub namespace: String,
}

impl RoutingConfigs {
    /// RoutingConfigs in `namespace`.
    pub fn new(client: &Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client.clone(), namespace),
            namespace: namespace.to_owned(),
        }
    }

    /// `namespace/name`, as the control plane names objects.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.namespace)
    }

    /// Applies `spec` to the RoutingConfig `name` (creating it if needed) and returns the stored
    /// object, or the API server's refusal.
    pub async fn try_apply(&self, name: &str, spec: &Value) -> Result<RoutingConfig, kube::Error> {
        let object = json!({
            "apiVersion": "cellroute.dev/v1alpha1",
            "kind": "RoutingConfig",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        });
        self.api
            .patch(
                name,
                &PatchParams::apply(TEST_FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
    }

    /// [`RoutingConfigs::try_apply`], which must succeed.
    ///
    /// # Panics
    ///
    /// When the API server refuses the object.
    pub async fn apply(&self, name: &str, spec: &Value) -> RoutingConfig {
        self.try_apply(name, spec)
            .await
            .unwrap_or_else(|e| panic!("apply RoutingConfig {}: {e}\nspec: {spec}", self.key(name)))
    }

    /// The stored object.
    ///
    /// # Panics
    ///
    /// When it cannot be read.
    pub async fn get(&self, name: &str) -> RoutingConfig {
        self.api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get RoutingConfig {}: {e}", self.key(name)))
    }

    /// Deletes the object.
    ///
    /// # Panics
    ///
    /// When the API server refuses.
    pub async fn delete(&self, name: &str) {
        self.api
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete RoutingConfig {}: {e}", self.key(name)));
    }

    /// Polls the object until `check` accepts it, and returns it.
    ///
    /// # Panics
    ///
    /// When [`K8S_SOON`] passes first; the message holds `check`'s last complaint.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&RoutingConfig) -> Result<(), String>,
    ) -> RoutingConfig {
        let check = &check;
        eventually_every(
            &format!("{what} on {}", self.key(name)),
            K8S_SOON,
            K8S_POLL,
            || async move {
                let obj = self.api.get(name).await.map_err(|e| e.to_string())?;
                check(&obj).map(|()| obj.clone()).map_err(|why| {
                    format!(
                        "{why}; generation {:?}, status {}",
                        obj.metadata.generation,
                        serde_json::to_string(&obj.status).unwrap_or_default()
                    )
                })
            },
        )
        .await
    }

    /// Waits until the status describes generation `generation` with `Accepted` = `accepted`
    /// (`"True"`, `"False"`), and returns the object.
    pub async fn wait_for_accepted(&self, name: &str, generation: i64, accepted: &str) -> RoutingConfig {
        self.wait_for(
            name,
            &format!("Accepted={accepted} for generation {generation}"),
            |obj| {
                let status = obj.status.as_ref().ok_or("no status yet")?;
                if status.observed_generation != Some(generation) {
                    return Err(format!("observedGeneration {:?}", status.observed_generation));
                }
                match condition(status, "Accepted") {
                    Some(c) if c.status == accepted && c.observed_generation == Some(generation) => Ok(()),
                    Some(c) => Err(format!("Accepted is {} ({})", c.status, c.message)),
                    None => Err("no Accepted condition".to_owned()),
                }
            },
        )
        .await
    }

    /// Every events.k8s.io/v1 Event of the namespace about the object with `uid`, oldest first.
    ///
    /// # Panics
    ///
    /// When Events cannot be listed.
    pub async fn events_about(&self, uid: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.api.clone().into_client(), &self.namespace);
        let mut events: Vec<Event> = api
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list Events in {}: {e}", self.namespace))
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
            .collect();
        events.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
        events
    }

    /// Waits until an Event about `uid` with `reason` and `note` exists, and returns it.
    pub async fn wait_for_event(&self, uid: &str, reason: &str, note: &str) -> Event {
        eventually_every(
            &format!("an Event {reason} about {uid} with note {note:?}"),
            K8S_SOON,
            K8S_POLL,
            || async move {
                let events = self.events_about(uid).await;
                events
                    .iter()
                    .find(|e| e.reason.as_deref() == Some(reason) && e.note.as_deref() == Some(note))
                    .cloned()
                    .ok_or_else(|| format!("events so far: {}", describe_events(&events)))
            },
        )
        .await
    }
}

/// The condition of type `type_`, if present.
pub fn condition<'s>(status: &'s RoutingConfigStatus, type_: &str) -> Option<&'s Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The condition of type `type_` of a stored object.
///
/// # Panics
///
/// When the object has no status or no such condition.
pub fn condition_of<'o>(obj: &'o RoutingConfig, type_: &str) -> &'o Condition {
    let status = obj
        .status
        .as_ref()
        .unwrap_or_else(|| panic!("{} has no status", obj.name_any()));
    condition(status, type_)
        .unwrap_or_else(|| panic!("{} has no {type_} condition: {status:?}", obj.name_any()))
}

/// The `(manager, operation)` of every managedFields entry that owns part of `.status`.
pub fn status_managers(obj: &RoutingConfig) -> Vec<(String, String)> {
    obj.managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:status").is_some())
        })
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// `reason: note (reporting controller/instance)` per Event, for failure messages.
pub fn describe_events(events: &[Event]) -> String {
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "[{} {} by {}/{}: {}]",
                e.type_.as_deref().unwrap_or("?"),
                e.reason.as_deref().unwrap_or("?"),
                e.reporting_controller.as_deref().unwrap_or("?"),
                e.reporting_instance.as_deref().unwrap_or("?"),
                e.note.as_deref().unwrap_or("")
            )
        })
        .collect();
    if lines.is_empty() {
        "none".to_owned()
    } else {
        lines.join(" ")
    }
}

/// Eight random lowercase hex digits, different in every call and every process.
pub fn unique_suffix() -> String {
    use std::hash::{BuildHasher, RandomState};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let x = RandomState::new().hash_one((std::process::id(), n, now));
    format!("{:08x}", x & 0xffff_ffff)
}

/// Writes a kubeconfig for the cluster of `cluster`'s current context that authenticates with
/// the bearer `token`, into `dir`, and returns its path.
///
/// # Panics
///
/// When the admin kubeconfig cannot be read or the file cannot be written.
pub async fn write_token_kubeconfig(cluster: &Cluster, token: &str, namespace: &str, dir: &Path) -> PathBuf {
    let view: Value = serde_json::from_str(
        &cluster
            .kubectl_ok(&["config", "view", "--raw", "--minify", "-o", "json"], None)
            .await,
    )
    .expect("kubectl config view prints JSON");
    let server = view["clusters"][0]["cluster"].clone();
    assert!(
        server["server"].is_string(),
        "no server in the current context: {view}"
    );
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": server}],
        "users": [{"name": "token", "user": {"token": token}}],
        "contexts": [{"name": "token", "context": {"cluster": "cluster", "user": "token", "namespace": namespace}}],
        "current-context": "token",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&config).expect("kubeconfig JSON"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The admin kubeconfig of `cluster`'s current context, as JSON, with its credentials.
async fn admin_kubeconfig(cluster: &Cluster) -> Value {
    let view: Value = serde_json::from_str(
        &cluster
            .kubectl_ok(&["config", "view", "--raw", "--minify", "-o", "json"], None)
            .await,
    )
    .expect("kubectl config view prints JSON");
    assert!(
        view["clusters"][0]["cluster"]["server"].is_string(),
        "no server in the current context: {view}"
    );
    view
}

/// The address of the API server of `cluster`'s current context (`https://IP:PORT`).
///
/// # Panics
///
/// When the server is not an `https://IP:PORT` URL.
pub async fn apiserver_addr(cluster: &Cluster) -> std::net::SocketAddr {
    let view = admin_kubeconfig(cluster).await;
    let server = view["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    server
        .strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/'))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("the API server {server:?} is not https://IP:PORT"))
}

/// Writes a copy of the admin kubeconfig that reaches the API server through `via` (a relay in
/// front of it, on the same IP so the server certificate still matches) into `dir`, and returns
/// its path.
///
/// # Panics
///
/// When the kubeconfig cannot be read or written.
pub async fn write_kubeconfig_via(cluster: &Cluster, via: std::net::SocketAddr, dir: &Path) -> PathBuf {
    let mut view = admin_kubeconfig(cluster).await;
    view["clusters"][0]["cluster"]["server"] = Value::from(format!("https://{via}"));
    let path = dir.join("kubeconfig-via-relay");
    std::fs::write(&path, serde_json::to_vec_pretty(&view).expect("kubeconfig JSON"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Runs a command to completion on the blocking pool, with `stdin` fed to it.
async fn run_tool(mut cmd: Command, stdin: Option<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        if let Some(input) = stdin {
            use std::io::Write as _;
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("write to {cmd:?}: {e}"));
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for {cmd:?}: {e}"))
    })
    .await
    .expect("tool task")
}

/// kubectl's stderr without its warnings about the version skew with a 1.20 server.
pub fn without_version_skew_warnings(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !(l.starts_with("Warning: version difference") || l.contains("version skew")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Helm chart users install.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/cellroute");

/// The chart's default `controlPlane.leaseName`, which its Deployment passes as `--lease-name`.
/// A control plane running under the chart's RBAC uses it: the Role lets it read only the status
/// key Secret named after it (`<lease-name>-status-key`).
pub const CHART_LEASE_NAME: &str = "cellroute-control-plane";

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
/// (ROLLOUT, SHARDS and AGE left out; see [`get_rtc_columns`]).
pub async fn get_rtc(cluster: &Cluster, namespace: &str, name: &str) -> Vec<String> {
    get_rtc_columns(cluster, namespace, name).await[..4].to_vec()
}

/// Every column of the row of `kubectl get rtc NAME -n NAMESPACE`: NAME, ACCEPTED, VERSION,
/// SYNCED, ROLLOUT, SHARDS, AGE, cut where the header's columns begin (an empty cell, such as
/// ROLLOUT without a rollout, is an empty string).
pub async fn get_rtc_columns(cluster: &Cluster, namespace: &str, name: &str) -> Vec<String> {
    let table = cluster
        .kubectl_ok(&["get", "rtc", name, "-n", namespace], None)
        .await;
    let mut lines = table.lines();
    let header_line = lines.next().unwrap_or_default();
    let header: Vec<&str> = header_line.split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "ACCEPTED", "VERSION", "SYNCED", "ROLLOUT", "SHARDS", "AGE"
        ],
        "{table}"
    );
    let starts: Vec<usize> = header
        .iter()
        .scan(0, |from, column| {
            let at = *from + header_line[*from..].find(column).expect("a header column");
            *from = at + column.len();
            Some(at)
        })
        .collect();
    let row = lines.next().unwrap_or_default();
    let cell = |i: usize| {
        let end = starts.get(i + 1).copied().unwrap_or(row.len()).min(row.len());
        row.get(starts[i].min(row.len())..end)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    (0..starts.len()).map(cell).collect()
}
