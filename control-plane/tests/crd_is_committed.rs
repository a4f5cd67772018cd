//! The committed CRD files must be exactly what `crdgen` prints: the CRD is generated from the
//! Rust types and never edited by hand, in either of its two forms.

use control_plane::crd::Kind;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[test]
fn committed_crds_match_the_generated_ones() {
    for kind in Kind::ALL {
        let path = format!("{ROOT}/{}", kind.crd_path());
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let argument = match kind {
            Kind::RoutingConfig => String::new(),
            other => format!(" -- {}", other.file_stem()),
        };
        assert!(
            committed == control_plane::crd::render(kind),
            "{} is stale: run `cargo run -p control-plane --bin crdgen{argument} > {}`",
            kind.crd_path(),
            kind.crd_path()
        );
    }
}

#[test]
fn chart_templates_match_the_generated_ones() {
    for kind in Kind::ALL {
        let path = format!("{ROOT}/{}", kind.chart_path());
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let argument = match kind {
            Kind::RoutingConfig => String::new(),
            other => format!(" {}", other.file_stem()),
        };
        assert!(
            committed == control_plane::crd::render_chart_template(kind),
            "{} is stale: run `cargo run -p control-plane --bin crdgen -- --chart{argument} > {}`",
            kind.chart_path(),
            kind.chart_path()
        );
    }
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
