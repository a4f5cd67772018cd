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

#[test]
fn chart_ships_the_same_crd() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let crd =
        std::fs::read_to_string(format!("{root}/crds/routingconfig.yaml")).expect("crds/routingconfig.yaml");
    let chart = std::fs::read_to_string(format!("{root}/charts/cellroute/crds/routingconfig.yaml"))
        .expect("charts/cellroute/crds/routingconfig.yaml");
    assert!(
        crd == chart,
        "charts/cellroute/crds/routingconfig.yaml differs from crds/routingconfig.yaml: copy it over"
    );
}
