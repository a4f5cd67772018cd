//! Conditions tools can trust: the real `kubectl wait --for=condition=Synced` against the real
//! apiserver, a real control plane and real data planes.
//!
//! kubectl (v1.35, `staging/src/k8s.io/kubectl/pkg/cmd/wait/condition.go`) treats a condition
//! whose `observedGeneration` (or, without one, `status.observedGeneration`) is below
//! `metadata.generation` as not met, and otherwise compares its status. So `Synced` must be
//! `True` with the current generation only once that generation is served and every data plane
//! applied it, and must never be `True` for a rejected generation.
//!
//! It needs the API server that `scripts/test` starts, and fails without it.

#![forbid(unsafe_code)]

use std::process::Output;
use std::time::{Duration, Instant};

use cellroute_tests::control_plane::{ControlPlane, Options};
use cellroute_tests::fixture::Cells;
use cellroute_tests::k8s::{
    Cluster, K8S_POLL, K8S_SOON, RoutingConfigs, condition, spec, without_version_skew_warnings,
};
use cellroute_tests::push::{Follower, signal};
use cellroute_tests::push_k8s::{AUDIENCE, follow, service_account, token};
use cellroute_tests::wait::eventually;
use serde_json::Value;

/// `kubectl wait` for a condition of the RoutingConfig `routes`, as a user types it.
async fn kubectl_wait(cluster: &Cluster, namespace: &str, condition: &str, timeout: &str) -> Output {
    cluster
        .kubectl_watching(&[
            "wait",
            &format!("--for=condition={condition}"),
            "rtc/routes",
            "-n",
            namespace,
            &format!("--timeout={timeout}"),
        ])
        .await
}

fn succeeded(out: &Output) -> bool {
    out.status.success()
}

fn timed_out(out: &Output) -> bool {
    !out.status.success()
        && without_version_skew_warnings(&out.stderr).contains("timed out waiting for the condition")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}; stdout {:?}; stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        without_version_skew_warnings(&out.stderr)
    )
}

/// The version of the control-plane snapshot `dp` serves right now.
async fn version_of(dp: &Follower) -> Option<i64> {
    dp.config().await["snapshot"]["version"].as_i64()
}

/// A control plane, two data planes following it, and the RoutingConfig `routes`.
struct Fleet {
    cluster: Cluster,
    namespace: String,
    rtc: RoutingConfigs,
    cells: Cells,
    _cp: ControlPlane,
    dps: [Follower; 2],
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start() -> Self {
        let cluster = Cluster::from_env();
        let client = cluster.client().await;
        cluster.install_crd(&client).await;
        let namespace = cluster.namespace(&client, "conditions").await;
        let cells = Cells::start(&["tier1", "tier3"]).await;
        // A data plane paused by the test stays subscribed: the heartbeat timeout outlasts it.
        let cp = ControlPlane::start_with(
            &Options::new(&cluster, &namespace, "cp-0"),
            &["--heartbeat-timeout", "120s"],
        )
        .await;
        cp.wait_ready(K8S_SOON).await;
        cp.wait_leader(K8S_SOON).await;
        service_account(&cluster, &namespace, "data-plane").await;
        let token = token(&cluster, &namespace, "data-plane", Some(AUDIENCE)).await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let object = format!("{namespace}/routes");
        let url = cp.url();
        let (a, b) = tokio::join!(
            follow(&url, &object, "dp-a", &token, dir.path()),
            follow(&url, &object, "dp-b", &token, dir.path()),
        );
        let rtc = RoutingConfigs::new(&client, &namespace);
        Self {
            cluster,
            namespace,
            rtc,
            cells,
            _cp: cp,
            dps: [a, b],
            _dir: dir,
        }
    }

    /// A valid spec sending acme to `cell`.
    fn valid(&self, cell: &str) -> Value {
        spec(
            "tier3",
            &[("acme", cell)],
            &[
                ("tier1", &self.cells.url("tier1")),
                ("tier3", &self.cells.url("tier3")),
            ],
        )
    }

    /// Starts `kubectl wait --for=condition=Synced --timeout=60s` in the background.
    fn wait_synced_in_background(&self) -> tokio::task::JoinHandle<Output> {
        let (cluster, namespace) = (self.cluster.clone(), self.namespace.clone());
        tokio::spawn(async move { kubectl_wait(&cluster, &namespace, "Synced", "60s").await })
    }

