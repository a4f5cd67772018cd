//! The webhook's HTTPS endpoints (on `--inject-listen`):
//!
//! | endpoint | what it does |
//! |---|---|
//! | `POST /inject/namespace` | AdmissionReview v1 for pods of namespaces labelled `cellroute.dev/inject=enabled` |
//! | `POST /inject/pod` | AdmissionReview v1 for pods of other namespaces (injected only when annotated) |
//! | `GET /healthz` | 200 while the process runs |
//!
//! Every answer counts in `cellroute_injections_total{result}`. Pods that were injected, and
//! pods that could have expected the sidecar but were admitted without it (opted out, host
//! network, outside the watched namespace) or were refused, get an Event on their controller
//! (the ReplicaSet, Job, ...; the pod itself when it has none and a name). Dry runs get no
//! Events (the webhook declares `sideEffects: NoneOnDryRun`).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::events::{Event, EventType, Recorder};

use crate::inject::decide::{Decision, Injector, Scope, decide};
use crate::metrics::Metrics;

/// What the handlers share.
#[derive(Clone)]
pub struct InjectState {
    /// How to inject.
    pub injector: Arc<Injector>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Records Events (none out of a cluster).
    pub recorder: Option<Recorder>,
}

/// The router.
pub fn router(state: InjectState) -> Router {
    Router::new()
        .route("/inject/namespace", post(namespace_scope))
        .route("/inject/pod", post(pod_scope))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn namespace_scope(
    State(s): State<InjectState>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(review_pod(&s, Scope::Namespace, review))
}

async fn pod_scope(
    State(s): State<InjectState>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(review_pod(&s, Scope::Pod, review))
}

fn review_pod(s: &InjectState, scope: Scope, review: AdmissionReview<Pod>) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            s.metrics.injected("error");
            return AdmissionResponse::invalid("the AdmissionReview has no request").into_review();
        }
    };
    let response = AdmissionResponse::from(&request);
    let (Some(pod), Operation::Create, "pods", None) = (
        request.object.as_ref(),
        &request.operation,
        request.resource.resource.as_str(),
        request.sub_resource.as_deref(),
    ) else {
        // Only pod creations are registered; anything else passes untouched.
        s.metrics.injected("not_requested");
        return response.into_review();
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    let events = if request.dry_run { None } else { s.recorder.clone() };
    let who = pod_name(pod);
    match decide(&s.injector, scope, &namespace, pod) {
        Decision::Inject {
            patch,
            native,
            routing_config,
        } => match response.clone().with_patch(patch) {
            Ok(patched) => {
                s.metrics.injected("injected");
                tracing::info!(pod = %format!("{namespace}/{who}"), native, routing_config, "injected the data-plane sidecar");
                let kind = if native { "native sidecar" } else { "container" };
                let note = format!(
                    "pod {who}: injected the cellroute data-plane sidecar ({kind}), serving {}",
                    routing_config.replace("$(POD_NAMESPACE)", &namespace)
                );
                record(events, pod, &namespace, EventType::Normal, "Injected", note);
                patched.into_review()
            }
            Err(e) => {
                s.metrics.injected("error");
                tracing::error!(pod = %format!("{namespace}/{who}"), error = %e, "cannot encode the injection patch; admitting the pod without the sidecar");
                let note =
                    format!("pod {who}: admitted without the cellroute sidecar: the injector failed ({e})");
                record(events, pod, &namespace, EventType::Warning, "NotInjected", note);
                response.into_review()
            }
        },
        Decision::Skip(skip) => {
            s.metrics.injected(skip.as_str());
            if skip.is_notable() {
                tracing::info!(pod = %format!("{namespace}/{who}"), reason = skip.as_str(), "admitted without the sidecar");
                let note = format!(
                    "pod {who}: admitted without the cellroute sidecar: {}",
                    skip.describe()
                );
                let kind = match skip {
                    crate::inject::decide::Skip::OptedOut => EventType::Normal,
                    _ => EventType::Warning,
                };
                record(events, pod, &namespace, kind, "NotInjected", note);
            }
            response.into_review()
        }
        Decision::Deny(why) => {
            s.metrics.injected("denied");
            tracing::warn!(pod = %format!("{namespace}/{who}"), reason = %why, "refused a pod");
            record(
                events,
                pod,
                &namespace,
                EventType::Warning,
                "InjectionRefused",
                format!("pod {who}: {why}"),
            );
            response.deny(why).into_review()
        }
    }
}

/// The pod's name, or its `generateName` with `*` (the API server names it after admission).
fn pod_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => "(unnamed)".to_owned(),
    }
}

/// What an Event about the pod is attached to: its controller (the pod does not exist yet while
/// it is admitted), or the pod itself when it has no controller but has a name.
fn regarding(pod: &Pod, namespace: &str) -> Option<ObjectReference> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match (owner, &pod.metadata.name) {
        (Some(o), _) => Some(ObjectReference {
            api_version: Some(o.api_version.clone()),
            kind: Some(o.kind.clone()),
            name: Some(o.name.clone()),
            namespace: Some(namespace.to_owned()),
            uid: Some(o.uid.clone()),
            ..Default::default()
        }),
        (None, Some(name)) if !name.is_empty() => Some(ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(name.clone()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        }),
        _ => None,
    }
}

/// Publishes an Event in the background: admission never waits for it.
fn record(
    recorder: Option<Recorder>,
    pod: &Pod,
    namespace: &str,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let (Some(recorder), Some(reference)) = (recorder, regarding(pod, namespace)) else {
        return;
    };
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(routing_model::protocol::truncate(&note, 1000)),
        action: "Inject".to_owned(),
        secondary: None,
    };
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = event.reason, "cannot record an injection Event");
        }
    });
}
