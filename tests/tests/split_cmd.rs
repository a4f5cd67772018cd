//! `control-plane split FILE -o DIR`, the real binary: one large routing file into a
//! RoutingConfig and RoutingShards that client-side `kubectl apply` accepts (each within the
//! 262,144-byte annotation limit), which together are exactly the input table; the same input
//! gives the same files; bad input, bad limits and a directory of someone else's files are
//! refused with a message saying what is wrong. (`tests/tests/operator_shards.rs` applies the
//! output to a real API server.)

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use cellroute_tests::split::{big_table, files, split};
use serde_json::Value;

/// Every customer of the files, with the shard that assigns it; the RoutingConfig's spec.
fn read_back(files: &BTreeMap<String, String>) -> (BTreeMap<String, (String, String)>, Value) {
    let mut customers = BTreeMap::new();
    let mut config = Value::Null;
    for (name, text) in files {
        let doc: Value = serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        // What client-side apply stores in its last-applied annotation: the object as JSON.
        let json = doc.to_string();
        assert!(
            json.len() + "kubectl.kubernetes.io/last-applied-configuration".len() < 262_144,
            "{name} is {} bytes as JSON: over the annotation limit",
            json.len()
        );
        match doc["kind"].as_str() {
            Some("RoutingShard") => {
                let shard = doc["metadata"]["name"].as_str().expect("a name").to_owned();
                assert_eq!(format!("{shard}.yaml"), *name);
                assert_eq!(
                    doc["metadata"]["labels"]["cellroute.dev/routing-config"], "routes",
                    "{name}"
                );
                assert_eq!(doc["metadata"]["namespace"], "prod", "{name}");
                for (c, p) in doc["spec"]["customerToPlacement"].as_object().expect("a map") {
                    let p = p.as_str().expect("a placement").to_owned();
                    let before = customers.insert(c.clone(), (p, shard.clone()));
                    assert!(before.is_none(), "{c} is in two shards");
                }
            }
            Some("RoutingConfig") => {
                assert_eq!(name, "routes.yaml");
                config = doc["spec"].clone();
            }
            other => panic!("{name}: kind {other:?}"),
        }
    }
    (customers, config)
}

#[test]
fn a_100k_customer_file_splits_into_shards_client_side_apply_accepts_and_back_to_the_same_table() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (manifest, expected) = big_table(
        Some("prod"),
        "routes",
        100_000,
        &["tier1", "tier2", "tier3"],
        |p| format!("http://{p}.cells.svc:9000"),
    );
    let file = dir.path().join("routing.yaml");
    std::fs::write(&file, manifest.to_string()).expect("write the routing file");
    let out = dir.path().join("out");
    let run = split(&file, &out, &[]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        stdout.contains("100000 customers") && stdout.contains("kubectl apply -f"),
        "{stdout}"
    );

    let written = files(&out);
    let shards = written.len() - 1;
    assert!(shards >= 16 && shards.is_power_of_two(), "{shards} shards");
    // Shards sort before the RoutingConfig: `kubectl apply -f DIR` creates it last.
    assert_eq!(written.keys().last().map(String::as_str), Some("routes.yaml"));
    let (customers, config) = read_back(&written);
    let placements: BTreeMap<String, String> = customers
        .iter()
        .map(|(c, (p, _))| (c.clone(), p.clone()))
        .collect();
    assert_eq!(placements, expected, "the shards are not the input table");
    assert!(config.get("customerToPlacement").is_none(), "{config}");
    assert_eq!(config["defaultPlacement"], manifest["spec"]["defaultPlacement"]);
    assert_eq!(
        config["placementToEndpoint"],
        manifest["spec"]["placementToEndpoint"]
    );

    // The same input, the same files.
    let again = dir.path().join("again");
    assert!(split(&file, &again, &[]).status.success());
    assert_eq!(files(&again), written);
}

#[test]
fn splitting_an_edited_file_again_replaces_the_files_and_moves_no_customer_between_shards() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (manifest, _) = big_table(
        Some("prod"),
        "routes",
        20_000,
        &["tier1", "tier2", "tier3"],
        |p| format!("http://{p}.cells.svc:9000"),
    );
    let file = dir.path().join("routing.yaml");
    std::fs::write(&file, manifest.to_string()).expect("write the routing file");
    let out = dir.path().join("out");
    let run = split(&file, &out, &["--shard-bytes", "100000"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let written = files(&out);
    assert!(written.len() > 2, "{} files", written.len());
    let (customers, _) = read_back(&written);

    // An edited input split into the same directory: its files are replaced, and a customer
    // stays in its shard.
    let mut edited = manifest.clone();
    edited["spec"]["customerToPlacement"]["customer-0000007"] = Value::from("tier3");
    std::fs::write(&file, edited.to_string()).expect("write the routing file");
    assert!(split(&file, &out, &["--shard-bytes", "100000"]).status.success());
    let rewritten = files(&out);
    let changed: Vec<&String> = rewritten
        .keys()
        .filter(|k| rewritten[*k] != written[*k])
        .collect();
    assert_eq!(changed, [&format!("{}.yaml", customers["customer-0000007"].1)]);

    // Smaller shards, then the default again: no stale shard file stays behind.
    assert!(split(&file, &out, &["--shard-bytes", "30000"]).status.success());
    assert!(files(&out).len() > written.len());
    assert!(
        split(&file, &out, &["--customers-per-shard", "1000"])
            .status
            .success()
    );
    let small = files(&out);
    let (per, _) = read_back(&small);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, shard) in per.values() {
        *counts.entry(shard.as_str()).or_default() += 1;
    }
    assert!(counts.values().all(|n| *n <= 1000), "{counts:?}");
    assert!(split(&file, &out, &["--shard-bytes", "100000"]).status.success());
    assert_eq!(files(&out).len(), written.len());
}

#[test]
fn bad_input_bad_limits_and_foreign_files_are_refused_saying_why() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (mut manifest, _) = big_table(Some("prod"), "routes", 10, &["tier1"], |p| {
        format!("http://{p}:9000")
    });
    manifest["spec"]["customerToPlacement"]["customer-0000003"] = Value::from("tier9");
    let file = dir.path().join("routing.yaml");
    std::fs::write(&file, manifest.to_string()).expect("write");
    let out = dir.path().join("out");
    let run = split(&file, &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("spec.customerToPlacement.customer-0000003") && stderr.contains("tier9"),
        "{stderr}"
    );
    assert!(!out.exists(), "an invalid table was split");

    let (good, _) = big_table(Some("prod"), "routes", 10, &["tier1"], |p| {
        format!("http://{p}:9000")
    });
    std::fs::write(&file, good.to_string()).expect("write");
    let run = split(&file, &out, &["--shard-bytes", "300000"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("262144"), "{stderr}");

    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join("notes.txt"), "mine").expect("write");
    let run = split(&file, &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("notes.txt") && stderr.contains("did not write"),
        "{stderr}"
    );
    assert_eq!(files(&out).len(), 1, "split wrote beside someone else's files");

    let mut nameless = good.clone();
    nameless["metadata"] = serde_json::json!({});
    std::fs::write(&file, nameless.to_string()).expect("write");
    let run = split(&file, &dir.path().join("nameless"), &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("metadata.name"), "{stderr}");
}
