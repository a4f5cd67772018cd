//! Staged rollout on a real Kubernetes API server, with real data planes and echo cells: a
//! RoutingConfig with `spec.rollout` is applied with `kubectl apply`, and each new table
//! reaches the data planes a cohort at a time.
//!
//! - a good table goes 10 % → 50 % → 100 %, each pause honoured, with `status.rollout`, the
//!   ROLLOUT column and Events showing each step, and no data plane ever ahead of its step;
//! - a table one canary data plane refuses (NACK) halts at the first step: the previous table
//!   comes back as a new version, and the data planes outside the step never see the bad one;
//! - a table that sends a customer to a cell answering 500 halts at the first step on the error
//!   ratio the canary reports, naming the placement, and is reverted the same way;
//! - the annotations pause, resume, promote and abort a rollout, and `strategy: Immediate` is
//!   the break-glass;
//! - with two control-plane replicas, each serves its data planes their cohort's version, and a
//!   new leader resumes at the recorded step.
//!
//! The data planes' ids are chosen by their cohort (`routing_model::rollout::cohort`, the same
//! function the control plane uses), so each test knows which one is in which step. They need
//! the API server that `scripts/test` starts, and fail without it.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cellroute_tests::control_plane::Options;
use cellroute_tests::fixture::Cells;
use cellroute_tests::k8s::{
    Cluster, K8S_SOON, RoutingConfigs, condition, get_rtc_columns, without_version_skew_warnings,
};
use cellroute_tests::push::{Follower, Load};
use cellroute_tests::push_k8s::{AUDIENCE, KubeControlPlane, follow_with, service_account, token};
use cellroute_tests::wait::eventually;
use kube::ResourceExt;
use routing_model::crd::{RolloutPhase, RolloutStatus, RoutingConfig};
use routing_model::rollout::{COHORT_BUCKETS, cohort};
use tempfile::TempDir;

const NAME: &str = "routes";
const SERVICE_ACCOUNT: &str = "data-plane";

/// The first data plane id of the form `PREFIX-N` whose cohort is in `buckets`.
fn id_in(prefix: &str, buckets: std::ops::Range<u32>) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| buckets.contains(&cohort(id)))
        .expect("some id falls in every range")
}

/// A namespace with a control plane, two echo cells and three data planes: one in the 10 %
/// cohort, one in the 50 % cohort but not the 10 % one, and one outside both.
struct Fleet {
    cluster: Cluster,
    rtc: RoutingConfigs,
    namespace: String,
    cells: Cells,
    /// The control planes (`cp-0` first, the leader).
    cps: Vec<Option<KubeControlPlane>>,
    /// In the first 10 %.
    first: Follower,
    /// In the first 50 %, not the first 10 %.
    second: Follower,
    /// In neither.
    rest: Follower,
    dir: TempDir,
}

impl Fleet {
    /// Starts everything; `first_args` are extra arguments of the 10 % data plane.
    async fn start(prefix: &str, first_args: &[&str]) -> Self {
        Self::start_with(prefix, first_args, 1, [0, 0, 0]).await
    }

    /// Starts `replicas` control planes (`cp-0` leads) with 3 s Leases, and connects the first,
    /// second and rest data planes to the replicas `connect_to` names.
    async fn start_with(prefix: &str, first_args: &[&str], replicas: usize, connect_to: [usize; 3]) -> Self {
        let cluster = Cluster::from_env();
        let client = cluster.client().await;
        cluster.install_crd(&client).await;
        let namespace = cluster.namespace(&client, prefix).await;
        let cells = Cells::start(&["tier1", "tier3"]).await;
        let mut cps = Vec::new();
        for i in 0..replicas {
            let options = Options::new(&cluster, &namespace, &format!("cp-{i}"));
            let cp = KubeControlPlane::start(&options, &["--lease-duration", "3"]).await;
            if i == 0 {
                wait_leader(&cp).await;
            }
            cps.push(Some(cp));
        }
        let url = |i: usize| cps[connect_to[i]].as_ref().expect("running").url();
        service_account(&cluster, &namespace, SERVICE_ACCOUNT).await;
        let token = token(&cluster, &namespace, SERVICE_ACCOUNT, Some(AUDIENCE)).await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let object = format!("{namespace}/{NAME}");
        let tenth = COHORT_BUCKETS / 10;
        let half = COHORT_BUCKETS / 2;
        let ids = [
            id_in("dp", 0..tenth),
            id_in("dp", tenth..half),
            id_in("dp", half..COHORT_BUCKETS),
        ];
        let first = follow_with(&url(0), &object, &ids[0], &token, dir.path(), first_args).await;
        let second = follow_with(&url(1), &object, &ids[1], &token, dir.path(), &[]).await;
        let rest = follow_with(&url(2), &object, &ids[2], &token, dir.path(), &[]).await;
        for dp in [&first, &second, &rest] {
            dp.wait_connected(true, K8S_SOON).await;
        }
        Self {
            rtc: RoutingConfigs::new(&client, &namespace),
            cluster,
            namespace,
            cells,
            cps,
            first,
            second,
            rest,
            dir,
        }
    }

