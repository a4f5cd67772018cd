//! `crdgen`: prints a CustomResourceDefinition (RoutingConfig, or RoutingShard) as YAML,
//! generated from the Rust types. Every committed form is its output, and a test fails when one
//! differs:
//!
//! ```sh
//! cargo run -p control-plane --bin crdgen > crds/routingconfig.yaml
//! cargo run -p control-plane --bin crdgen -- --chart > charts/cellroute/templates/crd-routingconfig.yaml
//! cargo run -p control-plane --bin crdgen -- routingshard > crds/routingshard.yaml
//! cargo run -p control-plane --bin crdgen -- --chart routingshard > charts/cellroute/templates/crd-routingshard.yaml
//! ```
//!
//! `--chart` prints the chart's template form: CEL rules only for API servers that evaluate them,
//! `helm.sh/resource-policy: keep`, the release's labels (see `control_plane::crd`).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::process::ExitCode;

use control_plane::crd::{Kind, render, render_chart_template};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (chart, rest) = match args.split_first() {
        Some((first, rest)) if first == "--chart" => (true, rest),
        _ => (false, &args[..]),
    };
    let kind = match rest {
        [] => Some(Kind::RoutingConfig),
        [name] => Kind::from_file_stem(name),
        _ => None,
    };
    let Some(kind) = kind else {
        eprintln!(
            "usage: crdgen [--chart] [routingconfig|routingshard]\n  prints a CRD (default: routingconfig); --chart prints the Helm chart's template form"
        );
        return ExitCode::from(2);
    };
    if chart {
        print!("{}", render_chart_template(kind));
    } else {
        print!("{}", render(kind));
    }
    ExitCode::SUCCESS
}
