//! The control plane as a Kubernetes operator, on a real API server: the CRD, and what one
//! control plane does with valid, invalid, updated, deleted and re-created RoutingConfigs.
//!
//! Each test has its own namespace and control plane (see `cellroute_tests::control_plane`).
//! They need the API server that `scripts/test` starts, and fail without it.

use cellroute_tests::control_plane::Scene;
use cellroute_tests::k8s::{
    CONTROL_PLANE_MANAGER, CRD_NAME, K8S_POLL, K8S_SOON, condition_of, describe_events, evaluates_cel, spec,
    status_code, status_managers, without_version_skew_warnings,
};
use cellroute_tests::wait::eventually_every;
use kube::ResourceExt;
use serde_json::Value;

/// Endpoints are never contacted by the control plane; any well-formed URL will do.
const EP_A: &str = "http://127.0.0.1:9/a";
const EP_B: &str = "http://127.0.0.1:9/b";

fn valid_spec() -> Value {
    spec(
        "tier-a",
        &[("acme", "tier-b"), ("globex", "tier-a")],
        &[("tier-a", EP_A), ("tier-b", EP_B)],
    )
}

fn uid_of(obj: &routing_model::crd::RoutingConfig) -> String {
    obj.uid().expect("stored objects have a uid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_installs_with_short_name_printer_columns_and_field_docs() {
    let s = Scene::start("crd").await;
    let crd = s.cluster.install_crd(&s.client).await;
    assert_eq!(crd.metadata.name.as_deref(), Some(CRD_NAME));
    // Installing again is a no-op: parallel tests all call it.
    let again = s.cluster.install_crd(&s.client).await;
    assert_eq!(crd.metadata.uid, again.metadata.uid);

    let conditions = crd
        .status
        .as_ref()
        .and_then(|st| st.conditions.clone())
        .unwrap_or_default();
    for type_ in ["NamesAccepted", "Established"] {
        assert!(
            conditions.iter().any(|c| c.type_ == type_ && c.status == "True"),
            "{type_} is not True: {conditions:?}"
        );
    }
    assert_eq!(crd.spec.group, "cellroute.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "RoutingConfig");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["rtc".to_owned()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|r| r.status.as_ref())
            .is_some(),
        "no status subresource"
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Accepted", "Version", "Synced", "Rollout", "Shards", "Age"]
    );

    // The printer columns as a user sees them, through the short name.
    let created = s.rtc.apply("routes", &valid_spec()).await;
    s.rtc.wait_for_accepted("routes", 1, "True").await;
    let table = s
        .cluster
        .kubectl_ok(&["get", "rtc", "-n", &s.namespace], None)
        .await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "ACCEPTED", "VERSION", "SYNCED", "ROLLOUT", "SHARDS", "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    // SYNCED stays empty until data planes report (the snapshot push fills it).
    assert_eq!(&row[..3], ["routes", "True", "1"], "{table}");
    assert_eq!(created.metadata.generation, Some(1));

    // Field descriptions come from the Rust doc comments. The API server publishes a new CRD's
    // OpenAPI a moment after it is Established, so poll.
    let explained = eventually_every(
        "kubectl explain to describe the spec",
        K8S_SOON,
        K8S_POLL,
        || async {
            let out = s.cluster.kubectl(&["explain", "routingconfig.spec"], None).await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("defaultPlacement") {
                Ok(text)
            } else {
                Err(format!("{}{}", text, without_version_skew_warnings(&out.stderr)))
            }
        },
    )
    .await;
    for expected in [
        "customerToPlacement",
        "placementToEndpoint",
        "Placement that serves every customer not listed",
    ] {
        assert!(
            explained.contains(expected),
            "kubectl explain lacks {expected:?}:\n{explained}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_config_is_accepted_with_a_snapshot_status_and_an_event() {
    let s = Scene::start("accept").await;
    let created = s.rtc.apply("routes", &valid_spec()).await;
    let uid = uid_of(&created);

    let obj = s.rtc.wait_for_accepted("routes", 1, "True").await;
    let status = obj.status.clone().expect("status");
    assert_eq!(status.observed_generation, Some(1));
    let accepted = condition_of(&obj, "Accepted");
    assert_eq!(accepted.reason, "Valid");
    assert_eq!(
        accepted.message,
        "generation 1 accepted: 2 customers, 2 placements"
    );
    // No data plane is connected in this test, so whether the fleet has the version is unknown.
    let synced = condition_of(&obj, "Synced");
    assert_eq!(synced.status, "Unknown", "{synced:?}");
    assert!(
        !synced.reason.is_empty() && !synced.message.is_empty(),
        "{synced:?}"
    );
    assert_eq!(synced.observed_generation, Some(1));
    assert_eq!(
        status.data_planes.as_ref().map_or(0, |d| d.connected),
        0,
        "{status:?}"
    );

    let snapshot = status.snapshot.expect("status.snapshot");
    assert_eq!(snapshot.version, 1);
    assert!(
        snapshot.hash.starts_with("table-sha256:") && snapshot.hash.len() == "table-sha256:".len() + 64,
        "hash {}",
        snapshot.hash
    );

    // The status names exactly the snapshot the control plane serves.
    let entry = s.cp.wait_served(&s.rtc.key("routes"), &uid, 1).await;
    assert_eq!(entry["served"]["hash"], snapshot.hash.as_str(), "{entry}");
    assert_eq!(entry["served"]["customers"], 2, "{entry}");
    assert_eq!(entry["served"]["placements"], 2, "{entry}");
    assert!(entry["rejection"].is_null(), "{entry}");

    let event = s.rtc.wait_for_event(&uid, "Accepted", &accepted.message).await;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some(s.cp.reporter().as_str())
    );
    let regarding = event.regarding.as_ref().expect("regarding");
    assert_eq!(regarding.kind.as_deref(), Some("RoutingConfig"));
    assert_eq!(regarding.name.as_deref(), Some("routes"));
    assert_eq!(regarding.namespace.as_deref(), Some(s.namespace.as_str()));

    // Status is written by the control plane alone (merge patches, its own field manager).
    assert_eq!(
        status_managers(&obj),
        [(CONTROL_PLANE_MANAGER.to_owned(), "Update".to_owned())],
        "managedFields: {:?}",
        obj.managed_fields()
    );
    assert!(s.cp.is_leader().await);
    assert_eq!(s.cp.reconciles("accepted").await, 1.0);
    assert_eq!(s.cp.reconciles("error").await, 0.0);
    // One write; the watch event of that write must not cause another.
    assert_eq!(s.cp.status_writes_at_least(1.0).await, 1.0);
    assert_eq!(
        s.rtc.events_about(&uid).await.len(),
        1,
        "{}",
        describe_events(&s.rtc.events_about(&uid).await)
    );
    assert!(s.cp.warnings().is_empty(), "warnings: {:?}", s.cp.warnings());
}

/// One invalid kind: the spec, and the field path its condition message must name.
struct Invalid {
    what: &'static str,
    spec: Value,
    field: String,
    /// The CEL rule a CEL-capable API server rejects it with at admission, if any.
    cel_rule: Option<&'static str>,
}

fn invalid_kinds() -> Vec<Invalid> {
    let long_id = "c".repeat(254);
    vec![
        Invalid {
            what: "default placement without endpoint",
            spec: spec(
                "tier-z",
                &[("acme", "tier-b")],
                &[("tier-a", EP_A), ("tier-b", EP_B)],
            ),
            field: "spec.defaultPlacement".to_owned(),
            cel_rule: Some("default-placement-has-endpoint"),
        },
        Invalid {
            what: "customer mapped to a placement without endpoint",
            spec: spec(
                "tier-a",
                &[("acme", "tier-x")],
                &[("tier-a", EP_A), ("tier-b", EP_B)],
            ),
            field: "spec.customerToPlacement.acme".to_owned(),
            cel_rule: Some("customer-placements-have-endpoints"),
        },
        Invalid {
            what: "customer id over 253 bytes",
            spec: spec(
                "tier-a",
                &[(&long_id, "tier-b")],
                &[("tier-a", EP_A), ("tier-b", EP_B)],
            ),
            field: format!("spec.customerToPlacement.{long_id}"),
            cel_rule: None,
        },
        Invalid {
            what: "customer id with leading and trailing spaces",
            spec: spec(
                "tier-a",
                &[(" acme ", "tier-b")],
                &[("tier-a", EP_A), ("tier-b", EP_B)],
            ),
            field: r#"spec.customerToPlacement[" acme "]"#.to_owned(),
            cel_rule: None,
        },
        Invalid {
            what: "unused placement with a bad name",
            spec: spec(
                "tier-a",
                &[("acme", "tier-b")],
                &[("tier-a", EP_A), ("tier-b", EP_B), ("spare ", EP_B)],
            ),
            field: r#"spec.placementToEndpoint["spare "]"#.to_owned(),
            cel_rule: None,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_spec_is_rejected_naming_the_field_while_the_last_good_snapshot_is_served() {
    let s = Scene::start("reject").await;
    let cel = evaluates_cel(&s.client).await;
    let uid = uid_of(&s.rtc.apply("routes", &valid_spec()).await);
    let good = s.rtc.wait_for_accepted("routes", 1, "True").await;
    let good_snapshot = good.status.clone().and_then(|st| st.snapshot).expect("snapshot");
    let object = s.rtc.key("routes");

    let mut rejected_generations = 0;
    let mut first_rejection_time = None;
    for invalid in invalid_kinds() {
        let stored = match s.rtc.try_apply("routes", &invalid.spec).await {
            Ok(stored) => stored,
            // A newer API server evaluates the CRD's CEL rules and stops the spec at admission,
            // naming the rule: as good an outcome, and the served snapshot must not move either.
            Err(e) if cel && invalid.cel_rule.is_some_and(|rule| e.to_string().contains(rule)) => {
                assert_eq!(status_code(&e), Some(422), "{e}");
                let entry = s.cp.snapshot_of(&object).await.expect("still listed");
                assert_eq!(entry["served"]["version"], 1, "{}: {entry}", invalid.what);
                continue;
            }
            Err(e) => panic!("the API server refused the {} spec: {e}", invalid.what),
        };
        let generation = stored.metadata.generation.expect("generation");
        let obj = s.rtc.wait_for_accepted("routes", generation, "False").await;
        let accepted = condition_of(&obj, "Accepted").clone();
        let status = obj.status.clone().expect("status");
        let why = format!("{}: {}", invalid.what, accepted.message);
        assert_eq!(accepted.reason, "InvalidSpec", "{why}");
        assert!(
            accepted.message.contains(&invalid.field),
            "the message does not name {}; {why}",
            invalid.field
        );
        assert!(
            accepted
                .message
                .starts_with(&format!("generation {generation} rejected")),
            "{why}"
        );
        assert!(
            accepted
                .message
                .contains(&format!("still serving generation 1 ({})", good_snapshot.hash)),
            "{why}"
        );
        // The status still names the last good snapshot, unchanged, and carries its spec so
        // any replica can keep serving it.
        let snapshot = status.snapshot.as_ref().expect("snapshot kept");
        assert_eq!(
            (snapshot.version, &snapshot.hash, &snapshot.accepted_at),
            (
                good_snapshot.version,
                &good_snapshot.hash,
                &good_snapshot.accepted_at
            ),
            "{why}"
        );
        assert!(
            snapshot.served_spec.is_some(),
            "{why}: servedSpec missing while rejected"
        );
        // lastTransitionTime moves when Accepted turns False, not on each further rejection.
        let first = first_rejection_time.get_or_insert_with(|| accepted.last_transition_time.clone());
        assert_eq!(&accepted.last_transition_time, first, "{why}");

        // The control plane still serves generation 1, and says why generation N is not served.
        let entry = s.cp.snapshot_of(&object).await.expect("still listed");
        assert_eq!(entry["served"]["lineage"], uid.as_str(), "{why}: {entry}");
        assert_eq!(entry["served"]["version"], 1, "{why}: {entry}");
        assert_eq!(
            entry["served"]["hash"],
            good_snapshot.hash.as_str(),
            "{why}: {entry}"
        );
        assert_eq!(entry["rejection"]["version"], generation, "{why}: {entry}");
        assert_eq!(entry["rejection"]["lineage"], uid.as_str(), "{why}: {entry}");
        let error = entry["rejection"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(&invalid.field), "{why}: {entry}");

        let event = s.rtc.wait_for_event(&uid, "Rejected", &accepted.message).await;
        assert_eq!(event.type_.as_deref(), Some("Warning"), "{why}");
        rejected_generations += 1;
    }
    if !cel {
        assert_eq!(
            rejected_generations, 5,
            "every invalid kind reaches the operator on a server without CEL"
        );
    }

    // A valid spec again: accepted, served, the rejection forgotten.
    let fixed = spec(
        "tier-b",
        &[("acme", "tier-a")],
        &[("tier-a", EP_A), ("tier-b", EP_B)],
    );
    let generation = s
        .rtc
        .apply("routes", &fixed)
        .await
        .metadata
        .generation
        .expect("generation");
    let obj = s.rtc.wait_for_accepted("routes", generation, "True").await;
    let snapshot = obj.status.clone().and_then(|st| st.snapshot).expect("snapshot");
    assert_eq!(snapshot.version, generation);
    assert_ne!(snapshot.hash, good_snapshot.hash);
    let entry = s.cp.wait_served(&object, &uid, generation).await;
    assert!(entry["rejection"].is_null(), "{entry}");
    s.rtc
        .wait_for_event(&uid, "Accepted", &condition_of(&obj, "Accepted").message)
        .await;

    // One Event per decision, no duplicates: Accepted (1), Rejected (each), Accepted (again).
    let events = s.rtc.events_about(&uid).await;
    let reasons: Vec<&str> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    let mut expected = vec!["Accepted"];
    expected.extend(std::iter::repeat_n("Rejected", rejected_generations));
    expected.push("Accepted");
    assert_eq!(reasons, expected, "{}", describe_events(&events));
    assert_eq!(s.cp.reconciles("error").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_served_as_a_new_version() {
    let s = Scene::start("update").await;
    let object = s.rtc.key("routes");
    let uid = uid_of(&s.rtc.apply("routes", &valid_spec()).await);
    let v1 = s.rtc.wait_for_accepted("routes", 1, "True").await;
    let snap1 = v1.status.clone().and_then(|st| st.snapshot).expect("snapshot");
    let accepted1 = condition_of(&v1, "Accepted").clone();

    // Re-applying the same spec is not a change: no new generation, nothing new served.
    let same = s.rtc.apply("routes", &valid_spec()).await;
    assert_eq!(same.metadata.generation, Some(1));

    let moved = spec(
        "tier-a",
        &[("acme", "tier-b")],
        &[("tier-a", EP_B), ("tier-b", EP_B)],
    );
    assert_eq!(s.rtc.apply("routes", &moved).await.metadata.generation, Some(2));
    let v2 = s.rtc.wait_for_accepted("routes", 2, "True").await;
    let snap2 = v2.status.clone().and_then(|st| st.snapshot).expect("snapshot");
    let accepted2 = condition_of(&v2, "Accepted").clone();
    assert_eq!(snap2.version, 2);
    assert_ne!(snap2.hash, snap1.hash, "a different spec must hash differently");
    assert!(snap2.accepted_at >= snap1.accepted_at);
    assert_eq!(
        accepted2.message,
        "generation 2 accepted: 1 customers, 2 placements"
    );
    // Accepted stayed True, so its lastTransitionTime stays.
    assert_eq!(accepted2.last_transition_time, accepted1.last_transition_time);
    let entry = s.cp.wait_served(&object, &uid, 2).await;
    assert_eq!(entry["served"]["hash"], snap2.hash.as_str());
    s.rtc.wait_for_event(&uid, "Accepted", &accepted2.message).await;

    // Back to the first spec: a new version (versions never go backwards), the first hash.
    assert_eq!(
        s.rtc.apply("routes", &valid_spec()).await.metadata.generation,
        Some(3)
    );
    let v3 = s.rtc.wait_for_accepted("routes", 3, "True").await;
    let snap3 = v3.status.clone().and_then(|st| st.snapshot).expect("snapshot");
    assert_eq!((snap3.version, snap3.hash.as_str()), (3, snap1.hash.as_str()));
    s.cp.wait_served(&object, &uid, 3).await;
    // One reconcile and one status write per generation (the counter moves just after the write
    // lands, so wait for it).
    assert_eq!(s.cp.reconciles("accepted").await, 3.0);
    eventually_every("3 status writes", K8S_SOON, K8S_POLL, || async {
        let n = s.cp.status_writes().await;
        if n == 3.0 {
            Ok(())
        } else {
            Err(format!("cellroute_status_writes_total {n}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_starts_a_new_lineage() {
    let s = Scene::start("lineage").await;
    let object = s.rtc.key("routes");
    let old_uid = uid_of(&s.rtc.apply("routes", &valid_spec()).await);
    s.rtc.wait_for_accepted("routes", 1, "True").await;
    let moved = spec("tier-b", &[], &[("tier-a", EP_A), ("tier-b", EP_B)]);
    s.rtc.apply("routes", &moved).await;
    s.rtc.wait_for_accepted("routes", 2, "True").await;
    s.cp.wait_served(&object, &old_uid, 2).await;

    s.rtc.delete("routes").await;
    eventually_every(
        "the deleted object to be no longer served",
        K8S_SOON,
        K8S_POLL,
        || async {
            match s.cp.snapshot_of(&object).await {
                None => Ok(()),
                Some(entry) => Err(format!("still listed: {entry}")),
            }
        },
    )
    .await;
    s.cp.wait_for_log("the audit record of the deletion", K8S_SOON, |r| {
        r["target"] == "audit"
            && r["object"] == object.as_str()
            && r["message"].as_str().is_some_and(|m| m.contains("deleted"))
    })
    .await;

    // Same name, new object: a new lineage that starts again at version 1.
    let recreated = s.rtc.apply("routes", &moved).await;
    let new_uid = uid_of(&recreated);
    assert_ne!(new_uid, old_uid);
    assert_eq!(recreated.metadata.generation, Some(1));
    let obj = s.rtc.wait_for_accepted("routes", 1, "True").await;
    let snapshot = obj.status.clone().and_then(|st| st.snapshot).expect("snapshot");
    assert_eq!(snapshot.version, 1);
    let entry = s.cp.wait_served(&object, &new_uid, 1).await;
    assert_eq!(entry["served"]["hash"], snapshot.hash.as_str());
    let event = s
        .rtc
        .wait_for_event(&new_uid, "Accepted", &condition_of(&obj, "Accepted").message)
        .await;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(s.cp.reconciles("error").await, 0.0);
}
