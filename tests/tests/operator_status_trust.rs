//! The status is no trust anchor: a replica recovers the served spec recorded in a
//! RoutingConfig's status only when this control plane signed it, for an earlier generation of
//! that very object. Tested as an attacker who may patch `routingconfigs/status` would: the
//! cluster admin forges the status with `kubectl patch --subresource=status`, a fresh replica
//! starts, and it must neither serve the forged table nor keep quiet about it.
//!
//! They need the API server that `scripts/test` starts, and fail without it.

#![forbid(unsafe_code)]

use base64::Engine as _;
use cellroute_tests::control_plane::{ControlPlane, Options};
use cellroute_tests::fixture::Cells;
use cellroute_tests::k8s::{Cluster, K8S_SOON, RoutingConfigs, describe_events, spec};
use cellroute_tests::process::field;
use cellroute_tests::push_k8s::{AUDIENCE, follow, service_account, token};
use cellroute_tests::wait::eventually;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use routing_model::ParseLimits;
use routing_model::crd::SnapshotStatus;
use serde_json::{Value, json};
use std::io::Write as _;

/// The audit message of a refused record.
const REFUSED: &str = "refused the served spec recorded in the status; not serving it";

/// Short, so a restarted replica leads quickly.
const LEASE: &str = "3";

/// An object whose generation 1 (valid) was served and whose generation 2 is rejected, with the
/// status the (now stopped) control plane wrote: the starting point of every forgery.
struct Rejected {
    cluster: Cluster,
    client: Client,
    namespace: String,
    rtc: RoutingConfigs,
    cells: Cells,
    uid: String,
    /// The honest record: generation 1, signed.
    recorded: SnapshotStatus,
}

impl Rejected {
    async fn start(prefix: &str) -> Self {
        let cluster = Cluster::from_env();
        let client = cluster.client().await;
        cluster.install_crd(&client).await;
        let namespace = cluster.namespace(&client, prefix).await;
        let cells = Cells::start(&["tier1", "tier3"]).await;
        let rtc = RoutingConfigs::new(&client, &namespace);
        let mut cp = start_replica(&cluster, &namespace, "cp-0").await;
        let uid = rtc
            .apply("routes", &good_spec(&cells, "tier1"))
            .await
            .uid()
            .expect("uid");
        rtc.wait_for_accepted("routes", 1, "True").await;
        rtc.apply(
            "routes",
            &json!({"defaultPlacement": "nowhere", "placementToEndpoint": {"tier1": cells.url("tier1")}}),
        )
        .await;
        let obj = rtc.wait_for_accepted("routes", 2, "False").await;
        let recorded = obj
            .status
            .and_then(|s| s.snapshot)
            .expect("status.snapshot while generation 2 is rejected");
        assert_eq!(recorded.version, 1);
        assert!(
            recorded.served_spec.is_some() && recorded.signature.is_some(),
            "the served spec travels signed while the current generation is rejected: {recorded:?}"
        );
        cp.stop().await;
        Self {
            cluster,
            client,
            namespace,
            rtc,
            cells,
            uid,
            recorded,
        }
    }

    fn object(&self) -> String {
        self.rtc.key("routes")
    }

    /// `kubectl patch rtc routes --subresource=status --type=merge -p {"status":{"snapshot":...}}`,
    /// as the admin.
    async fn forge(&self, snapshot: Value) {
        let patch = json!({"status": {"snapshot": snapshot}}).to_string();
        self.cluster
            .kubectl_ok(
                &[
                    "patch",
                    "rtc",
                    "routes",
                    "-n",
                    &self.namespace,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &patch,
                ],
                None,
            )
            .await;
    }

