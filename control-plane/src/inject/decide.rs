//! What to do with one pod: inject it (and the JSON patch that does it), leave it alone (and
//! why), or refuse it (and why). A pure function of the pod, the webhook entry that sent it and
//! the configuration; the server turns its answer into the AdmissionReview, metrics and Events.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::inject::annotations::{self, AnnotationError, INJECTED, PodSidecar, Request};
use crate::inject::config::SidecarConfig;
use crate::inject::sidecar;

/// Which webhook entry of the MutatingWebhookConfiguration sent the pod (the URL path says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/inject/namespace`: the namespace is labelled `cellroute.dev/inject=enabled`; inject
    /// unless the pod opts out.
    Namespace,
    /// `/inject/pod`: any other namespace; inject only pods annotated `"true"`.
    Pod,
}

/// Why a pod was left alone; the label of `cellroute_injections_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Nothing asked for the sidecar.
    NotRequested,
    /// In an `enabled` namespace, the pod said `cellroute.dev/inject: "false"`.
    OptedOut,
    /// It already has the sidecar container.
    AlreadyInjected,
    /// It uses the node's network, where a loopback proxy port would clash between pods.
    HostNetwork,
    /// Outside the one namespace this control plane serves (`--namespace`).
    OutOfScope,
}

impl Skip {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotRequested => "not_requested",
            Self::OptedOut => "opted_out",
            Self::AlreadyInjected => "already_injected",
            Self::HostNetwork => "host_network",
            Self::OutOfScope => "out_of_scope",
        }
    }

    /// Whether users would want to know (an Event): the pod asked for, or could have expected,
    /// the sidecar.
    pub fn is_notable(self) -> bool {
        matches!(self, Self::OptedOut | Self::HostNetwork | Self::OutOfScope)
    }

    /// A sentence for the Event.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotRequested => "injection was not requested",
            Self::OptedOut => "the pod opted out with cellroute.dev/inject: \"false\"",
            Self::AlreadyInjected => "the pod already has the cellroute-data-plane container",
            Self::HostNetwork => {
                "the pod uses hostNetwork, where the sidecar's loopback ports would clash with other pods on the node"
            }
            Self::OutOfScope => {
                "the pod's namespace is not the one this control plane watches (--namespace, without --allow-cross-namespace)"
            }
        }
    }
}

/// The injector's answer about one pod.
#[derive(Debug)]
pub enum Decision {
    /// Add the sidecar with this JSON patch.
    Inject {
        /// The patch.
        patch: json_patch::Patch,
        /// Whether the sidecar is a native sidecar.
        native: bool,
        /// The RoutingConfig it serves (`CELLROUTE_ROUTING_CONFIG`).
        routing_config: String,
    },
    /// Admit the pod unchanged.
    Skip(Skip),
    /// Refuse the pod, with this message for whoever created it.
    Deny(String),
}

/// Everything [`decide`] needs besides the pod.
#[derive(Debug, Clone)]
pub struct Injector {
    /// The sidecar's defaults.
    pub config: SidecarConfig,
    /// Whether the sidecar goes into `initContainers` as a native sidecar.
    pub native: bool,
    /// The only namespace served, if the control plane watches one.
    pub watch_namespace: Option<String>,
    /// Written into `cellroute.dev/injected`.
    pub version: String,
}

