//! The snapshot push on a real Kubernetes API server: the control plane watches RoutingConfigs,
//! authenticates data planes with TokenReview, and the data planes present ServiceAccount tokens
//! made by the TokenRequest API with the audience `cellroute`, as a projected token volume would
//! give them. Everything a user touches goes through kubectl.
//!
//! - `kubectl apply -f examples/routing.yaml` routes every data plane accordingly, and the
//!   status (and `kubectl get rtc`) says Synced N/N;
//! - an invalid apply changes nothing on the data planes, while the status says why;
//! - deleting the object leaves the data planes serving, reported as orphaned;
//! - TokenReview: a token for another audience gets 401 before the upgrade, and a ServiceAccount
//!   of another namespace may not subscribe, unless `--allow-cross-namespace`.
//!
//! Each test has its own namespace, echo cells, control plane and data planes. They need the
//! API server that `scripts/test` starts, and fail without it.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cellroute_tests::control_plane::Options;
use cellroute_tests::example::{self, CELLS, NAME, ROUTES as EXAMPLE_ROUTES};
use cellroute_tests::fixture::Cells;
use cellroute_tests::journey::wait_synced;
use cellroute_tests::k8s::{
    Cluster, K8S_SOON, RoutingConfigs, condition, condition_of, edit, evaluates_cel, get_rtc,
    without_version_skew_warnings,
};
use cellroute_tests::push::Follower;
use cellroute_tests::push_k8s::{AUDIENCE, KubeControlPlane, follow, service_account, token};
use cellroute_tests::wait::{SOON, eventually};
use cellroute_tests::ws::{self, Upgrade};
use kube::ResourceExt;
use routing_model::crd::RoutingConfig;
use routing_model::protocol::SUBSCRIBE_PATH;
use serde_json::Value;
use tempfile::TempDir;

/// The ServiceAccount the data planes run as, in the RoutingConfig's namespace.
const SERVICE_ACCOUNT: &str = "data-plane";
/// The data planes of every test.
const DATA_PLANES: [&str; 2] = ["dp-1", "dp-2"];
/// How long "nothing changes" is watched for.
const STEADY: Duration = Duration::from_secs(1);

/// A namespace with a control plane, echo cells and two data planes subscribed to
/// `NAMESPACE/routes` with TokenRequest tokens of [`SERVICE_ACCOUNT`].
struct Fleet {
    cluster: Cluster,
    client: kube::Client,
    namespace: String,
    rtc: RoutingConfigs,
    cells: Cells,
    cp: KubeControlPlane,
    dps: Vec<Follower>,
    // Last: the directory outlives the data planes that use it.
    dir: TempDir,
}

impl Fleet {
    /// Starts everything; the RoutingConfig does not exist yet, so the data planes are
    /// connected and have no table.
    async fn start(prefix: &str) -> Self {
        let cluster = Cluster::from_env();
        let client = cluster.client().await;
        cluster.install_crd(&client).await;
        let namespace = cluster.namespace(&client, prefix).await;
        let cells = Cells::start(&CELLS).await;
        let cp = KubeControlPlane::start(&Options::new(&cluster, &namespace, "cp-0"), &[]).await;
        service_account(&cluster, &namespace, SERVICE_ACCOUNT).await;
        let token = token(&cluster, &namespace, SERVICE_ACCOUNT, Some(AUDIENCE)).await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let object = format!("{namespace}/{NAME}");
        let mut dps = Vec::new();
        for id in DATA_PLANES {
            dps.push(follow(&cp.url(), &object, id, &token, dir.path()).await);
        }
        // Subscribed before the object exists: listed, with nothing to serve them.
        cp.wait_state(&DATA_PLANES, "ORPHANED", None, K8S_SOON).await;
        for dp in &dps {
            dp.wait_connected(true, K8S_SOON).await;
            let ready = dp.admin.readyz().await;
            assert_eq!(
                ready.status, 503,
                "{}: ready with no RoutingConfig: {ready}",
                dp.id
            );
        }
        let rtc = RoutingConfigs::new(&client, &namespace);
        Self {
            cluster,
            client,
            namespace,
            rtc,
            cells,
            cp,
            dps,
            dir,
        }
    }

