//! `crdgen`: prints the RoutingConfig CustomResourceDefinition as YAML, generated from the Rust
//! types. Both committed forms are its output, and a test fails when either differs:
//!
//! ```sh
//! cargo run -p control-plane --bin crdgen > crds/routingconfig.yaml
//! cargo run -p control-plane --bin crdgen -- --chart > charts/cellroute/templates/crd-routingconfig.yaml
//! ```
//!
//! `--chart` prints the chart's template form: CEL rules only for API servers that evaluate them,
//! `helm.sh/resource-policy: keep`, the release's labels (see `control_plane::crd`).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => print!("{}", control_plane::crd::render()),
        ["--chart"] => print!("{}", control_plane::crd::render_chart_template()),
        _ => {
            eprintln!(
                "usage: crdgen [--chart]\n  prints the RoutingConfig CRD; --chart prints the Helm chart's template form"
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
