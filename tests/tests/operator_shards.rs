//! Routing tables split across objects, on a real Kubernetes API server: a RoutingConfig and
//! the RoutingShards labelled for it are one table, validated together and served as one
//! snapshot to real data planes. Everything a user touches goes through kubectl.
//!
//! - 100,000 customers split with `control-plane split` and applied with plain `kubectl apply -f
//!   DIR` reach a data plane whole (every customer checked, from the table it applied), and a
//!   one-customer edit of one shard is a new version that reaches it as a delta of bytes;
//! - a customer in two shards refuses the table, naming both, on both (status and Events); the
//!   last valid table keeps serving;
//! - an invalid shard refuses the table, naming the shard and key; a replica started meanwhile
//!   rebuilds the served table from the statuses and serves it;
//! - a deleted shard is a new version, its customers go to the default placement; a shard whose
//!   RoutingConfig does not exist says so;
//! - two replicas serve one version line (the follower serves what the leader recorded), and a
//!   new replica with nothing in memory continues it from the signed record, past a deletion.
//!
//! They need the API server that `scripts/test` starts, and fail without it.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cellroute_tests::control_plane::{ControlPlane, Options};
use cellroute_tests::fixture::Cells;
use cellroute_tests::k8s::{
    Cluster, K8S_POLL, K8S_SOON, RoutingConfigs, condition, describe_events, without_version_skew_warnings,
};
use cellroute_tests::push::Follower;
use cellroute_tests::push_k8s::{AUDIENCE, follow, service_account, token};
use cellroute_tests::split::{big_table, files, split};
use cellroute_tests::wait::{eventually, eventually_every};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use routing_model::crd::{RoutingConfig, RoutingShard};
use serde_json::{Value, json};
use tempfile::TempDir;

const CELLS: [&str; 3] = ["tier1", "tier2", "tier3"];
/// The RoutingConfig of every test.
const NAME: &str = "routes";

/// A namespace with cells, a control plane, and a data plane following `NAMESPACE/routes`.
struct Scene {
    cluster: Cluster,
    client: kube::Client,
    namespace: String,
    rtc: RoutingConfigs,
    shards: Api<RoutingShard>,
    cells: Cells,
    cp: ControlPlane,
    dp: Follower,
    token: String,
    // Last: the directory outlives the data planes that use it.
    dir: TempDir,
}

impl Scene {
    async fn start(prefix: &str) -> Self {
        let cluster = Cluster::from_env();
        let client = cluster.client().await;
        cluster.install_crd(&client).await;
        let namespace = cluster.namespace(&client, prefix).await;
        let cells = Cells::start(&CELLS).await;
        let cp = start_cp(&cluster, &namespace, "cp-0").await;
        service_account(&cluster, &namespace, "data-plane").await;
        let token = token(&cluster, &namespace, "data-plane", Some(AUDIENCE)).await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let dp = follow(
            &cp.url(),
            &format!("{namespace}/{NAME}"),
            "dp-0",
            &token,
            dir.path(),
        )
        .await;
        Self {
            rtc: RoutingConfigs::new(&client, &namespace),
            shards: Api::namespaced(client.clone(), &namespace),
            cluster,
            client,
            namespace,
            cells,
            cp,
            dp,
            token,
            dir,
        }
    }