    /// The status key, read from its Secret as the admin can (the attacker of the signed-record
    /// case has it; one who can only patch status does not).
    async fn status_key(&self) -> Vec<u8> {
        let name = format!("cellroute-{}-status-key", self.namespace);
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("the control plane created no Secret {name}: {e}"));
        secret
            .data
            .and_then(|d| d.get("hmac-sha256").cloned())
            .expect("the key is under hmac-sha256")
            .0
    }

    /// A fresh replica, started after the forgery, once it has refused the record for `reason`:
    /// it counted it, logged it and published a Warning Event about the object.
    async fn fresh_replica_refusing(&self, reason: &str) -> ControlPlane {
        let cp = start_replica(&self.cluster, &self.namespace, "cp-1").await;
        eventually(
            &format!("cp-1 to count the forged record as {reason}"),
            K8S_SOON,
            || async {
                let n = cp
                    .metric("cellroute_untrusted_status_total", &[("reason", reason)])
                    .await;
                if n == 1.0 { Ok(()) } else { Err(format!("{n}")) }
            },
        )
        .await;
        let record = cp
            .wait_for_log("the audit line of the refusal", K8S_SOON, |r| {
                field(r, "message") == Some(REFUSED)
            })
            .await;
        assert_eq!(field(&record, "target"), Some("audit"), "{record}");
        assert_eq!(field(&record, "reason"), Some(reason), "{record}");
        assert_eq!(field(&record, "object"), Some(self.object().as_str()), "{record}");
        let events = eventually("a Warning Event UntrustedStatus", K8S_SOON, || async {
            let events = self.rtc.events_about(&self.uid).await;
            let found = events.iter().any(|e| {
                e.reason.as_deref() == Some("UntrustedStatus")
                    && e.type_.as_deref() == Some("Warning")
                    && e.reporting_controller.as_deref() == Some(cp.reporter().as_str())
                    && e.note.as_deref().is_some_and(|n| n.contains("forged"))
            });
            if found {
                Ok(events)
            } else {
                Err(describe_events(&events))
            }
        })
        .await;
        eprintln!("events: {}", describe_events(&events));
        cp
    }

    /// Asserts that `cp` serves nothing for the object: the forged record was not taken.
    async fn assert_serves_nothing(&self, cp: &ControlPlane) {
        let entry = cp.snapshot_of(&self.object()).await;
        let served = entry.as_ref().map_or(&Value::Null, |e| &e["served"]);
        assert!(
            served.is_null(),
            "the fresh replica serves {served} for {} after refusing its forged status; /debug/snapshots: {entry:?}",
            self.object()
        );
    }

    /// The user fixes the object (generation 3); the fresh replica accepts and serves it, as its
    /// leader writes status and removes the forged record.
    async fn fix_and_wait_served(&self, cp: &ControlPlane) -> SnapshotStatus {
        self.rtc.apply("routes", &good_spec(&self.cells, "tier3")).await;
        cp.wait_served(&self.object(), &self.uid, 3).await;
        let obj = self.rtc.wait_for_accepted("routes", 3, "True").await;
        let snapshot = obj.status.and_then(|s| s.snapshot).expect("snapshot");
        assert_eq!(snapshot.version, 3, "{snapshot:?}");
        assert!(
            snapshot.served_spec.is_none() && snapshot.signature.is_some(),
            "{snapshot:?}"
        );
        snapshot
    }
}

async fn start_replica(cluster: &Cluster, namespace: &str, identity: &str) -> ControlPlane {
    let options = Options::new(cluster, namespace, identity);
    let cp = ControlPlane::start_with(&options, &["--lease-duration", LEASE]).await;
    cp.wait_ready(K8S_SOON).await;
    cp
}

/// acme → tier1, everyone else → `default`.
fn good_spec(cells: &Cells, default: &str) -> Value {
    spec(
        default,
        &[("acme", "tier1")],
        &[("tier1", &cells.url("tier1")), ("tier3", &cells.url("tier3"))],
    )
}

/// A table nobody applied: every customer to an endpoint of the attacker's choosing.
fn evil_spec() -> Value {
    spec(
        "evil",
        &[("acme", "evil")],
        &[("evil", "http://127.0.0.1:9/attacker")],
    )
}

/// What the status writer records: gzip, then base64, of the spec's JSON.
fn encode(spec: &Value) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(spec.to_string().as_bytes()).expect("gzip");
    base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"))
}