    /// Waits until the stored `Synced` condition is `status`/`reason` for `generation`.
    async fn wait_synced_condition(&self, generation: i64, status: &str, reason: &str) {
        self.rtc
            .wait_for(
                "routes",
                &format!("Synced={status} ({reason}) for generation {generation}"),
                |obj| {
                    let c = obj
                        .status
                        .as_ref()
                        .and_then(|s| condition(s, "Synced"))
                        .ok_or("no Synced condition")?;
                    if c.status == status && c.reason == reason && c.observed_generation == Some(generation) {
                        Ok(())
                    } else {
                        Err(format!("Synced: {c:?}"))
                    }
                },
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_for_synced_returns_once_every_data_plane_applied_the_current_generation() {
    let f = Fleet::start().await;
    let [a, b] = &f.dps;

    // 1. A new object: kubectl wait returns once both data planes run generation 1, not before.
    f.rtc.apply("routes", &f.valid("tier1")).await;
    let out = kubectl_wait(&f.cluster, &f.namespace, "Synced", "60s").await;
    assert!(succeeded(&out), "{}", describe(&out));
    for dp in [a, b] {
        assert_eq!(
            version_of(dp).await,
            Some(1),
            "kubectl wait returned before {} applied generation 1",
            dp.id
        );
    }

    // 2. A valid edit while dp-b is paused: kubectl wait keeps waiting while dp-a alone has it.
    signal(b.dp.pid(), rustix::process::Signal::STOP);
    f.rtc.apply("routes", &f.valid("tier3")).await;
    let waiting = f.wait_synced_in_background();
    eventually("dp-a to apply generation 2", K8S_SOON, || async {
        match version_of(a).await {
            Some(2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    f.wait_synced_condition(2, "False", "Converging").await;
    let window = Instant::now() + Duration::from_secs(2);
    while Instant::now() < window {
        assert!(
            !waiting.is_finished(),
            "kubectl wait returned while dp-b had not applied generation 2: {}",
            describe(&waiting.await.expect("kubectl task"))
        );
        tokio::time::sleep(K8S_POLL).await;
    }
    signal(b.dp.pid(), rustix::process::Signal::CONT);
    let out = waiting.await.expect("kubectl task");
    assert!(succeeded(&out), "{}", describe(&out));
    assert_eq!(
        version_of(b).await,
        Some(2),
        "kubectl wait returned before dp-b applied generation 2"
    );
    b.assert_routes(&[("acme", "tier3")]).await;

    // 3. A rejected edit: Accepted is False and Synced is False for generation 3, so kubectl wait
    // for Synced times out, while the data planes keep generation 2.
    f.rtc
        .apply(
            "routes",
            &spec("nowhere", &[], &[("tier1", &f.cells.url("tier1"))]),
        )
        .await;
    f.rtc.wait_for_accepted("routes", 3, "False").await;
    f.wait_synced_condition(3, "False", "GenerationRejected").await;
    let out = kubectl_wait(&f.cluster, &f.namespace, "Synced", "5s").await;
    assert!(
        timed_out(&out),
        "kubectl wait --for=condition=Synced must time out on a rejected generation: {}",
        describe(&out)
    );
    let out = kubectl_wait(&f.cluster, &f.namespace, "Accepted=False", "30s").await;
    assert!(succeeded(&out), "{}", describe(&out));
    let obj = f.rtc.get("routes").await;
    let status = obj.status.expect("status");
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.snapshot.map(|s| s.version), Some(2), "still serving 2");
    assert_eq!(status.data_planes.map(|d| d.summary).as_deref(), Some("2/2"));
    for dp in [a, b] {
        assert_eq!(version_of(dp).await, Some(2), "{} moved", dp.id);
    }

    // 4. Fixed: generation 4 is served and applied, and kubectl wait returns again.
    f.rtc.apply("routes", &f.valid("tier1")).await;
    let out = kubectl_wait(&f.cluster, &f.namespace, "Synced", "60s").await;
    assert!(succeeded(&out), "{}", describe(&out));
    for dp in [a, b] {
        assert_eq!(
            version_of(dp).await,
            Some(4),
            "kubectl wait returned before {} applied generation 4",
            dp.id
        );
    }
}