    fn data_planes(&self) -> [&Follower; 3] {
        [&self.first, &self.second, &self.rest]
    }

    /// The RoutingConfig manifest: `acme` in `acme_cell`, `extra` customers in tier1, and the
    /// rollout `rollout` (flow YAML). Placement `broken` is tier1's cell at `/status/500`, which
    /// answers every request with a 500.
    fn manifest(&self, acme_cell: &str, extra: &[&str], rollout: &str) -> String {
        let mut customers = format!("acme: {acme_cell}");
        for c in extra {
            customers.push_str(&format!(", {c}: tier1"));
        }
        format!(
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nmetadata: {{name: {NAME}, namespace: {}}}\nspec:\n  defaultPlacement: tier3\n  customerToPlacement: {{{customers}}}\n  placementToEndpoint: {{tier1: '{}', tier3: '{}', broken: '{}/status/500'}}\n  rollout: {rollout}\n",
            self.namespace,
            self.cells.url("tier1"),
            self.cells.url("tier3"),
            self.cells.url("tier1"),
        )
    }

    /// `kubectl apply -f FILE`, as a user runs it; it must succeed.
    async fn apply(&self, manifest: &str) {
        let path: PathBuf = self.dir.path().join("routing.yaml");
        std::fs::write(&path, manifest).expect("write the manifest");
        let out = self
            .cluster
            .kubectl(&["apply", "-f", &path.display().to_string()], None)
            .await;
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{manifest}",
            without_version_skew_warnings(&out.stderr)
        );
    }

    /// `kubectl annotate --overwrite rtc/routes KEY=VALUE` (or `KEY-` to remove it).
    async fn annotate(&self, annotation: &str) {
        self.cluster
            .kubectl_ok(
                &[
                    "annotate",
                    "--overwrite",
                    "rtc",
                    NAME,
                    "-n",
                    &self.namespace,
                    annotation,
                ],
                None,
            )
            .await;
    }

    /// The version each data plane serves, from its `/admin/config`.
    async fn versions(&self) -> [i64; 3] {
        let mut out = [0; 3];
        for (i, dp) in self.data_planes().into_iter().enumerate() {
            out[i] = dp.config().await["snapshot"]["version"].as_i64().unwrap_or(0);
        }
        out
    }

    /// Waits until every data plane serves `version`.
    async fn wait_versions(&self, versions: [i64; 3]) {
        eventually(
            &format!("the data planes on versions {versions:?}"),
            K8S_SOON,
            || async {
                let now = self.versions().await;
                if now == versions {
                    Ok(())
                } else {
                    Err(format!("{now:?}"))
                }
            },
        )
        .await;
    }

    /// Waits until `status.rollout` satisfies `check`.
    async fn wait_rollout(&self, what: &str, check: impl Fn(&RolloutStatus) -> bool) -> RoutingConfig {
        self.rtc
            .wait_for(NAME, what, |obj| {
                let rollout = obj
                    .status
                    .as_ref()
                    .and_then(|s| s.rollout.as_ref())
                    .ok_or("no status.rollout")?;
                if check(rollout) {
                    Ok(())
                } else {
                    Err(format!("rollout {}", rollout.summary))
                }
            })
            .await
    }

    /// A metric of the leader `cp-0` about this RoutingConfig, with `labels` besides
    /// `routing_config`.
    async fn rollout_metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let object = format!("{}/{NAME}", self.namespace);
        let mut all = vec![("routing_config", object.as_str())];
        all.extend_from_slice(labels);
        self.cps[0].as_ref().expect("cp-0 runs").metric(name, &all).await
    }

    /// The ROLLOUT column of `kubectl get rtc`.
    async fn rollout_column(&self) -> String {
        get_rtc_columns(&self.cluster, &self.namespace, NAME).await[4].clone()
    }

    /// The reasons of the Events about the RoutingConfig, oldest first.
    async fn event_reasons(&self, uid: &str) -> Vec<String> {
        self.rtc
            .events_about(uid)
            .await
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }
}

