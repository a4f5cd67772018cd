//! The annotations and labels the injector reads and writes: the contract with users.
//!
//! | name | on | meaning |
//! |---|---|---|
//! | `cellroute.dev/inject` (label) | Namespace | `enabled`: inject every pod of the namespace unless it opts out; `disabled`: never inject there |
//! | `cellroute.dev/inject` (label) | Pod | `disabled`: the API server never sends the pod to the injector (the control plane's own pods) |
//! | `cellroute.dev/inject` (annotation) | Pod | `"true"`: inject; `"false"`: do not, even in an `enabled` namespace |
//! | `cellroute.dev/routing-config` | Pod | `NAME` (in the pod's namespace) or `NAMESPACE/NAME` to serve |
//! | `cellroute.dev/proxy-port` | Pod | proxy port on 127.0.0.1 |
//! | `cellroute.dev/admin-port` | Pod | admin port on 127.0.0.1 |
//! | `cellroute.dev/health-port` | Pod | port of `/healthz` and `/readyz` for the probes |
//! | `cellroute.dev/shutdown-delay` | Pod | how long the sidecar keeps serving after SIGTERM (`5s`) |
//! | `cellroute.dev/shutdown-grace` | Pod | how long in-flight requests may then drain (`20s`) |
//! | `cellroute.dev/injected` | Pod | set by the injector: the cellroute version that injected it |
//!
//! A value the injector cannot use refuses the pod, naming the annotation: a pod that asked for
//! the sidecar never runs without it, or with a sidecar other than the one it asked for.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::inject::config::SidecarConfig;

/// Opt-in and opt-out (a label on namespaces, an annotation on pods).
pub const INJECT: &str = "cellroute.dev/inject";
/// The RoutingConfig to serve.
pub const ROUTING_CONFIG: &str = "cellroute.dev/routing-config";
/// Proxy port.
pub const PROXY_PORT: &str = "cellroute.dev/proxy-port";
/// Admin port.
pub const ADMIN_PORT: &str = "cellroute.dev/admin-port";
/// Health port.
pub const HEALTH_PORT: &str = "cellroute.dev/health-port";
/// `--shutdown-delay`.
pub const SHUTDOWN_DELAY: &str = "cellroute.dev/shutdown-delay";
/// `--shutdown-grace`.
pub const SHUTDOWN_GRACE: &str = "cellroute.dev/shutdown-grace";
/// Written by the injector on every pod it injects.
pub const INJECTED: &str = "cellroute.dev/injected";

/// Longest accepted shutdown delay or grace (one hour).
const MAX_SHUTDOWN_SECONDS: u32 = 3600;

/// What a pod's `cellroute.dev/inject` annotation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// No annotation.
    Unset,
    /// `"true"`.
    Inject,
    /// `"false"`.
    OptOut,
}

/// A value that cannot be used; the message names the annotation and says what would work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?}: {why}")]
pub struct AnnotationError {
    /// The annotation.
    pub annotation: &'static str,
    /// Its value (at most 64 bytes of it).
    pub value: String,
    /// What is wrong.
    pub why: String,
}

fn error(annotation: &'static str, value: &str, why: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation,
        value: routing_model::protocol::truncate(value, 64),
        why: why.into(),
    }
}

/// Reads `cellroute.dev/inject`.
pub fn request(annotations: &BTreeMap<String, String>) -> Result<Request, AnnotationError> {
    match annotations.get(INJECT).map(String::as_str) {
        None => Ok(Request::Unset),
        Some("true") => Ok(Request::Inject),
        Some("false") => Ok(Request::OptOut),
        Some(other) => Err(error(INJECT, other, "must be \"true\" or \"false\"")),
    }
}

/// The sidecar of one pod: the configured defaults with the pod's annotations applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSidecar {
    /// The value of `CELLROUTE_ROUTING_CONFIG` (`$(POD_NAMESPACE)/routes` by default).
    pub routing_config: String,
    /// Proxy port.
    pub proxy_port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// Health port.
    pub health_port: u16,
    /// Seconds of `--shutdown-delay`.
    pub shutdown_delay: u32,
    /// Seconds of `--shutdown-grace`.
    pub shutdown_grace: u32,
}

impl PodSidecar {
    /// The defaults of `config` overridden by `annotations`.
    pub fn resolve(
        config: &SidecarConfig,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, AnnotationError> {
        let routing_config = match annotations.get(ROUTING_CONFIG) {
            Some(value) => {
                check_routing_config(value).map_err(|why| error(ROUTING_CONFIG, value, why))?;
                if value.contains('/') {
                    value.clone()
                } else {
                    format!("$(POD_NAMESPACE)/{value}")
                }
            }
            None if config.routing_config.is_empty() => "$(POD_NAMESPACE)/routes".to_owned(),
            None => config.routing_config.clone(),
        };
        let sidecar = Self {
            routing_config,
            proxy_port: port(annotations, PROXY_PORT, config.proxy_port)?,
            admin_port: port(annotations, ADMIN_PORT, config.admin_port)?,
            health_port: port(annotations, HEALTH_PORT, config.health_port)?,
            shutdown_delay: seconds(annotations, SHUTDOWN_DELAY, config.shutdown_delay_seconds)?,
            shutdown_grace: seconds(annotations, SHUTDOWN_GRACE, config.shutdown_grace_seconds)?,
        };
        let ports = [
            (PROXY_PORT, sidecar.proxy_port),
            (ADMIN_PORT, sidecar.admin_port),
            (HEALTH_PORT, sidecar.health_port),
        ];
        for (i, (name, port)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                // Name the annotation the pod set (the other value is a default).
                let (set, clash) = if annotations.contains_key(*other) {
                    (*other, *name)
                } else {
                    (*name, *other)
                };
                return Err(error(
                    set,
                    &port.to_string(),
                    format!("the same port as {clash}; the sidecar needs three different ports"),
                ));
            }
        }
        Ok(sidecar)
    }

