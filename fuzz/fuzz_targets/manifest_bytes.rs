//! Any bytes as a RoutingConfig file (YAML or JSON): parsing and validation never panic, and
//! whatever they accept keeps every promise of `check_accepted`; reading a plain customer block
//! without the YAML parser gives what the parser gives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = cellroute_fuzz::limits();
    // Debug shows every field, and every error (the manifest has no `PartialEq`).
    let read = routing_model::parse::parse_manifest(data, limits);
    let parser = routing_model::parse::parse_manifest_by_parser(data, limits);
    assert_eq!(format!("{read:?}"), format!("{parser:?}"));
    if let Ok(config) = routing_model::load(data, limits) {
        cellroute_fuzz::check_accepted(&config);
    }
});
