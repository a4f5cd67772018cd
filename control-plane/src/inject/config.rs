//! The sidecar the injector adds, as configured by the chart (`--inject-config`, the
//! `sidecar.yaml` key of the `<release>-inject` ConfigMap, rendered from the chart's
//! `dataPlane` values). Read once at start; the chart rolls the control plane when it changes.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// Why the injector's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read --inject-config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid sidecar configuration.
    #[error("--inject-config {path} is not a valid sidecar configuration: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (serde names the field).
        why: String,
    },
}

/// Whether the sidecar is a native sidecar (an init container with `restartPolicy: Always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NativeSidecar {
    /// From the API server's version: native from Kubernetes 1.29 on.
    Auto,
    /// Always native.
    True,
    /// Always a plain container.
    False,
}

/// The sidecar's defaults; per-pod annotations override some of them (see `annotations`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    /// The data-plane image.
    pub image: String,
    /// Its pull policy.
    #[serde(default = "if_not_present")]
    pub image_pull_policy: String,
    /// The control plane's `ws://` or `wss://` URL.
    pub control_plane_url: String,
    /// Proxy port (on loopback).
    pub proxy_port: u16,
    /// Admin port (on loopback).
    pub admin_port: u16,
    /// Health port (on the pod's address; `/healthz` and `/readyz` only).
    pub health_port: u16,
    /// `NAMESPACE/NAME` to serve; empty: `<pod namespace>/routes`.
    #[serde(default)]
    pub routing_config: String,
    /// `--shutdown-delay`, in seconds.
    pub shutdown_delay_seconds: u32,
    /// `--shutdown-grace`, in seconds.
    pub shutdown_grace_seconds: u32,
    /// ConfigMap with a fallback routing file (key `routing.yaml`); empty: none.
    #[serde(default)]
    pub fallback_config_map: String,
    /// Secret with the admin token (key `token`); empty: none.
    #[serde(default)]
    pub admin_token_secret: String,
    /// The container's resources, as in a pod spec.
    #[serde(default)]
    pub resources: Value,
    /// Native sidecar or plain container.
    #[serde(default = "auto")]
    pub native_sidecar: NativeSidecar,
}

fn if_not_present() -> String {
    "IfNotPresent".to_owned()
}

fn auto() -> NativeSidecar {
    NativeSidecar::Auto
}

impl SidecarConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|why| ConfigError::Invalid {
            path: path.display().to_string(),
            why,
        })
    }

    /// Parses YAML (or JSON) text and checks what serde cannot.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if config.image.trim().is_empty() {
            return Err("image: must not be empty".to_owned());
        }
        if !(config.control_plane_url.starts_with("ws://") || config.control_plane_url.starts_with("wss://"))
        {
            return Err(format!(
                "controlPlaneUrl: {:?} is not a ws:// or wss:// URL",
                config.control_plane_url
            ));
        }
        for (name, port) in [
            ("proxyPort", config.proxy_port),
            ("adminPort", config.admin_port),
            ("healthPort", config.health_port),
        ] {
            if port == 0 {
                return Err(format!("{name}: must be 1-65535"));
            }
        }
        if !config.routing_config.is_empty() {
            crate::inject::annotations::check_routing_config(&config.routing_config)
                .map_err(|why| format!("routingConfig: {why}"))?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHART_FORM: &str = "adminPort: 9901\nadminTokenSecret: \"\"\ncontrolPlaneUrl: ws://cp.ns.svc:8090\n\
        fallbackConfigMap: \"\"\nhealthPort: 9902\nimage: ghcr.io/cellroute/data-plane:0.1.0\n\
        imagePullPolicy: IfNotPresent\nnativeSidecar: auto\nproxyPort: 8080\nresources:\n  limits:\n    memory: 256Mi\n\
        routingConfig: \"\"\nshutdownDelaySeconds: 5\nshutdownGraceSeconds: 20\n";

    #[test]
    fn reads_what_the_chart_renders() {
        let config = SidecarConfig::parse(CHART_FORM).expect("valid");
        assert_eq!(config.proxy_port, 8080);
        assert_eq!(config.native_sidecar, NativeSidecar::Auto);
        assert_eq!(config.resources["limits"]["memory"], "256Mi");
    }

    #[test]
    fn names_what_is_wrong() {
        let typo = CHART_FORM.replace("proxyPort", "proxyPrt");
        assert!(SidecarConfig::parse(&typo).unwrap_err().contains("proxyPrt"));
        let url = CHART_FORM.replace("ws://cp.ns.svc:8090", "http://cp");
        assert!(
            SidecarConfig::parse(&url)
                .unwrap_err()
                .contains("controlPlaneUrl")
        );
        let rc = CHART_FORM.replace("routingConfig: \"\"", "routingConfig: \"a/b/c\"");
        assert!(SidecarConfig::parse(&rc).unwrap_err().contains("routingConfig"));
    }
}
