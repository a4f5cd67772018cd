//! The committed CRD files must be exactly what `crdgen` prints: the CRD is generated from the
//! Rust types and never edited by hand, in either of its two forms.

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[test]
fn committed_crd_matches_the_generated_one() {
    let path = format!("{ROOT}/crds/routingconfig.yaml");
    let committed = std::fs::read_to_string(&path).expect("crds/routingconfig.yaml exists");
    let generated = control_plane::crd::render();
    assert!(
        committed == generated,
        "crds/routingconfig.yaml is stale: run `cargo run -p control-plane --bin crdgen > crds/routingconfig.yaml`"
    );
}

#[test]
fn chart_template_matches_the_generated_one() {
    let path = format!("{ROOT}/charts/cellroute/templates/crd-routingconfig.yaml");
    let committed =
        std::fs::read_to_string(&path).expect("charts/cellroute/templates/crd-routingconfig.yaml exists");
    let generated = control_plane::crd::render_chart_template();
    assert!(
        committed == generated,
        "charts/cellroute/templates/crd-routingconfig.yaml is stale: run \
         `cargo run -p control-plane --bin crdgen -- --chart > charts/cellroute/templates/crd-routingconfig.yaml`"
    );
}

/// Helm never upgrades a chart's `crds/` directory, so the chart must not have one: the CRD is
/// a template (see `control_plane::crd`).
#[test]
fn chart_has_no_crds_directory() {
    let dir = std::path::Path::new(ROOT).join("charts/cellroute/crds");
    assert!(
        !dir.exists(),
        "{} exists: Helm installs it once and never upgrades it; the CRD belongs in templates/",
        dir.display()
    );
}