/// Decides about `pod`, created in `namespace`, sent by the webhook entry `scope`.
pub fn decide(injector: &Injector, scope: Scope, namespace: &str, pod: &Pod) -> Decision {
    let empty = Default::default();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let request = match annotations::request(annotations) {
        Ok(r) => r,
        Err(e) => return Decision::Deny(denial(&e)),
    };
    let wanted = match (scope, request) {
        (_, Request::Inject) => true,
        (Scope::Namespace, Request::Unset) => true,
        (Scope::Namespace, Request::OptOut) => return Decision::Skip(Skip::OptedOut),
        (Scope::Pod, _) => false,
    };
    if !wanted {
        return Decision::Skip(Skip::NotRequested);
    }
    if let Some(watched) = &injector.watch_namespace
        && watched != namespace
    {
        return Decision::Skip(Skip::OutOfScope);
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Decision::Deny("the pod has no spec".to_owned());
    };
    let init = spec.init_containers.as_deref().unwrap_or_default();
    if spec
        .containers
        .iter()
        .chain(init)
        .any(|c| c.name == sidecar::CONTAINER)
    {
        return Decision::Skip(Skip::AlreadyInjected);
    }
    if spec.host_network == Some(true) {
        return Decision::Skip(Skip::HostNetwork);
    }
    let pod_sidecar = match PodSidecar::resolve(&injector.config, annotations) {
        Ok(s) => s,
        Err(e) => return Decision::Deny(denial(&e)),
    };
    // The sidecar's ports share the pod's network namespace with the application's.
    for c in spec.containers.iter().chain(init) {
        for declared in c.ports.as_deref().unwrap_or_default() {
            if let Some((annotation, port)) = pod_sidecar
                .ports()
                .into_iter()
                .find(|(_, p)| i32::from(*p) == declared.container_port)
            {
                return Decision::Deny(format!(
                    "cellroute sidecar injection: port {port} is already used by container {:?}; set {annotation} to a free port",
                    c.name
                ));
            }
        }
    }
    if let Some(volumes) = &spec.volumes
        && let Some(v) = volumes
            .iter()
            .find(|v| sidecar::VOLUMES.contains(&v.name.as_str()))
    {
        return Decision::Deny(format!(
            "cellroute sidecar injection: the pod already has a volume named {:?}, which the sidecar needs; rename it",
            v.name
        ));
    }

    let mut ops = Vec::new();
    let container = sidecar::container(&injector.config, &pod_sidecar, injector.native);
    if injector.native {
        // First, so that it runs before the other init containers and they can use it too.
        if init.is_empty() {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": container}));
    }
    let volumes = sidecar::volumes(&injector.config);
    if spec.volumes.as_ref().is_none_or(Vec::is_empty) {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    } else {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    }
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    let needed = pod_sidecar.min_termination_grace();
    if grace < needed {
        ops.push(json!({"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": needed}));
    }
    if pod.metadata.annotations.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    ops.push(json!({
        "op": "add",
        "path": format!("/metadata/annotations/{}", INJECTED.replace('~', "~0").replace('/', "~1")),
        "value": injector.version,
    }));
    let patch: json_patch::Patch = serde_json::from_value(Value::from(ops)).expect("well-formed JSON patch");
    Decision::Inject {
        patch,
        native: injector.native,
        routing_config: pod_sidecar.routing_config,
    }
}

fn denial(e: &AnnotationError) -> String {
    format!("cellroute sidecar injection: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector(native: bool) -> Injector {
        Injector {
            config: SidecarConfig::parse(
                "image: dp:1\ncontrolPlaneUrl: ws://cp:8090\nproxyPort: 8080\nadminPort: 9901\nhealthPort: 9902\n\
                 shutdownDelaySeconds: 5\nshutdownGraceSeconds: 30\n",
            )
            .expect("config"),
            native,
            watch_namespace: None,
            version: "0.1.0".to_owned(),
        }
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).expect("pod")
    }

    fn app(annotations: Value) -> Pod {
        pod(json!({"metadata": {"annotations": annotations},
                   "spec": {"containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8000}]}]}}))
    }

    fn applied(decision: Decision, pod: &Pod) -> Pod {
        let Decision::Inject { patch, .. } = decision else {
            panic!("not injected: {decision:?}")
        };
        let mut doc = serde_json::to_value(pod).expect("json");
        json_patch::patch(&mut doc, &patch).expect("the patch applies");
        serde_json::from_value(doc).expect("still a pod")
    }

    #[test]
    fn injects_a_plain_or_a_native_sidecar() {
        let p = app(json!({"cellroute.dev/inject": "true"}));
        let plain = applied(decide(&injector(false), Scope::Pod, "ns", &p), &p);
        let spec = plain.spec.as_ref().expect("spec");
        assert_eq!(spec.containers[1].name, "cellroute-data-plane");
        assert_eq!(spec.containers[1].restart_policy, None);
        assert_eq!(spec.termination_grace_period_seconds, Some(40));
        assert_eq!(spec.volumes.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            plain.metadata.annotations.as_ref().unwrap()["cellroute.dev/injected"],
            "0.1.0"
        );

        let with_init = pod(json!({"metadata": {},
            "spec": {"initContainers": [{"name": "migrate", "image": "m"}], "containers": [{"name": "app", "image": "a"}],
                     "volumes": [{"name": "data", "emptyDir": {}}], "terminationGracePeriodSeconds": 120}}));
        let native = applied(
            decide(&injector(true), Scope::Namespace, "ns", &with_init),
            &with_init,
        );
        let spec = native.spec.as_ref().expect("spec");
        let init = spec.init_containers.as_ref().expect("init containers");
        assert_eq!(init[0].name, "cellroute-data-plane");
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        assert_eq!(init[1].name, "migrate");
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.volumes.as_ref().map(Vec::len), Some(3));
        assert_eq!(
            spec.termination_grace_period_seconds,
            Some(120),
            "a longer grace is kept"
        );
    }

    #[test]
    fn leaves_alone_what_did_not_ask() {
        let i = injector(false);
        let skip = |scope, p: &Pod| match decide(&i, scope, "ns", p) {
            Decision::Skip(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(skip(Scope::Pod, &app(json!({}))), Skip::NotRequested);
        assert_eq!(
            skip(Scope::Pod, &app(json!({"cellroute.dev/inject": "false"}))),
            Skip::NotRequested
        );
        assert_eq!(
            skip(Scope::Namespace, &app(json!({"cellroute.dev/inject": "false"}))),
            Skip::OptedOut
        );
        let p = app(json!({"cellroute.dev/inject": "true"}));
        let injected = applied(decide(&i, Scope::Pod, "ns", &p), &p);
        assert_eq!(skip(Scope::Pod, &injected), Skip::AlreadyInjected);
        let host = pod(
            json!({"metadata": {"annotations": {"cellroute.dev/inject": "true"}},
                              "spec": {"hostNetwork": true, "containers": [{"name": "app", "image": "a"}]}}),
        );
        assert_eq!(skip(Scope::Pod, &host), Skip::HostNetwork);
        let scoped = Injector {
            watch_namespace: Some("apps".to_owned()),
            ..injector(false)
        };
        assert!(matches!(
            decide(&scoped, Scope::Pod, "other", &p),
            Decision::Skip(Skip::OutOfScope)
        ));
    }

    #[test]
    fn refuses_what_it_cannot_do_right() {
        let i = injector(false);
        let deny = |p: &Pod| match decide(&i, Scope::Pod, "ns", p) {
            Decision::Deny(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(deny(&app(json!({"cellroute.dev/inject": "yes"}))).contains("cellroute.dev/inject"));
        let clash = app(json!({"cellroute.dev/inject": "true", "cellroute.dev/proxy-port": "8000"}));
        let why = deny(&clash);
        assert!(
            why.contains("8000") && why.contains("\"app\"") && why.contains("cellroute.dev/proxy-port"),
            "{why}"
        );
        let volume = pod(
            json!({"metadata": {"annotations": {"cellroute.dev/inject": "true"}},
            "spec": {"containers": [{"name": "app", "image": "a"}], "volumes": [{"name": "cellroute-cache", "emptyDir": {}}]}}),
        );
        assert!(deny(&volume).contains("cellroute-cache"));
    }
}