    /// The pod's `terminationGracePeriodSeconds` must exceed this, so SIGKILL never cuts the
    /// sidecar's delay and drain short.
    pub fn min_termination_grace(&self) -> i64 {
        i64::from(self.shutdown_delay) + i64::from(self.shutdown_grace) + 5
    }

    /// The sidecar's ports with the annotation that sets each, to check against the
    /// application's own.
    pub fn ports(&self) -> [(&'static str, u16); 3] {
        [
            (PROXY_PORT, self.proxy_port),
            (ADMIN_PORT, self.admin_port),
            (HEALTH_PORT, self.health_port),
        ]
    }
}

fn port(
    annotations: &BTreeMap<String, String>,
    name: &'static str,
    default: u16,
) -> Result<u16, AnnotationError> {
    match annotations.get(name) {
        None => Ok(default),
        Some(value) => match value.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(error(name, value, "must be a port number, 1-65535")),
        },
    }
}

fn seconds(
    annotations: &BTreeMap<String, String>,
    name: &'static str,
    default: u32,
) -> Result<u32, AnnotationError> {
    let Some(value) = annotations.get(name) else {
        return Ok(default);
    };
    let parsed: Duration = humantime::parse_duration(value)
        .map_err(|e| error(name, value, format!("must be a duration such as 5s or 1m ({e})")))?;
    // Whole seconds, rounded up: the pod's grace is counted in seconds.
    let secs = parsed.as_secs() + u64::from(parsed.subsec_nanos() > 0);
    match u32::try_from(secs) {
        Ok(s) if s <= MAX_SHUTDOWN_SECONDS => Ok(s),
        _ => Err(error(
            name,
            value,
            format!("must be at most {MAX_SHUTDOWN_SECONDS}s"),
        )),
    }
}

/// `NAME` or `NAMESPACE/NAME` with Kubernetes' name rules (a DNS label for the namespace, a DNS
/// subdomain for the name). The value ends up in an environment variable, where `$(...)` would
/// expand: the character set rules that out.
pub fn check_routing_config(value: &str) -> Result<(), String> {
    let (namespace, name) = match value.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, value),
    };
    if let Some(ns) = namespace
        && !is_dns_label(ns)
    {
        return Err(format!(
            "namespace {ns:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
        ));
    }
    if !is_dns_subdomain(name) {
        return Err(format!(
            "name {name:?} is not a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253); use NAME or NAMESPACE/NAME"
        ));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SidecarConfig {
        SidecarConfig::parse(
            "image: dp:1\ncontrolPlaneUrl: ws://cp:8090\nproxyPort: 8080\nadminPort: 9901\nhealthPort: 9902\n\
             shutdownDelaySeconds: 5\nshutdownGraceSeconds: 20\n",
        )
        .expect("config")
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let plain = PodSidecar::resolve(&config(), &BTreeMap::new()).expect("defaults");
        assert_eq!(plain.routing_config, "$(POD_NAMESPACE)/routes");
        assert_eq!(plain.min_termination_grace(), 30);
        let custom = PodSidecar::resolve(
            &config(),
            &annotations(&[
                (ROUTING_CONFIG, "edge"),
                (PROXY_PORT, "7000"),
                (SHUTDOWN_DELAY, "1500ms"),
                (SHUTDOWN_GRACE, "1m"),
            ]),
        )
        .expect("overrides");
        assert_eq!(custom.routing_config, "$(POD_NAMESPACE)/edge");
        assert_eq!(custom.proxy_port, 7000);
        assert_eq!((custom.shutdown_delay, custom.shutdown_grace), (2, 60));
        let other =
            PodSidecar::resolve(&config(), &annotations(&[(ROUTING_CONFIG, "shared/routes")])).unwrap();
        assert_eq!(other.routing_config, "shared/routes");
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (name, value, says) in [
            (PROXY_PORT, "0", "port number"),
            (ADMIN_PORT, "http", "port number"),
            (HEALTH_PORT, "70000", "port number"),
            (SHUTDOWN_DELAY, "soon", "duration"),
            (SHUTDOWN_GRACE, "2h", "at most"),
            (ROUTING_CONFIG, "$(HOME)", "object name"),
            (ROUTING_CONFIG, "a/b/c", "object name"),
            (ROUTING_CONFIG, "Bad_NS/routes", "namespace"),
            (PROXY_PORT, "9901", "same port"),
        ] {
            let err = PodSidecar::resolve(&config(), &annotations(&[(name, value)])).unwrap_err();
            assert_eq!(err.annotation, name, "{err}");
            assert!(err.to_string().contains(says), "{name}={value}: {err}");
        }
        assert_eq!(request(&annotations(&[(INJECT, "true")])), Ok(Request::Inject));
        assert_eq!(request(&annotations(&[(INJECT, "false")])), Ok(Request::OptOut));
        let err = request(&annotations(&[(INJECT, "yes")])).unwrap_err();
        assert!(err.to_string().contains("cellroute.dev/inject"), "{err}");
    }
}
