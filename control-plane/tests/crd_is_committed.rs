//! `crds/routingconfig.yaml` must be exactly what `crdgen` prints: the CRD is generated from the
//! Rust types and never edited by hand.

#[test]
fn committed_crd_matches_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/routingconfig.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/routingconfig.yaml exists");
    let generated = control_plane::crd::render();
    assert!(
        committed == generated,
        "crds/routingconfig.yaml is stale: run `cargo run -p control-plane --bin crdgen > crds/routingconfig.yaml`"
    );
}
