//! `examples/routing.yaml`, the manifest the README has users apply, as the cluster tests apply
//! it: in their own namespace, pointing at their own echo cells.

use crate::fixture::Cells;
use crate::k8s::edit;

/// The file.
pub const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/routing.yaml");
/// The object it defines.
pub const NAME: &str = "routes";
/// Its cells: each echo cell is named after the placement it serves.
pub const CELLS: [&str; 2] = ["tier1", "tier3"];
/// Where it sends customers (an unlisted one goes to the default placement).
pub const ROUTES: [(&str, &str); 4] = [
    ("acme", "tier1"),
    ("globex", "tier1"),
    ("initech", "tier3"),
    ("unlisted-customer", "tier3"),
];

/// The example with only its namespace and its endpoints changed.
///
/// # Panics
///
/// When the file cannot be read.
pub fn localized(namespace: &str, cells: &Cells) -> String {
    let text = std::fs::read_to_string(FILE).unwrap_or_else(|e| panic!("read {FILE}: {e}"));
    edit(
        &text,
        &[
            ("namespace: default", &format!("namespace: {namespace}")),
            ("http://127.0.0.1:9001", &cells.url("tier1")),
            ("http://127.0.0.1:9003", &cells.url("tier3")),
        ],
    )
}