    /// `examples/routing.yaml` in this test's namespace, pointing at this test's cells.
    fn example(&self) -> String {
        example::localized(&self.namespace, &self.cells)
    }

    /// Writes `manifest` to a file and runs `kubectl apply -f FILE`; returns the output.
    async fn kubectl_apply(&self, manifest: &str) -> std::process::Output {
        let path = self.manifest_file(manifest);
        let path = path.display().to_string();
        self.cluster.kubectl(&["apply", "-f", &path], None).await
    }

    fn manifest_file(&self, manifest: &str) -> PathBuf {
        let path = self.dir.path().join("routing.yaml");
        std::fs::write(&path, manifest).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// `kubectl apply -f` that must succeed.
    async fn apply(&self, manifest: &str) -> String {
        let out = self.kubectl_apply(manifest).await;
        assert!(
            out.status.success(),
            "kubectl apply failed with {}:\n{}\n{manifest}",
            out.status,
            without_version_skew_warnings(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies the example and waits until every data plane routes it and the status says
    /// Synced 2/2 at version 1; returns the object.
    async fn apply_example(&self) -> RoutingConfig {
        let out = self.apply(&self.example()).await;
        assert!(out.contains("created"), "{out}");
        for dp in &self.dps {
            dp.wait_routes(&EXAMPLE_ROUTES, K8S_SOON).await;
            dp.proxy.wait_for_cell(None, "tier3", SOON).await;
        }
        self.wait_status(1, "True", 1).await
    }

    /// Waits until the status describes `generation` with `Accepted` = `accepted`, serves
    /// `version`, and says every data plane applied it: `Synced` True, `dataPlanes` 2/2.
    async fn wait_status(&self, generation: i64, accepted: &str, version: i64) -> RoutingConfig {
        let n = DATA_PLANES.len() as i64;
        wait_synced(&self.rtc, NAME, generation, accepted, version, n).await
    }

    /// The row of `kubectl get rtc` (the short name, as a user types it), as columns: NAME,
    /// ACCEPTED, VERSION, SYNCED (AGE left out).
    async fn get_rtc(&self) -> Vec<String> {
        get_rtc(&self.cluster, &self.namespace, NAME).await
    }

    /// What each data plane serves, from `/admin/config`: generation, source, mode, snapshot,
    /// hash; and how many snapshots it has received.
    async fn served(&self) -> Vec<(Value, f64)> {
        let mut out = Vec::new();
        for dp in &self.dps {
            let config = dp.config().await;
            let kept = serde_json::json!({
                "config_generation": config["config_generation"],
                "source": config["source"],
                "mode": config["mode"],
                "snapshot": config["snapshot"],
                "hash": config["hash"],
            });
            out.push((kept, dp.counter("cellroute_snapshots_received_total").await));
        }
        out
    }

    /// Asserts for [`STEADY`] that every data plane keeps routing like the example.
    async fn assert_steady_routes(&self, routes: &[(&str, &str)]) {
        let until = Instant::now() + STEADY;
        while Instant::now() < until {
            for dp in &self.dps {
                dp.assert_routes(routes).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn uid_of(obj: &RoutingConfig) -> String {
    obj.uid().expect("stored objects have a uid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_the_example_routes_every_data_plane_and_reports_synced_2_of_2() {
    let f = Fleet::start("push-apply").await;
    let obj = f.apply_example().await;
    let uid = uid_of(&obj);
    let status = obj.status.clone().expect("status");
    let snapshot = status.snapshot.clone().expect("snapshot");
    assert_eq!(
        condition_of(&obj, "Synced").message.clone(),
        "all 2 data planes applied version 1"
    );
    assert_eq!(f.get_rtc().await, ["routes", "True", "1", "2/2"]);
    f.rtc
        .wait_for_event(&uid, "Synced", "all 2 data planes applied version 1")
        .await;

    // The control plane's view, like `istioctl proxy-status`: who they are and what they run.
    let user = format!("system:serviceaccount:{}:{SERVICE_ACCOUNT}", f.namespace);
    let entries = f.cp.wait_state(&DATA_PLANES, "SYNCED", None, SOON).await;
    for entry in &entries {
        let record = &entry["record"];
        assert_eq!(record["user"], user.as_str(), "{entry}");
        assert_eq!(record["connected"], true, "{entry}");
        assert_eq!(record["acked"]["lineage"], uid.as_str(), "{entry}");
        assert_eq!(record["acked"]["version"], 1, "{entry}");
        assert_eq!(record["acked"]["hash"], snapshot.hash.as_str(), "{entry}");
        assert_eq!(
            entry["routing_config"],
            format!("{}/{NAME}", f.namespace).as_str(),
            "{entry}"
        );
    }
    assert_eq!(f.cp.metric("cellroute_connected_data_planes", &[]).await, 2.0);
    assert_eq!(f.cp.metric("cellroute_snapshot_nacks_total", &[]).await, 0.0);

    // Each data plane's own view: managed by the control plane, at the object's identity.
    for dp in &f.dps {
        let config = dp.config().await;
        assert_eq!(config["source"], "control-plane", "{}: {config}", dp.id);
        assert_eq!(config["mode"], "managed", "{}: {config}", dp.id);
        assert_eq!(config["snapshot"]["lineage"], uid.as_str(), "{}: {config}", dp.id);
        assert_eq!(config["snapshot"]["version"], 1, "{}: {config}", dp.id);
        assert_eq!(config["hash"], snapshot.hash.as_str(), "{}: {config}", dp.id);
        assert_eq!(config["control_plane"]["orphaned"], false, "{}: {config}", dp.id);
        assert_eq!(dp.admin.readyz().await.status, 200, "{}", dp.id);
    }
    let warnings: Vec<Value> =
        f.cp.logs()
            .records()
            .into_iter()
            .filter(|r| matches!(r["level"].as_str(), Some("WARN" | "ERROR")) && r["target"] != "audit")
            .collect();
    assert!(warnings.is_empty(), "the control plane warned: {warnings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_apply_changes_nothing_on_the_data_planes() {
    let f = Fleet::start("push-invalid").await;
    let good = f.apply_example().await;
    let good_hash = good
        .status
        .clone()
        .and_then(|s| s.snapshot)
        .expect("snapshot")
        .hash;
    let object = format!("{}/{NAME}", f.namespace);
    let before = f.served().await;

    // The default placement names a placement that has no endpoint.
    let bad = edit(
        &f.example(),
        &[("defaultPlacement: tier3", "defaultPlacement: tier2")],
    );
    let out = f.kubectl_apply(&bad).await;
    let stored_bad = out.status.success();
    if stored_bad {
        // A 1.20 API server has no CEL: the object is stored and the control plane judges it.
        let obj = f.wait_status(2, "False", 1).await;
        let status = obj.status.clone().expect("status");
        let accepted = condition(&status, "Accepted").expect("Accepted");
        assert_eq!(accepted.reason, "InvalidSpec", "{accepted:?}");
        assert!(
            accepted.message.contains("spec.defaultPlacement"),
            "the rejection must name the field: {accepted:?}"
        );
        eprintln!("Accepted: {} ({})", accepted.status, accepted.message);
        // A rejected generation is never Synced; the message says what the fleet still runs.
        assert_eq!(
            condition_of(&obj, "Synced").message.clone(),
            "generation 2 was rejected (see Accepted) and is not served; data planes stay on version 1 (2 of 2 \
             applied it)"
        );
        assert_eq!(status.snapshot.expect("snapshot").hash, good_hash);
        assert_eq!(f.get_rtc().await, ["routes", "False", "1", "2/2"]);
        let snapshots = f.cp.get("/debug/snapshots").await;
        let entry = snapshots.json["snapshots"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["object"] == object.as_str()))
            .unwrap_or_else(|| panic!("{object} not listed: {snapshots}"));
        assert_eq!(entry["served"]["version"], 1, "{entry}");
        assert!(!entry["rejection"].is_null(), "{entry}");
    } else {
        // A newer API server evaluates the CRD's CEL rule and refuses the apply itself.
        let stderr = without_version_skew_warnings(&out.stderr);
        assert!(
            evaluates_cel(&f.client).await && stderr.contains("default-placement-has-endpoint"),
            "kubectl apply of the invalid spec failed: {stderr}"
        );
    }

    // Nothing moved on the data planes: same routing, same generation and snapshot, no push.
    f.assert_steady_routes(&EXAMPLE_ROUTES).await;
    assert_eq!(f.served().await, before, "a data plane changed");
    for dp in &f.dps {
        let config = dp.config().await;
        assert_eq!(
            config["control_plane"]["last_nack"],
            Value::Null,
            "{}: {config}",
            dp.id
        );
        assert_eq!(config["control_plane"]["connected"], true, "{}: {config}", dp.id);
        assert_eq!(dp.admin.readyz().await.status, 200, "{}", dp.id);
    }
    let entries = f.cp.wait_state(&DATA_PLANES, "SYNCED", None, SOON).await;
    for entry in &entries {
        assert_eq!(entry["record"]["acked"]["version"], 1, "{entry}");
        assert_eq!(entry["record"]["nacked"], Value::Null, "{entry}");
    }
    assert_eq!(f.cp.metric("cellroute_snapshot_nacks_total", &[]).await, 0.0);

    // A valid edit afterwards goes through as usual: the invalid generation wedged nothing.
    let fixed = edit(&f.example(), &[("globex: tier1", "globex: tier3")]);
    f.apply(&fixed).await;
    let generation = if stored_bad { 3 } else { 2 };
    for dp in &f.dps {
        dp.wait_routes(&[("globex", "tier3"), ("acme", "tier1")], K8S_SOON)
            .await;
    }
    f.wait_status(generation, "True", generation).await;
    assert_eq!(
        f.get_rtc().await,
        ["routes", "True", &generation.to_string(), "2/2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_routing_config_leaves_the_data_planes_serving_as_orphans() {
    let f = Fleet::start("push-delete").await;
    let obj = f.apply_example().await;
    let old_uid = uid_of(&obj);
    let object = format!("{}/{NAME}", f.namespace);
    for dp in &f.dps {
        assert_eq!(
            dp.admin.metric("routing_config_orphaned", &[]).await,
            Some(0.0),
            "{}",
            dp.id
        );
    }
    let before = f.served().await;

    let path = f.manifest_file(&f.example()).display().to_string();
    let out = f.cluster.kubectl_ok(&["delete", "-f", &path], None).await;
    assert!(out.contains("deleted"), "{out}");

    for dp in &f.dps {
        eventually(&format!("{} to report orphaned", dp.id), K8S_SOON, || async {
            let config = dp.config().await;
            if config["control_plane"]["orphaned"] == true {
                Ok(())
            } else {
                Err(format!("control_plane: {}", config["control_plane"]))
            }
        })
        .await;
        assert_eq!(
            dp.admin.metric("routing_config_orphaned", &[]).await,
            Some(1.0),
            "{}",
            dp.id
        );
        dp.dp
            .wait_for_log("the data plane's log of the deletion", SOON, |r| {
                r["message"] == "the RoutingConfig was deleted; keeping the last-known-good table (orphaned)"
                    && r["routing_config"] == object.as_str()
            })
            .await;
        // Still serving its last-known-good table, still ready, still connected.
        assert_eq!(dp.admin.readyz().await.status, 200, "{}", dp.id);
        let config = dp.config().await;
        assert_eq!(config["source"], "control-plane", "{}: {config}", dp.id);
        assert_eq!(
            config["snapshot"]["lineage"],
            old_uid.as_str(),
            "{}: {config}",
            dp.id
        );
        assert_eq!(config["control_plane"]["connected"], true, "{}: {config}", dp.id);
    }
    f.assert_steady_routes(&EXAMPLE_ROUTES).await;
    assert_eq!(f.served().await, before, "a data plane changed its table");
    f.cp.wait_state(&DATA_PLANES, "ORPHANED", None, SOON).await;
    let snapshots = f.cp.get("/debug/snapshots").await;
    assert!(
        !snapshots.text.contains(&format!("\"{object}\"")),
        "{object} is still served: {snapshots}"
    );

    // Re-created: a new lineage, accepted although its version is no higher than the old one.
    let recreated = edit(&f.example(), &[("acme: tier1", "acme: tier3")]);
    let out = f.apply(&recreated).await;
    assert!(out.contains("created"), "{out}");
    for dp in &f.dps {
        dp.wait_routes(&[("acme", "tier3"), ("globex", "tier1")], K8S_SOON)
            .await;
    }
    let obj = f.wait_status(1, "True", 1).await;
    let new_uid = uid_of(&obj);
    assert_ne!(new_uid, old_uid);
    for dp in &f.dps {
        let config = dp.config().await;
        assert_eq!(
            config["snapshot"]["lineage"],
            new_uid.as_str(),
            "{}: {config}",
            dp.id
        );
        assert_eq!(config["snapshot"]["version"], 1, "{}: {config}", dp.id);
        assert_eq!(config["control_plane"]["orphaned"], false, "{}: {config}", dp.id);
        assert_eq!(
            dp.admin.metric("routing_config_orphaned", &[]).await,
            Some(0.0),
            "{}",
            dp.id
        );
    }
    f.cp.wait_state(&DATA_PLANES, "SYNCED", None, SOON).await;
}

/// The log record of a data plane whose session ended with an error containing `what`.
fn session_ended_with(what: &str) -> impl Fn(&Value) -> bool + '_ {
    move |r| {
        r["message"] == "control-plane session ended; serving the current table and reconnecting"
            && r["error"].as_str().is_some_and(|e| e.contains(what))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_admits_only_cellroute_tokens_of_the_routing_configs_namespace() {
    // dp-1 and dp-2 carry `cellroute` tokens of a ServiceAccount of the namespace: accepted.
    let f = Fleet::start("push-auth").await;
    f.apply_example().await;
    let object = format!("{}/{NAME}", f.namespace);
    let secrets = [
        f.cells.url("tier1"),
        f.cells.url("tier3"),
        "placementToEndpoint".to_owned(),
        "acme".to_owned(),
    ];

    // The same ServiceAccount's token for the API server's audience (what a pod's default
    // token carries) is refused: 401 before the upgrade, and not one byte of config.
    let apiserver_token = token(
        &f.cluster,
        &f.namespace,
        SERVICE_ACCOUNT,
        Some("https://kubernetes.default.svc"),
    )
    .await;
    let refused_401 = |cp_addr| {
        let bearer = format!("Bearer {apiserver_token}");
        let secrets = &secrets;
        async move {
            match ws::connect(cp_addr, SUBSCRIBE_PATH, Some(&bearer))
                .await
                .expect("connect")
            {
                Upgrade::Accepted(_) => panic!("upgraded with a token for another audience"),
                Upgrade::Refused(refused) => {
                    assert_eq!(refused.status, 401, "{refused}");
                    let text = refused.to_string();
                    for secret in secrets {
                        assert!(
                            !text.contains(secret.as_str()),
                            "the refusal leaks {secret}: {text}"
                        );
                    }
                }
            }
        }
    };
    refused_401(f.cp.addr()).await;
    let wrong = follow(
        &f.cp.url(),
        &object,
        "dp-wrong-audience",
        &apiserver_token,
        f.dir.path(),
    )
    .await;
    let ended = wrong
        .dp
        .wait_for_log(
            "the 401 in the data plane's log",
            K8S_SOON,
            session_ended_with("401"),
        )
        .await;
    eprintln!("a token for another audience: {}", ended["error"]);
    assert_eq!(wrong.admin.readyz().await.status, 503);
    assert_eq!(wrong.config().await["snapshot"], Value::Null);
    assert!(
        f.cp.dataplane("dp-wrong-audience").await.is_none(),
        "an unauthenticated data plane is listed"
    );
    assert!(
        f.cp.metric(
            "cellroute_refused_connections_total",
            &[("reason", "unauthenticated")]
        )
        .await
            >= 2.0
    );

    // A ServiceAccount of another namespace, with the right audience: authenticated, but it may
    // not subscribe to this namespace's RoutingConfig, on any attempt.
    let other = f.cluster.namespace(&f.client, "push-auth-other").await;
    service_account(&f.cluster, &other, "intruder").await;
    let intruder_token = token(&f.cluster, &other, "intruder", Some(AUDIENCE)).await;
    let intruder = follow(&f.cp.url(), &object, "dp-intruder", &intruder_token, f.dir.path()).await;
    let ended = intruder
        .dp
        .wait_for_log(
            "the refusal in the data plane's log",
            K8S_SOON,
            session_ended_with(&format!(
                "may only subscribe to RoutingConfigs in namespace `{other}`"
            )),
        )
        .await;
    eprintln!("another namespace's ServiceAccount: {}", ended["error"]);
    intruder
        .wait_counter("control_plane_sessions_total", 2.0, K8S_SOON)
        .await;
    let intruder_user = format!("system:serviceaccount:{other}:intruder");
    f.cp.wait_for_log("the control plane's log of the refusal", K8S_SOON, |r| {
        r["message"] == "subscription refused"
            && r["user"] == intruder_user.as_str()
            && r["data_plane"] == "dp-intruder"
    })
    .await;
    // Refused again on the reconnect.
    eventually("a second forbidden subscription", K8S_SOON, || async {
        match f
            .cp
            .metric("cellroute_refused_connections_total", &[("reason", "forbidden")])
            .await
        {
            n if n >= 2.0 => Ok(()),
            n => Err(format!("refused as forbidden {n} times")),
        }
    })
    .await;
    assert_eq!(intruder.admin.readyz().await.status, 503);
    assert_eq!(intruder.config().await["snapshot"], Value::Null);
    let reply = intruder.proxy.get("/", Some("acme")).await;
    assert_eq!(reply.status, 503, "the intruder routes: {reply}");
    if let Some(entry) = f.cp.dataplane("dp-intruder").await {
        assert_ne!(entry["state"], "SYNCED", "{entry}");
    }
    // The status counts the namespace's own two data planes, all synced.
    f.wait_status(1, "True", 1).await;

    // A second replica (same Lease: cp-0 keeps writing the status) with
    // --allow-cross-namespace lets the same token subscribe, and still checks the audience.
    let cross = KubeControlPlane::start(
        &Options::new(&f.cluster, &f.namespace, "cp-cross"),
        &["--allow-cross-namespace"],
    )
    .await;
    let allowed = follow(
        &cross.url(),
        &object,
        "dp-intruder-allowed",
        &intruder_token,
        f.dir.path(),
    )
    .await;
    allowed.wait_routes(&EXAMPLE_ROUTES, K8S_SOON).await;
    let entries = cross
        .wait_state(&["dp-intruder-allowed"], "SYNCED", None, SOON)
        .await;
    assert_eq!(
        entries[0]["record"]["user"],
        intruder_user.as_str(),
        "{}",
        entries[0]
    );
    assert_eq!(allowed.config().await["source"], "control-plane");
    refused_401(cross.addr()).await;
    f.wait_status(1, "True", 1).await;
}