/// Waits until `cp` holds the leader Lease.
async fn wait_leader(cp: &KubeControlPlane) {
    eventually("the control plane to lead", K8S_SOON, || async {
        let leader = cp.metric("cellroute_leader", &[]).await;
        if leader == 1.0 {
            Ok(())
        } else {
            Err(format!("cellroute_leader {leader}"))
        }
    })
    .await;
}

fn rollout_of(obj: &RoutingConfig) -> RolloutStatus {
    obj.status
        .as_ref()
        .and_then(|s| s.rollout.clone())
        .expect("status.rollout")
}

fn started(r: &RolloutStatus) -> SystemTime {
    SystemTime::from(r.step_started_at.as_ref().expect("stepStartedAt").0)
}

const STEPS: &str =
    "{steps: [{percent: 10, pause: 2s}, {percent: 50, pause: 2s}], analysis: {minRequests: 0}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_table_goes_out_a_step_at_a_time_and_no_data_plane_runs_ahead_of_its_step() {
    let f = Fleet::start("rollout-good", &[]).await;
    // The first table has nothing to roll out against: every data plane at once.
    f.apply(&f.manifest("tier1", &[], STEPS)).await;
    f.wait_versions([1, 1, 1]).await;
    for dp in f.data_planes() {
        dp.wait_routes(&[("acme", "tier1")], K8S_SOON).await;
    }

    f.apply(&f.manifest("tier3", &[], STEPS)).await;
    // Sampled until complete: each data plane read first, then the status, so a data plane on
    // the new table before its step was recorded would show.
    let mut seen_steps = Vec::new();
    let mut step_starts = Vec::new();
    let complete = loop {
        let versions = f.versions().await;
        let obj = f.rtc.get(NAME).await;
        let Some(r) = obj.status.as_ref().and_then(|s| s.rollout.clone()) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        assert_eq!(r.target_version, 2, "{r:?}");
        let done = r.phase == RolloutPhase::Complete;
        let allowed = if done { 3 } else { r.step as usize };
        // first is in step 1's share, second in step 2's, rest only in 100 %.
        for (i, v) in versions.iter().enumerate() {
            assert!(*v == 1 || *v == 2, "{versions:?}");
            assert!(
                *v == 1 || i < allowed,
                "data plane {i} on version 2 at {}: {versions:?}",
                r.summary
            );
        }
        if !done {
            assert_eq!(r.phase, RolloutPhase::Progressing, "{r:?}");
            assert_eq!(r.previous_version, Some(1));
            if seen_steps.last() != Some(&r.step) {
                seen_steps.push(r.step);
                step_starts.push(started(&r));
            }
            // The other data planes stay on version 1 while it runs.
            let snapshot = obj
                .status
                .as_ref()
                .and_then(|s| s.snapshot.clone())
                .expect("snapshot");
            assert_eq!(snapshot.version, 1, "{snapshot:?}");
            let synced = condition(obj.status.as_ref().unwrap(), "Synced").expect("Synced");
            assert_eq!(
                (synced.status.as_str(), synced.reason.as_str()),
                ("False", "RollingOut"),
                "{synced:?}"
            );
        }
        if done {
            break (obj, SystemTime::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen_steps, [1, 2], "every step was seen, in order");
    // Each pause honoured: a step begins no sooner than the pause of the one before ended (the
    // status keeps whole seconds).
    let pause = Duration::from_secs(2);
    assert!(
        step_starts[1].duration_since(step_starts[0]).unwrap() >= pause,
        "{step_starts:?}"
    );
    assert!(complete.1.duration_since(step_starts[1]).unwrap() + Duration::from_secs(1) >= pause);
    f.wait_versions([2, 2, 2]).await;
    for dp in f.data_planes() {
        dp.wait_routes(&[("acme", "tier3")], K8S_SOON).await;
    }
    let obj = f
        .rtc
        .wait_for(NAME, "Synced after the rollout", |obj| {
            let status = obj.status.as_ref().ok_or("no status")?;
            match condition(status, "Synced") {
                Some(c) if c.status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    let r = rollout_of(&obj);
    assert_eq!((r.summary.as_str(), r.percent), ("Complete", 100));
    assert_eq!(
        obj.status
            .as_ref()
            .and_then(|s| s.snapshot.as_ref())
            .map(|s| s.version),
        Some(2)
    );
    assert_eq!(f.rollout_column().await, "Complete");
    let uid = obj.uid().expect("uid");
    let reasons = f.event_reasons(&uid).await;
    let rollout_events: Vec<&String> = reasons.iter().filter(|r| r.starts_with("Rollout")).collect();
    assert_eq!(
        rollout_events,
        ["RolloutStep", "RolloutStep", "RolloutComplete"],
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_a_canary_refuses_halts_and_the_others_never_see_it() {
    // The 10 % data plane takes at most one customer: it refuses (NACKs) a table of two.
    let f = Fleet::start("rollout-nack", &["--max-customers", "1"]).await;
    let slow = "{steps: [{percent: 10, pause: 1h}, {percent: 50, pause: 1h}], analysis: {minRequests: 0}}";
    f.apply(&f.manifest("tier1", &[], slow)).await;
    f.wait_versions([1, 1, 1]).await;
    let before = f.rtc.get(NAME).await;
    let good_hash = before
        .status
        .as_ref()
        .and_then(|s| s.snapshot.as_ref())
        .expect("snapshot")
        .hash
        .clone();

    f.apply(&f.manifest("tier3", &["globex"], slow)).await;
    let halted = f
        .wait_rollout("a halted rollout", |r| r.phase == RolloutPhase::Halted)
        .await;
    let r = rollout_of(&halted);
    let message = r.message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("rejected version 2 (maxNacks 0); {}:", f.first.id)),
        "the reason names the data plane: {message}"
    );
    assert_eq!((r.target_version, r.revert_version), (2, Some(3)), "{r:?}");
    // The previous table, as version 3, for every data plane.
    f.wait_versions([3, 3, 3]).await;
    let obj = f.rtc.get(NAME).await;
    let status = obj.status.clone().expect("status");
    let snapshot = status.snapshot.clone().expect("snapshot");
    assert_eq!(
        (snapshot.version, snapshot.hash.as_str()),
        (3, good_hash.as_str())
    );
    let synced = condition(&status, "Synced").expect("Synced");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "RolloutHalted"),
        "{synced:?}"
    );
    assert_eq!(f.rollout_column().await, "Halted");
    for dp in f.data_planes() {
        dp.wait_routes(&[("acme", "tier1"), ("globex", "tier3")], K8S_SOON)
            .await;
    }
    // Received: version 1, then version 3; never version 2. The canary got version 2 too.
    assert_eq!(f.second.counter("cellroute_snapshots_received_total").await, 2.0);
    assert_eq!(f.rest.counter("cellroute_snapshots_received_total").await, 2.0);
    assert_eq!(f.first.counter("cellroute_snapshots_received_total").await, 3.0);
    let uid = obj.uid().expect("uid");
    eventually("a RolloutHalted Event", K8S_SOON, || async {
        let reasons = f.event_reasons(&uid).await;
        if reasons.iter().any(|r| r == "RolloutHalted") {
            Ok(())
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;
    // The halted table is not rolled out again by a resync: it stays halted until it changes.
    f.annotate("touched=1").await;
    let again = f
        .wait_rollout("still halted after a resync", |r| r.phase == RolloutPhase::Halted)
        .await;
    assert_eq!(rollout_of(&again).target_version, 2);
    assert_eq!(f.versions().await, [3, 3, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_pause_resume_promote_and_abort_a_rollout() {
    let f = Fleet::start("rollout-controls", &[]).await;
    let slow = "{steps: [{percent: 10, pause: 1h}, {percent: 50, pause: 1h}], analysis: {minRequests: 0}}";
    f.apply(&f.manifest("tier1", &[], slow)).await;
    f.wait_versions([1, 1, 1]).await;

    f.apply(&f.manifest("tier3", &[], slow)).await;
    f.wait_rollout("step 1", |r| r.summary == "10% 1/2").await;
    f.wait_versions([2, 1, 1]).await;
    assert_eq!(f.rollout_column().await, "10% 1/2");
    assert_eq!(f.rollout_metric("cellroute_rollout_step", &[]).await, 1.0);
    assert_eq!(f.rollout_metric("cellroute_rollout_percent", &[]).await, 10.0);

    f.annotate("cellroute.dev/rollout=paused").await;
    f.wait_rollout("paused", |r| r.phase == RolloutPhase::Paused)
        .await;
    assert_eq!(f.rollout_column().await, "Paused 10% 1/2");
    f.annotate("cellroute.dev/rollout-").await;
    f.wait_rollout("resumed", |r| r.phase == RolloutPhase::Progressing && r.step == 1)
        .await;

    // A promote names the version it is for.
    f.annotate("cellroute.dev/rollout-promote=2").await;
    f.wait_rollout("promoted", |r| r.phase == RolloutPhase::Complete)
        .await;
    f.wait_versions([2, 2, 2]).await;

    // The next table, aborted at its first step: its canary gets the previous table back.
    f.apply(&f.manifest("tier1", &["globex"], slow)).await;
    f.wait_rollout("step 1 of version 3", |r| r.target_version == 3 && r.step == 1)
        .await;
    f.wait_versions([3, 2, 2]).await;
    f.annotate("cellroute.dev/rollout-abort=3").await;
    let aborted = f
        .wait_rollout("aborted", |r| r.phase == RolloutPhase::Aborted)
        .await;
    assert_eq!(rollout_of(&aborted).revert_version, Some(4));
    f.wait_versions([4, 4, 4]).await;
    for dp in f.data_planes() {
        dp.wait_routes(&[("acme", "tier3"), ("globex", "tier3")], K8S_SOON)
            .await;
    }
    let uid = aborted.uid().expect("uid");
    eventually("the Events of each control", K8S_SOON, || async {
        let reasons = f.event_reasons(&uid).await;
        let want = [
            "RolloutPaused",
            "RolloutResumed",
            "RolloutComplete",
            "RolloutAborted",
        ];
        if want.iter().all(|w| reasons.iter().any(|r| r == w)) {
            Ok(())
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_sends_a_customer_to_a_failing_cell_halts_on_its_errors_naming_the_placement() {
    let f = Fleet::start("rollout-5xx", &[]).await;
    let judged = "{steps: [{percent: 10, pause: 1h}, {percent: 50, pause: 1h}], analysis: {minRequests: 20, maxErrorRatio: 0.1}}";
    f.apply(&f.manifest("tier1", &[], judged)).await;
    f.wait_versions([1, 1, 1]).await;
    // Traffic for acme through every data plane, throughout.
    let proxies: Vec<_> = f.data_planes().iter().map(|dp| dp.proxy.clone()).collect();
    let load = Load::start(&proxies, &["acme"], 2);
    load.wait_for_more(30, K8S_SOON).await;

    f.apply(&f.manifest("broken", &[], judged)).await;
    let halted = f
        .wait_rollout("halted on errors", |r| r.phase == RolloutPhase::Halted)
        .await;
    let r = rollout_of(&halted);
    let message = r.message.clone().unwrap_or_default();
    assert!(
        message.starts_with("placement broken: ")
            && message.contains("failed on version 2")
            && message.contains("over maxErrorRatio 10.0 %"),
        "the reason names the placement and the figures: {message}"
    );
    assert_eq!(r.revert_version, Some(3));
    f.wait_versions([3, 3, 3]).await;
    for dp in f.data_planes() {
        dp.wait_routes(&[("acme", "tier1")], K8S_SOON).await;
    }
    // Only the canary's acme requests failed, and only while it had version 2.
    let failures = load.stop().await.failures;
    let canary = f.first.proxy.addr().to_string();
    assert!(!failures.is_empty());
    assert!(
        failures.iter().all(|f| f.starts_with(&format!("{canary} "))),
        "{failures:?}"
    );
    assert_eq!(f.second.counter("cellroute_snapshots_received_total").await, 2.0);
    assert_eq!(f.rest.counter("cellroute_snapshots_received_total").await, 2.0);
    assert_eq!(f.rollout_column().await, "Halted");
    assert_eq!(
        f.rollout_metric("cellroute_rollout_halts_total", &[("reason", "errors")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_each_cohort_its_version_and_a_new_leader_resumes_at_the_recorded_step() {
    // The 10 % data plane and the rest on cp-1, which does not lead; the 50 % one on cp-0.
    let mut f = Fleet::start_with("rollout-ha", &[], 2, [1, 0, 1]).await;
    let slow = "{steps: [{percent: 10, pause: 1h}, {percent: 50, pause: 1h}], analysis: {minRequests: 0}}";
    f.apply(&f.manifest("tier1", &[], slow)).await;
    f.wait_versions([1, 1, 1]).await;

    f.apply(&f.manifest("tier3", &[], slow)).await;
    let at_step = f.wait_rollout("step 1", |r| r.summary == "10% 1/2").await;
    let step_started = rollout_of(&at_step).step_started_at;
    // cp-1 follows the leader's record: its canary has the new version, its other data plane not.
    f.wait_versions([2, 1, 1]).await;
    // The leader counts cp-1's data planes too.
    f.wait_rollout("the canary counted across replicas", |r| {
        r.data_planes
            .as_ref()
            .is_some_and(|d| d.target.applied == 1 && d.previous.connected == 2)
    })
    .await;

    // The leader crashes; cp-1 takes over at the recorded step.
    drop(f.cps[0].take());
    let cp1 = f.cps[1].as_ref().expect("running");
    wait_leader(cp1).await;
    // Its first status write as leader drops the crashed replica's entry.
    let taken_over = f
        .rtc
        .wait_for(NAME, "cp-0's entry pruned by the new leader", |obj| {
            let replicas = obj
                .status
                .as_ref()
                .and_then(|s| s.data_planes.as_ref())
                .map(|d| d.replicas.clone())
                .unwrap_or_default();
            if replicas.contains_key("cp-0") {
                Err(format!("replicas {:?}", replicas.keys()))
            } else {
                Ok(())
            }
        })
        .await;
    let r = rollout_of(&taken_over);
    assert_eq!(
        (r.phase, r.step, r.percent),
        (RolloutPhase::Progressing, 1, 10),
        "{r:?}"
    );
    assert_eq!(
        r.step_started_at, step_started,
        "the step was neither restarted nor skipped"
    );
    assert_eq!(f.first.config().await["snapshot"]["version"], 2);
    assert_eq!(f.rest.config().await["snapshot"]["version"], 1);
    let uid = taken_over.uid().expect("uid");
    let steps = f
        .event_reasons(&uid)
        .await
        .iter()
        .filter(|r| *r == "RolloutStep")
        .count();
    assert_eq!(steps, 1, "step 1 announced once");

    // The new leader completes it.
    f.annotate("cellroute.dev/rollout-promote=2").await;
    f.wait_rollout("complete", |r| r.phase == RolloutPhase::Complete)
        .await;
    for dp in [&f.first, &f.rest] {
        eventually(&format!("{} on version 2", dp.id), K8S_SOON, || async {
            let v = dp.config().await["snapshot"]["version"].clone();
            if v == 2 { Ok(()) } else { Err(format!("{v}")) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_immediate_is_the_break_glass_and_says_so() {
    let f = Fleet::start("rollout-immediate", &[]).await;
    let slow = "{steps: [{percent: 10, pause: 1h}], analysis: {minRequests: 0}}";
    f.apply(&f.manifest("tier1", &[], slow)).await;
    f.wait_versions([1, 1, 1]).await;
    // A rollout running when the emergency change comes: the change goes everywhere at once.
    f.apply(&f.manifest("tier3", &[], slow)).await;
    f.wait_rollout("step 1", |r| r.summary == "10% 1/1").await;
    let immediate = "{strategy: Immediate, steps: [{percent: 10, pause: 1h}]}";
    f.apply(&f.manifest("tier3", &["globex"], immediate)).await;
    f.wait_versions([3, 3, 3]).await;
    let obj = f
        .wait_rollout("the immediate record", |r| {
            r.target_version == 3 && r.phase == RolloutPhase::Complete
        })
        .await;
    let r = rollout_of(&obj);
    assert!(
        r.message.as_deref().unwrap_or_default().contains("Immediate"),
        "{r:?}"
    );
    assert_eq!(f.rollout_column().await, "Complete");
    let uid = obj.uid().expect("uid");
    eventually("a RolloutComplete Event saying Immediate", K8S_SOON, || async {
        let events = f.rtc.events_about(&uid).await;
        let found = events.iter().any(|e| {
            e.reason.as_deref() == Some("RolloutComplete")
                && e.note.as_deref().unwrap_or_default().contains("Immediate")
        });
        if found {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                events.iter().map(|e| &e.reason).collect::<Vec<_>>()
            ))
        }
    })
    .await;
}
