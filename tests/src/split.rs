//! Large routing files and `control-plane split`, for the tests of sharded tables.
//!
//! - [`big_table`]: a RoutingConfig manifest of many customers spread over placements, with the
//!   customer → placement map it must route;
//! - [`split`]: runs the real `control-plane split FILE -o DIR`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::process::{bin_path, scrub_env};

/// A RoutingConfig `namespace/name` (no namespace when `None`) of `n` customers
/// (`customer-0000000`, ...) spread over `placements` in turn, each placement's endpoint from
/// `endpoint`, the first placement the default; and its customer map.
pub fn big_table(
    namespace: Option<&str>,
    name: &str,
    n: usize,
    placements: &[&str],
    endpoint: impl Fn(&str) -> String,
) -> (Value, BTreeMap<String, String>) {
    let customers: BTreeMap<String, String> = (0..n)
        .map(|i| {
            (
                format!("customer-{i:07}"),
                placements[i % placements.len()].to_owned(),
            )
        })
        .collect();
    let endpoints: BTreeMap<String, String> = placements
        .iter()
        .map(|p| ((*p).to_owned(), endpoint(p)))
        .collect();
    let mut metadata = json!({"name": name});
    if let Some(ns) = namespace {
        metadata["namespace"] = Value::from(ns);
    }
    let manifest = json!({
        "apiVersion": "cellroute.dev/v1alpha1",
        "kind": "RoutingConfig",
        "metadata": metadata,
        "spec": {
            "defaultPlacement": placements[0],
            "customerToPlacement": customers,
            "placementToEndpoint": endpoints,
        },
    });
    (manifest, customers)
}

/// `control-plane split FILE -o DIR EXTRA...`, run to completion.
///
/// # Panics
///
/// When the binary cannot be run.
pub fn split(file: &Path, dir: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin_path("control-plane"));
    cmd.arg("split").arg(file).arg("-o").arg(dir).args(extra);
    scrub_env(&mut cmd);
    cmd.output().expect("run control-plane split")
}

/// The files of `dir`, by name, with their contents.
///
/// # Panics
///
/// When the directory cannot be read.
pub fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("a directory entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(e.path()).unwrap_or_else(|err| panic!("read {name}: {err}"));
            (name, text)
        })
        .collect()
}
