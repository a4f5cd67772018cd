//! The Helm chart as users use it: rendered with `helm template` (directly, or from a parent
//! chart that depends on it by file path, as an application's chart would), read back as
//! objects, and installed with `helm install` on the run's API server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::k8s::CHART;

/// `$CELLROUTE_HELM ARGS...`, whatever its exit status.
///
/// # Panics
///
/// When `CELLROUTE_HELM` is unset or helm cannot be started.
pub fn helm(args: &[&str]) -> Output {
    let helm = std::env::var_os("CELLROUTE_HELM").unwrap_or_else(|| {
        panic!("CELLROUTE_HELM is not set: run tests/k8s/apiserver.sh install and scripts/test")
    });
    Command::new(helm).args(args).output().expect("helm runs")
}

/// `helm ARGS...`, which must succeed; its stdout.
///
/// # Panics
///
/// When helm fails; the message holds its stderr.
pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template RELEASE charts/cellroute --namespace NAMESPACE EXTRA...`.
pub fn template(release: &str, namespace: &str, extra: &[&str]) -> String {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

/// The objects of a multi-document YAML stream (empty documents left out).
///
/// # Panics
///
/// When the text is not YAML.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("not a YAML stream: {e}\n{yaml}"))
        .into_iter()
        .filter(|d| d.is_object())
        .collect()
}

/// The one object of `kind` (and `name`, when given) among `docs`.
///
/// # Panics
///
/// When there is none, or more than one.
pub fn object<'d>(docs: &'d [Value], kind: &str, name: Option<&str>) -> &'d Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} {name:?}, found {}: {:?}",
        found.len(),
        docs.iter()
            .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
            .collect::<Vec<_>>()
    );
    found[0]
}

/// The sorted kinds of `docs`.
pub fn kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect();
    kinds.sort();
    kinds
}

/// A container of a pod template or pod spec, by name.
///
/// # Panics
///
/// When there is no such container in `containers` or `initContainers`.
pub fn container<'s>(spec: &'s Value, name: &str) -> &'s Value {
    spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {spec}"))
}

/// An application chart, written into a directory of its own, that depends on
/// `charts/cellroute` by file path and adds the sidecar to its Deployment with the named
/// templates, exactly as the README tells application charts to.
#[derive(Debug)]
pub struct ParentChart {
    _dir: tempfile::TempDir,
    /// The chart's directory.
    pub path: PathBuf,
}

/// The parent's Deployment, written as the README's recipe says.
const PARENT_DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: {{ include "cellroute.dataPlane.terminationGracePeriodSeconds" . }}
      initContainers:
        {{- include "cellroute.dataPlane.initContainers" . | nindent 8 }}
      containers:
        - name: web
          image: {{ .Values.image }}
        {{- include "cellroute.dataPlane.containers" . | nindent 8 }}
      volumes:
        {{- include "cellroute.dataPlane.volumes" . | nindent 8 }}
"#;

impl ParentChart {
    /// Writes the chart (its `values.yaml` is `values`), vendors the dependency with `helm
    /// dependency update`, and returns it.
    ///
    /// # Panics
    ///
    /// When the files cannot be written or helm fails.
    pub fn create(values: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("web");
        std::fs::create_dir_all(path.join("templates")).expect("create the chart");
        let chart_dir = Path::new(CHART).canonicalize().expect("charts/cellroute exists");
        std::fs::write(
            path.join("Chart.yaml"),
            format!(
                "apiVersion: v2\nname: web\nversion: 1.0.0\nappVersion: \"\"\ndependencies:\n  - name: cellroute\n    version: \">=0.0.0-0\"\n    repository: file://{}\n",
                chart_dir.display()
            ),
        )
        .expect("write Chart.yaml");
        std::fs::write(path.join("values.yaml"), values).expect("write values.yaml");
        std::fs::write(path.join("templates/deployment.yaml"), PARENT_DEPLOYMENT)
            .expect("write the Deployment");
        helm_ok(&["dependency", "update", path.to_str().expect("UTF-8 path")]);
        Self { _dir: dir, path }
    }

    /// The chart's path as an argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("UTF-8 path")
    }
}
