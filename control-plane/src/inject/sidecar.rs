//! The data-plane sidecar as pod-spec JSON: the same container and volumes as the chart's named
//! templates (`charts/cellroute/templates/_sidecar.tpl`) render, with the pod's overrides. A
//! test renders both and compares them.

use serde_json::{Value, json};

use crate::inject::annotations::PodSidecar;
use crate::inject::config::SidecarConfig;

/// Name of the sidecar container; a pod that has one is not injected again.
pub const CONTAINER: &str = "cellroute-data-plane";
/// Volumes the sidecar brings.
pub const VOLUMES: [&str; 4] = [
    "cellroute-token",
    "cellroute-cache",
    "cellroute-routing",
    "cellroute-admin-token",
];

/// The sidecar container. `native` adds `restartPolicy: Always`, for `initContainers`.
pub fn container(config: &SidecarConfig, pod: &PodSidecar, native: bool) -> Value {
    let mut args = vec![
        "run".to_owned(),
        format!("--listen=127.0.0.1:{}", pod.proxy_port),
        format!("--admin-listen=127.0.0.1:{}", pod.admin_port),
        format!("--health-listen=0.0.0.0:{}", pod.health_port),
        format!("--control-plane={}", config.control_plane_url),
        "--token-file=/var/run/secrets/cellroute/token".to_owned(),
        "--cache-dir=/var/cache/cellroute".to_owned(),
        format!("--shutdown-delay={}s", pod.shutdown_delay),
        format!("--shutdown-grace={}s", pod.shutdown_grace),
        "--log-format=json".to_owned(),
    ];
    let mut mounts = vec![
        json!({"name": "cellroute-token", "mountPath": "/var/run/secrets/cellroute", "readOnly": true}),
        json!({"name": "cellroute-cache", "mountPath": "/var/cache/cellroute"}),
    ];
    if !config.fallback_config_map.is_empty() {
        args.push("--config=/etc/cellroute/routing/routing.yaml".to_owned());
        mounts.push(
            json!({"name": "cellroute-routing", "mountPath": "/etc/cellroute/routing", "readOnly": true}),
        );
    }
    if !config.admin_token_secret.is_empty() {
        args.push("--admin-token-file=/etc/cellroute/admin/token".to_owned());
        mounts.push(
            json!({"name": "cellroute-admin-token", "mountPath": "/etc/cellroute/admin", "readOnly": true}),
        );
    }
    let mut container = json!({
        "name": CONTAINER,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "CELLROUTE_ROUTING_CONFIG", "value": pod.routing_config},
        ],
        "ports": [{"name": "cellroute-probe", "containerPort": pod.health_port}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "cellroute-probe"}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "cellroute-probe"}},
        "resources": if config.resources.is_null() { json!({}) } else { config.resources.clone() },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    });
    if native {
        container["restartPolicy"] = json!("Always");
    }
    container
}

/// The sidecar's volumes.
pub fn volumes(config: &SidecarConfig) -> Vec<Value> {
    let mut volumes = vec![
        json!({"name": "cellroute-token", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "audience": "cellroute", "expirationSeconds": 3600}}
        ]}}),
        json!({"name": "cellroute-cache", "emptyDir": {"sizeLimit": "64Mi"}}),
    ];
    if !config.fallback_config_map.is_empty() {
        volumes.push(json!({"name": "cellroute-routing", "configMap": {"name": config.fallback_config_map}}));
    }
    if !config.admin_token_secret.is_empty() {
        volumes.push(
            json!({"name": "cellroute-admin-token", "secret": {"secretName": config.admin_token_secret}}),
        );
    }
    volumes
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, Volume};

    #[test]
    fn renders_a_valid_container_and_volumes() {
        let config = SidecarConfig::parse(
            "image: dp:1\ncontrolPlaneUrl: ws://cp:8090\nproxyPort: 8080\nadminPort: 9901\nhealthPort: 9902\n\
             shutdownDelaySeconds: 5\nshutdownGraceSeconds: 20\nfallbackConfigMap: fb\nadminTokenSecret: at\n",
        )
        .expect("config");
        let pod = PodSidecar::resolve(&config, &Default::default()).expect("pod");
        let c: Container = serde_json::from_value(container(&config, &pod, true)).expect("a Container");
        assert_eq!(c.restart_policy.as_deref(), Some("Always"));
        let args = c.args.unwrap_or_default();
        assert!(args.contains(&"--listen=127.0.0.1:8080".to_owned()), "{args:?}");
        assert!(
            args.contains(&"--admin-listen=127.0.0.1:9901".to_owned()),
            "{args:?}"
        );
        assert!(args.contains(&"--config=/etc/cellroute/routing/routing.yaml".to_owned()));
        let v: Vec<Volume> = serde_json::from_value(Value::from(volumes(&config))).expect("Volumes");
        assert_eq!(v.len(), 4);
    }
}