    /// `kubectl apply -f PATH` (a file or a directory; client-side, the default), which must
    /// succeed.
    async fn apply(&self, path: &Path) -> String {
        let out = self
            .cluster
            .kubectl(
                &["apply", "-n", &self.namespace, "-f", &path.display().to_string()],
                None,
            )
            .await;
        assert!(
            out.status.success(),
            "kubectl apply -f {} failed: {}",
            path.display(),
            without_version_skew_warnings(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `manifest` (JSON is YAML) to `name` in the test directory and applies it.
    async fn apply_manifest(&self, name: &str, manifest: &Value) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, manifest.to_string()).expect("write the manifest");
        self.apply(&path).await
    }

    /// A RoutingConfig of this test's cells, `tier1` the default, with `customers` of its own.
    fn config(&self, customers: &[(&str, &str)]) -> Value {
        let endpoints: BTreeMap<&str, String> = CELLS.iter().map(|c| (*c, self.cells.url(c))).collect();
        json!({
            "apiVersion": "cellroute.dev/v1alpha1",
            "kind": "RoutingConfig",
            "metadata": {"name": NAME, "namespace": self.namespace},
            "spec": {
                "defaultPlacement": "tier1",
                "customerToPlacement": map(customers),
                "placementToEndpoint": endpoints,
            },
        })
    }

    /// A RoutingShard of `routes`.
    fn shard(&self, name: &str, customers: &[(&str, &str)]) -> Value {
        json!({
            "apiVersion": "cellroute.dev/v1alpha1",
            "kind": "RoutingShard",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {"cellroute.dev/routing-config": NAME},
            },
            "spec": {"customerToPlacement": map(customers)},
        })
    }

    /// Waits until the data plane applied the table the RoutingConfig's status says is served at
    /// `version`, and returns its `/admin/config`.
    async fn wait_applied(&self, version: i64) -> Value {
        let obj = self
            .rtc
            .wait_for(NAME, &format!("version {version} served"), |obj| {
                match obj.status.as_ref().and_then(|s| s.snapshot.as_ref()) {
                    Some(s) if s.version == version => Ok(()),
                    other => Err(format!("snapshot {other:?}")),
                }
            })
            .await;
        let hash = obj
            .status
            .and_then(|s| s.snapshot)
            .map(|s| s.hash)
            .expect("a snapshot");
        eventually(&format!("dp-0 to apply version {version}"), K8S_SOON, || async {
            let config = self.dp.config().await;
            if config["snapshot"]["version"] == version && config["hash"] == hash.as_str() {
                Ok(config)
            } else {
                Err(format!("snapshot {} hash {}", config["snapshot"], config["hash"]))
            }
        })
        .await
    }

    /// Waits until the shard's `Served` condition for its current generation has `status` and
    /// `reason`, and returns the shard.
    async fn wait_shard(&self, name: &str, status: &str, reason: &str) -> RoutingShard {
        eventually_every(
            &format!("RoutingShard {name} Served={status} ({reason})"),
            K8S_SOON,
            K8S_POLL,
            || async {
                let shard = self.shards.get(name).await.map_err(|e| e.to_string())?;
                let generation = shard.metadata.generation;
                let served = shard
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Served"));
                match served {
                    Some(c)
                        if c.status == status
                            && c.reason == reason
                            && c.observed_generation == generation =>
                    {
                        Ok(shard.clone())
                    }
                    other => Err(format!("generation {generation:?}, Served {other:?}")),
                }
            },
        )
        .await
    }

    /// The message of the shard's `Served` condition.
    fn served_message(shard: &RoutingShard) -> String {
        shard
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Served"))
            .map(|c| c.message.clone())
            .unwrap_or_default()
    }

    /// Waits until an Event about the object of `uid` with `reason` has a note containing every
    /// one of `contains`.
    async fn wait_event(&self, uid: &str, reason: &str, contains: &[&str]) -> Event {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        eventually(
            &format!("an Event {reason} about {uid} naming {contains:?}"),
            K8S_SOON,
            || async {
                let events: Vec<Event> = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
                    .collect();
                events
                    .iter()
                    .find(|e| {
                        e.reason.as_deref() == Some(reason)
                            && e.note
                                .as_deref()
                                .is_some_and(|n| contains.iter().all(|c| n.contains(c)))
                    })
                    .cloned()
                    .ok_or_else(|| describe_events(&events))
            },
        )
        .await
    }

    /// Polls `kubectl get rts` until `check` accepts its rows, and returns them.
    async fn wait_rts(
        &self,
        what: &str,
        check: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
    ) -> BTreeMap<String, Vec<String>> {
        let check = &check;
        eventually(&format!("kubectl get rts: {what}"), K8S_SOON, || async move {
            let rows = self.get_rts().await;
            if check(&rows) {
                Ok(rows)
            } else {
                Err(format!("{rows:?}"))
            }
        })
        .await
    }

