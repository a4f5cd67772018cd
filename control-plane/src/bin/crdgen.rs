//! `crdgen`: prints the RoutingConfig CustomResourceDefinition as YAML, generated from the Rust
//! types. `crds/routingconfig.yaml` is this output; a test fails when the two differ.
//!
//! Usage: `cargo run -p control-plane --bin crdgen > crds/routingconfig.yaml`

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

fn main() {
    print!("{}", control_plane::crd::render());
}
