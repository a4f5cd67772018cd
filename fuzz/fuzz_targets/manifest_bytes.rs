//! Any bytes as a RoutingConfig file (YAML or JSON): parsing and validation never panic, and
//! whatever they accept keeps every promise of `check_accepted`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = routing_model::load(data, cellroute_fuzz::limits()) {
        cellroute_fuzz::check_accepted(&config);
    }
});