    /// `kubectl get rts -n NAMESPACE` as rows of columns, by shard name.
    async fn get_rts(&self) -> BTreeMap<String, Vec<String>> {
        let table = self
            .cluster
            .kubectl_ok(&["get", "rts", "-n", &self.namespace], None)
            .await;
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "CONFIG",
                "CUSTOMERS",
                "SERVED",
                "REASON",
                "VERSION",
                "AGE"
            ],
            "{table}"
        );
        lines
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .map(|row| (row[0].clone(), row))
            .collect()
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn start_cp(cluster: &Cluster, namespace: &str, identity: &str) -> ControlPlane {
    let cp = ControlPlane::start_with(
        &Options::new(cluster, namespace, identity),
        &["--lease-duration", "3"],
    )
    .await;
    cp.wait_ready(K8S_SOON).await;
    cp
}

/// The customer map a data plane's `/admin/config` says it serves.
fn served_customers(config: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(config["spec"]["customerToPlacement"].clone())
        .unwrap_or_else(|e| panic!("no customer map in /admin/config ({e}): {}", config["spec"]))
}

fn uid(obj: &impl ResourceExt) -> String {
    obj.uid().expect("stored objects have a uid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_customer_table_split_and_applied_with_kubectl_reaches_a_data_plane_whole_and_a_one_customer_edit_follows()
 {
    let s = Scene::start("shards-100k").await;
    let (manifest, expected) = big_table(Some(&s.namespace), NAME, 100_000, &CELLS, |c| s.cells.url(c));
    let file = s.dir.path().join("routing.json");
    std::fs::write(&file, manifest.to_string()).expect("write the routing file");
    // One object this large is refused by `kubectl apply` (the request with its last-applied
    // annotation is over the API server's 3 MiB; a smaller one over the 256 KiB annotation).
    let out = s
        .cluster
        .kubectl(&["apply", "-f", &file.display().to_string()], None)
        .await;
    let refused = without_version_skew_warnings(&out.stderr);
    assert!(
        !out.status.success() && (refused.contains("too large") || refused.contains("Too long")),
        "kubectl apply of 100k customers in one object: {}",
        without_version_skew_warnings(&out.stderr)
    );
    let out_dir: PathBuf = s.dir.path().join("split");
    let run = split(&file, &out_dir, &[]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let shard_files = files(&out_dir).len() - 1;

    let applied = s.apply(&out_dir).await;
    assert_eq!(applied.matches("created").count(), shard_files + 1, "{applied}");
    s.rtc.wait_for_accepted(NAME, 1, "True").await;
    let obj = s
        .rtc
        .wait_for(NAME, "every shard served", |o| {
            let st = o.status.as_ref().ok_or("no status")?;
            match (st.shards, st.snapshot.as_ref().and_then(|sn| sn.shards)) {
                (Some(n), Some(m)) if n == shard_files as i64 && m == n => Ok(()),
                other => Err(format!("shards {other:?}")),
            }
        })
        .await;
    let status = obj.status.clone().expect("status");
    let snapshot = status.snapshot.clone().expect("snapshot");
    // One version for the lot, though kubectl wrote the objects one by one: the sum of their
    // generations (each is at 1), so never a table with only some shards.
    assert_eq!(snapshot.version, 1 + shard_files as i64, "{snapshot:?}");
    let config = s.wait_applied(snapshot.version).await;
    // Every customer, from the table the data plane applied; and a few through the proxy.
    let served = served_customers(&config);
    assert_eq!(served.len(), expected.len());
    assert!(
        served == expected,
        "the data plane's table differs from the file's"
    );
    assert_eq!(config["customers"], 100_000, "{}", config["customers"]);
    s.dp.wait_routes(
        &[
            ("customer-0000000", "tier1"),
            ("customer-0099998", "tier3"),
            ("customer-0050000", "tier3"),
            ("nobody", "tier1"),
        ],
        K8S_SOON,
    )
    .await;
    // The version the data plane runs is the table's, and the hash is the same as the file's
    // (one table, whether in one object or many).
    let validate = std::process::Command::new(cellroute_tests::process::bin_path("control-plane"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run control-plane validate");
    let text = String::from_utf8_lossy(&validate.stdout);
    assert!(text.contains(&snapshot.hash), "{text} vs {}", snapshot.hash);

    // `kubectl get rts`: every shard served at the table's version.
    let rows = s
        .wait_rts("every shard served", |rows| {
            rows.len() == shard_files
                && rows.values().all(|r| {
                    r.len() == 7
                        && r[1] == NAME
                        && r[3..6] == ["True", "Served", &snapshot.version.to_string()]
                })
        })
        .await;
    let customers: usize = rows
        .values()
        .map(|r| r[2].parse::<usize>().expect("a count"))
        .sum();
    assert_eq!(customers, 100_000);

    assert_eq!(s.dp.counter("cellroute_deltas_applied_total").await, 0.0);

    // A one-customer edit of one shard, applied the same way: a new version, and only that shard's
    // status changes. It reaches the data plane as a delta of bytes, not as the table.
    let moved = "customer-0000042";
    let before = expected[moved].clone();
    let after = if before == "tier2" { "tier3" } else { "tier2" };
    let (shard_file, text) = files(&out_dir)
        .into_iter()
        .find(|(_, text)| text.contains(&format!("\"{moved}\":")))
        .expect("a shard with the customer");
    let edited = text.replace(
        &format!("\"{moved}\": \"{before}\""),
        &format!("\"{moved}\": \"{after}\""),
    );
    assert_ne!(edited, text);
    std::fs::write(out_dir.join(&shard_file), edited).expect("write the edited shard");
    let applied = s.apply(&out_dir).await;
    assert_eq!(applied.matches("configured").count(), 1, "{applied}");
    let next = snapshot.version + 1;
    let config = s.wait_applied(next).await;
    let mut expected = expected;
    expected.insert(moved.to_owned(), after.to_owned());
    assert!(
        served_customers(&config) == expected,
        "the edit did not arrive whole"
    );
    s.dp.wait_routes(&[(moved, after)], K8S_SOON).await;
    assert_eq!(s.dp.counter("cellroute_deltas_applied_total").await, 1.0);
    // Applied by patching the table the data plane had, not by rebuilding 100k customers.
    assert_eq!(s.dp.counter("cellroute_deltas_patched_total").await, 1.0);
    let delta_bytes = s.cp.metric("cellroute_delta_bytes", &[]).await;
    assert!(
        delta_bytes > 0.0 && delta_bytes <= 1024.0,
        "a one-customer delta of {delta_bytes} bytes"
    );
    let edited_shard = shard_file.trim_end_matches(".yaml");
    s.wait_rts("the edited shard served since the new version", |rows| {
        rows.iter().all(|(name, row)| {
            let since = if name == edited_shard {
                next
            } else {
                snapshot.version
            };
            row.len() == 7 && row[3..6] == ["True", "Served", &since.to_string()]
        })
    })
    .await;
    assert!(s.cp.warnings().is_empty(), "warnings: {:?}", s.cp.warnings());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_in_two_shards_is_refused_on_both_and_the_last_valid_table_keeps_serving() {
    let s = Scene::start("shards-conflict").await;
    s.apply_manifest(
        "a.json",
        &s.shard("routes-a", &[("acme", "tier2"), ("globex", "tier2")]),
    )
    .await;
    s.apply_manifest("config.json", &s.config(&[("initech", "tier3")]))
        .await;
    s.rtc.wait_for_accepted(NAME, 1, "True").await;
    let config = s.wait_applied(2).await;
    assert_eq!(
        served_customers(&config),
        map(&[("acme", "tier2"), ("globex", "tier2"), ("initech", "tier3")])
    );

    // A second shard takes acme too.
    s.apply_manifest(
        "b.json",
        &s.shard("routes-b", &[("acme", "tier3"), ("hooli", "tier3")]),
    )
    .await;
    let b = s.wait_shard("routes-b", "False", "Conflict").await;
    let a = s.wait_shard("routes-a", "True", "Conflict").await;
    for (shard, other) in [(&a, "RoutingShard"), (&b, "RoutingShard")] {
        let message = Scene::served_message(shard);
        assert!(message.contains("acme") && message.contains(other), "{message}");
    }
    assert!(Scene::served_message(&a).contains("routes-b"), "{a:?}");
    assert!(Scene::served_message(&b).contains("routes-a"), "{b:?}");
    let obj = s.rtc.wait_for_accepted(NAME, 1, "False").await;
    let accepted = condition(obj.status.as_ref().expect("status"), "Accepted").expect("Accepted");
    assert_eq!(accepted.reason, "InvalidShards");
    assert!(
        accepted.message.contains("RoutingShard")
            && accepted.message.contains("routes-a")
            && accepted.message.contains("routes-b"),
        "{accepted:?}"
    );
    s.wait_event(&uid(&a), "Conflict", &["acme", "routes-b"]).await;
    s.wait_event(&uid(&b), "Conflict", &["acme", "routes-a"]).await;
    // The last valid table keeps serving: acme stays where routes-a put it, hooli is not routed.
    assert_eq!(s.dp.config().await["snapshot"]["version"], 2);
    s.dp.assert_routes(&[("acme", "tier2"), ("hooli", "tier1")]).await;
    s.wait_rts("both shards in conflict", |rows| {
        rows["routes-b"][3..5] == ["False", "Conflict"] && rows["routes-a"][3..6] == ["True", "Conflict", "2"]
    })
    .await;

    // routes-b gives acme up: a new version with hooli.
    s.apply_manifest("b.json", &s.shard("routes-b", &[("hooli", "tier3")]))
        .await;
    s.wait_shard("routes-b", "True", "Served").await;
    s.wait_shard("routes-a", "True", "Served").await;
    let config = s.wait_applied(4).await;
    assert_eq!(
        served_customers(&config),
        map(&[
            ("acme", "tier2"),
            ("globex", "tier2"),
            ("hooli", "tier3"),
            ("initech", "tier3")
        ])
    );
    s.rtc.wait_for_accepted(NAME, 1, "True").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_shard_is_refused_naming_it_and_a_replica_started_meanwhile_rebuilds_the_served_table() {
    let mut s = Scene::start("shards-invalid").await;
    s.apply_manifest("a.json", &s.shard("routes-a", &[("acme", "tier2")]))
        .await;
    s.apply_manifest("b.json", &s.shard("routes-b", &[("globex", "tier3")]))
        .await;
    s.apply_manifest("config.json", &s.config(&[])).await;
    let config = s.wait_applied(3).await;
    let served_hash = config["hash"].as_str().expect("a hash").to_owned();
    assert_eq!(
        served_customers(&config),
        map(&[("acme", "tier2"), ("globex", "tier3")])
    );

    // routes-b sends globex to a placement the RoutingConfig does not have.
    s.apply_manifest(
        "b.json",
        &s.shard("routes-b", &[("globex", "tier9"), ("hooli", "tier2")]),
    )
    .await;
    let b = s.wait_shard("routes-b", "False", "InvalidShard").await;
    let message = Scene::served_message(&b);
    assert!(
        message.contains("spec.customerToPlacement.globex")
            && message.contains("tier9")
            && message.contains("keeps generation 1"),
        "{message}"
    );
    s.wait_event(&uid(&b), "InvalidShard", &["globex", "tier9"]).await;
    let obj = s.rtc.wait_for_accepted(NAME, 1, "False").await;
    let accepted = condition(obj.status.as_ref().expect("status"), "Accepted").expect("Accepted");
    assert!(
        accepted.message.contains(&format!(
            "RoutingShard {}/routes-b: spec.customerToPlacement.globex",
            s.namespace
        )),
        "{accepted:?}"
    );
    s.wait_shard("routes-a", "True", "Served").await;
    assert!(
        b.status
            .as_ref()
            .is_some_and(|st| st.served_spec.is_some() && st.served_generation == Some(1))
    );
    s.dp.assert_routes(&[("globex", "tier3"), ("hooli", "tier1")])
        .await;

    // The control plane restarts while the table is refused: the new one rebuilds the served
    // table from the statuses and serves it, to the data plane it had and to a new one.
    s.cp.stop().await;
    let cp = ControlPlane::start_on(
        &Options::new(&s.cluster, &s.namespace, "cp-1"),
        s.cp.addr(),
        &["--lease-duration", "3"],
    )
    .await;
    cp.wait_ready(K8S_SOON).await;
    let entry = cp.wait_served(&s.rtc.key(NAME), &uid(&obj), 3).await;
    assert_eq!(entry["served"]["hash"], served_hash.as_str(), "{entry}");
    cp.wait_for_log("the recovery audit line", K8S_SOON, |r| {
        r["target"] == "audit"
            && r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("recovered the served table"))
    })
    .await;
    let fresh = follow(&cp.url(), &s.rtc.key(NAME), "dp-1", &s.token, s.dir.path()).await;
    fresh
        .wait_routes(
            &[("acme", "tier2"), ("globex", "tier3"), ("hooli", "tier1")],
            K8S_SOON,
        )
        .await;
    assert_eq!(fresh.config().await["snapshot"]["version"], 3);
    assert_eq!(cp.metric("cellroute_untrusted_status_total", &[]).await, 0.0);

    // Fixed: the next version, on both data planes.
    s.apply_manifest(
        "b.json",
        &s.shard("routes-b", &[("globex", "tier2"), ("hooli", "tier2")]),
    )
    .await;
    s.wait_shard("routes-b", "True", "Served").await;
    for dp in [&s.dp, &fresh] {
        dp.wait_routes(
            &[("globex", "tier2"), ("hooli", "tier2"), ("acme", "tier2")],
            K8S_SOON,
        )
        .await;
    }
    let b = s.shards.get("routes-b").await.expect("routes-b");
    assert!(
        b.status
            .as_ref()
            .is_some_and(|st| st.served_spec.is_none() && st.served_generation == Some(3))
    );
    s.cp = cp;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_shard_is_a_new_version_whose_customers_go_to_the_default_placement() {
    let s = Scene::start("shards-delete").await;
    s.apply_manifest("a.json", &s.shard("routes-a", &[("acme", "tier2")]))
        .await;
    s.apply_manifest("b.json", &s.shard("routes-b", &[("globex", "tier3")]))
        .await;
    s.apply_manifest("config.json", &s.config(&[])).await;
    s.wait_applied(3).await;
    s.dp.assert_routes(&[("acme", "tier2"), ("globex", "tier3")])
        .await;

    s.cluster
        .kubectl_ok(&["delete", "rts", "routes-b", "-n", &s.namespace], None)
        .await;
    // Versions rise past the deletion, though the generations of what is left add up to less.
    let config = s.wait_applied(4).await;
    assert_eq!(served_customers(&config), map(&[("acme", "tier2")]));
    s.dp.wait_routes(&[("globex", "tier1"), ("acme", "tier2")], K8S_SOON)
        .await;
    let obj: RoutingConfig = s
        .rtc
        .wait_for(NAME, "one shard", |o| {
            match o.status.as_ref().and_then(|st| st.shards) {
                Some(1) => Ok(()),
                other => Err(format!("shards {other:?}")),
            }
        })
        .await;
    assert_eq!(
        obj.status
            .as_ref()
            .and_then(|st| st.snapshot.as_ref())
            .and_then(|sn| sn.shards),
        Some(1)
    );

    // A shard of a RoutingConfig that does not exist belongs to no table, and says so.
    let mut stray = s.shard("stray-0", &[("wayne", "tier2")]);
    stray["metadata"]["labels"]["cellroute.dev/routing-config"] = Value::from("nonesuch");
    s.apply_manifest("stray.json", &stray).await;
    let shard = s.wait_shard("stray-0", "False", "NoRoutingConfig").await;
    assert!(Scene::served_message(&shard).contains("nonesuch"), "{shard:?}");
    s.dp.assert_routes(&[("wayne", "tier1")]).await;
    // Relabelled to this table: it joins it.
    stray["metadata"]["labels"]["cellroute.dev/routing-config"] = Value::from(NAME);
    s.apply_manifest("stray.json", &stray).await;
    s.wait_shard("stray-0", "True", "Served").await;
    s.dp.wait_routes(&[("wayne", "tier2")], K8S_SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_one_version_line_and_a_successor_continues_it() {
    let mut s = Scene::start("shards-replicas").await;
    s.cp.wait_leader(K8S_SOON).await;
    let follower = start_cp(&s.cluster, &s.namespace, "cp-1").await;
    assert!(
        !follower.is_leader().await,
        "cp-1 leads while cp-0 holds the Lease"
    );
    let dp1 = follow(&follower.url(), &s.rtc.key(NAME), "dp-1", &s.token, s.dir.path()).await;
    s.apply_manifest("a.json", &s.shard("routes-a", &[("acme", "tier2")]))
        .await;
    s.apply_manifest("b.json", &s.shard("routes-b", &[("hooli", "tier3")]))
        .await;
    s.apply_manifest("config.json", &s.config(&[])).await;
    s.wait_applied(3).await;
    let uid = uid(&s.rtc.get(NAME).await);

    // Each change: the follower serves the version the leader recorded, for the same table, so a
    // data plane sees one version line whichever replica it is connected to.
    let on_both = |version: i64| {
        let (s, follower, dp1, uid) = (&s, &follower, &dp1, &uid);
        async move {
            let config = s.wait_applied(version).await;
            let entry = follower.wait_served(&s.rtc.key(NAME), uid, version).await;
            assert_eq!(entry["served"]["hash"], config["hash"], "{entry}");
            eventually(&format!("dp-1 to apply version {version}"), K8S_SOON, || async {
                let c = dp1.config().await;
                if c["snapshot"]["version"] == version && c["hash"] == config["hash"] {
                    Ok(())
                } else {
                    Err(c["snapshot"].to_string())
                }
            })
            .await;
        }
    };
    for (i, cell) in ["tier3", "tier2"].iter().enumerate() {
        s.apply_manifest(
            "a.json",
            &s.shard("routes-a", &[("acme", cell), ("globex", "tier2")]),
        )
        .await;
        on_both(4 + i as i64).await;
    }
    // A deleted shard: version 6, though the generations left add up to 4.
    s.cluster
        .kubectl_ok(&["delete", "rts", "routes-b", "-n", &s.namespace], None)
        .await;
    on_both(6).await;

    // Both replicas go; a new one, with nothing in memory, takes over the follower's address and
    // continues the line from the signed record (the generations alone would give 5, older than
    // what data planes run, which they would refuse).
    s.cp.stop().await;
    let mut follower = follower;
    let addr = follower.addr();
    follower.stop().await;
    let successor = ControlPlane::start_on(
        &Options::new(&s.cluster, &s.namespace, "cp-2"),
        addr,
        &["--lease-duration", "3"],
    )
    .await;
    successor.wait_leader(K8S_SOON).await;
    successor.wait_served(&s.rtc.key(NAME), &uid, 6).await;
    s.apply_manifest(
        "a.json",
        &s.shard("routes-a", &[("acme", "tier1"), ("globex", "tier2")]),
    )
    .await;
    successor.wait_served(&s.rtc.key(NAME), &uid, 7).await;
    dp1.wait_routes(&[("acme", "tier1"), ("hooli", "tier1")], K8S_SOON)
        .await;
    assert_eq!(dp1.config().await["snapshot"]["version"], 7);
    assert_eq!(dp1.counter("cellroute_snapshot_nacks_total").await, 0.0);
    s.cp = successor;
}