/// The content hash the control plane computes for `spec` (`sha256:<hex>`).
fn hash_of(spec: &Value) -> String {
    let manifest = json!({"apiVersion": "cellroute.dev/v1alpha1", "kind": "RoutingConfig", "spec": spec});
    routing_model::load(manifest.to_string().as_bytes(), ParseLimits::default())
        .expect("the forged spec is itself valid")
        .hash()
        .to_string()
}

/// The signature format the README documents, computed here independently of the control plane:
/// `hmac-sha256:<key id>:<base64url MAC>` over the record's lines.
fn sign(
    key: &[u8],
    namespace: &str,
    name: &str,
    uid: &str,
    version: i64,
    hash: &str,
    generation: i64,
) -> String {
    use sha2::Digest as _;
    let id: String = sha2::Sha256::new()
        .chain_update(b"cellroute status key id\n")
        .chain_update(key)
        .finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let message =
        format!("cellroute.dev/served-table/v1\n{namespace}\n{name}\n{uid}\n{version}\n{hash}\n{generation}");
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        message.as_bytes(),
    );
    format!(
        "hmac-sha256:{id}:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_nobody_applied_with_its_matching_hash_is_not_served_and_is_reported() {
    let r = Rejected::start("trust-swapped").await;
    // The attacker replaces the served spec and makes the hash match it; the signature stays
    // the one the control plane made for generation 1's content.
    let evil = evil_spec();
    r.forge(json!({"servedSpec": encode(&evil), "hash": hash_of(&evil)}))
        .await;
    let cp = r.fresh_replica_refusing("bad_signature").await;
    r.assert_serves_nothing(&cp).await;

    // A data plane following the fresh replica gets nothing until the user's next valid
    // generation, and then exactly that: the forged table never reaches it.
    service_account(&r.cluster, &r.namespace, "data-plane").await;
    let token = token(&r.cluster, &r.namespace, "data-plane", Some(AUDIENCE)).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let dp = follow(&cp.url(), &r.object(), "dp-0", &token, dir.path()).await;
    dp.wait_connected(true, K8S_SOON).await;
    let config = dp.config().await;
    assert_eq!(
        config["config_generation"], 0,
        "the data plane got a table from a replica that serves nothing: {config}"
    );
    let fixed = r.fix_and_wait_served(&cp).await;
    eventually("the data plane to apply generation 3", K8S_SOON, || async {
        let config = dp.config().await;
        if config["snapshot"]["version"] == 3 {
            Ok(())
        } else {
            Err(config.to_string())
        }
    })
    .await;
    dp.assert_routes(&[("acme", "tier1"), ("someone", "tier3")]).await;
    let history = dp.admin.history().await.json;
    let applied: Vec<&Value> = history["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("/admin/history: {history}"))
        .iter()
        .map(|h| &h["hash"])
        .collect();
    assert_eq!(
        applied,
        [&Value::from(fixed.hash.as_str())],
        "the data plane applied something other than generation 3: {history}"
    );
    assert_eq!(cp.reconciles("error").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_served_spec_is_not_served_and_is_reported() {
    let r = Rejected::start("trust-unsigned").await;
    let evil = evil_spec();
    r.forge(json!({"servedSpec": encode(&evil), "hash": hash_of(&evil), "signature": null}))
        .await;
    let stored = r.rtc.get("routes").await;
    assert!(
        stored
            .status
            .and_then(|s| s.snapshot)
            .is_some_and(|s| s.signature.is_none()),
        "the forgery was not stored"
    );
    let cp = r.fresh_replica_refusing("missing_signature").await;
    r.assert_serves_nothing(&cp).await;
    // The leader takes the record it does not serve out of the status.
    r.rtc
        .wait_for("routes", "the forged snapshot to be removed", |obj| {
            match obj.status.as_ref().and_then(|s| s.snapshot.as_ref()) {
                None => Ok(()),
                Some(s) => Err(format!("snapshot still {s:?}")),
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_record_with_a_version_out_of_range_is_refused_and_later_generations_are_served() {
    let r = Rejected::start("trust-version").await;
    // An attacker holding the key signs the honest content with a version near the end of the
    // line: accepted, the next versions would overflow it.
    let key = r.status_key().await;
    let huge = 1_i64 << 60;
    let signature = sign(&key, &r.namespace, "routes", &r.uid, huge, &r.recorded.hash, 1);
    r.forge(json!({"version": huge, "signature": signature})).await;
    let cp = r.fresh_replica_refusing("version_out_of_range").await;
    r.assert_serves_nothing(&cp).await;
    // The next generation is served, not mistaken for an older one.
    r.fix_and_wait_served(&cp).await;

    // The signature the test computed is the control plane's own format: the same record at
    // version 1 is the honest one it wrote.
    assert_eq!(
        sign(&key, &r.namespace, "routes", &r.uid, 1, &r.recorded.hash, 1),
        r.recorded.signature.clone().unwrap_or_default(),
        "the README's signature format does not match what the control plane writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_leader_removes_a_forged_snapshot_reports_it_and_restores_its_own_record() {
    let r = Rejected::start("trust-running").await;
    // A replica that recovers the honest record and leads.
    let cp = start_replica(&r.cluster, &r.namespace, "cp-1").await;
    cp.wait_leader(K8S_SOON).await;
    cp.wait_served(&r.object(), &r.uid, 1).await;

    // The forgery arrives while it runs, serving generation 1 from memory.
    let evil = evil_spec();
    r.forge(json!({"servedSpec": encode(&evil), "hash": hash_of(&evil)}))
        .await;
    let obj = r
        .rtc
        .wait_for("routes", "the leader's own record back in the status", |obj| {
            // Everything it signed is the honest record again (`acceptedAt` is when this replica
            // recovered it).
            match obj.status.as_ref().and_then(|s| s.snapshot.as_ref()) {
                Some(s)
                    if (s.version, &s.hash, &s.served_spec, &s.signature)
                        == (
                            r.recorded.version,
                            &r.recorded.hash,
                            &r.recorded.served_spec,
                            &r.recorded.signature,
                        ) =>
                {
                    Ok(())
                }
                other => Err(format!("snapshot {other:?}")),
            }
        })
        .await;
    let foreign: Vec<_> = obj
        .managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:status"))
                .and_then(|s| s.get("f:snapshot"))
                .is_some()
        })
        .filter_map(|m| m.manager.clone())
        .filter(|m| m != "cellroute-control-plane")
        .collect();
    assert!(foreign.is_empty(), "status.snapshot still owned by {foreign:?}");

    // Reported: metric, audit line naming the writer, Warning Event.
    assert_eq!(
        cp.metric(
            "cellroute_untrusted_status_total",
            &[("reason", "written_by_other_manager")]
        )
        .await,
        1.0
    );
    let record = cp
        .wait_for_log("the audit line of the removal", K8S_SOON, |r| {
            field(r, "message") == Some("removed a status.snapshot that another field manager wrote")
        })
        .await;
    assert_eq!(field(&record, "target"), Some("audit"), "{record}");
    assert!(
        field(&record, "error").is_some_and(|e| e.contains("kubectl")),
        "the line names who wrote it: {record}"
    );
    eventually(
        "a Warning Event UntrustedStatus from the leader",
        K8S_SOON,
        || async {
            let events = r.rtc.events_about(&r.uid).await;
            let found = events.iter().any(|e| {
                e.reason.as_deref() == Some("UntrustedStatus")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("not by the control plane"))
            });
            if found {
                Ok(())
            } else {
                Err(describe_events(&events))
            }
        },
    )
    .await;
    // It still serves generation 1, not the forged table.
    let entry = cp.snapshot_of(&r.object()).await.expect("a snapshot entry");
    assert_eq!(
        entry["served"]["hash"],
        Value::from(r.recorded.hash.as_str()),
        "{entry}"
    );
}
