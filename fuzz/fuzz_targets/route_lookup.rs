//! The request path's lookup: a table built from an almost-valid config, asked with arbitrary
//! header bytes. Whatever `http` accepts as a header value routes exactly as the config's map
//! says (listed customers to their placement, everyone else to the default).
#![no_main]

use cellroute_fuzz::Spec;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use routing_model::RoutingTable;

fuzz_target!(|input: (Spec, Vec<Vec<u8>>)| {
    let (spec, headers) = input;
    let Some(config) = cellroute_fuzz::validate_value(&spec.0) else {
        return;
    };
    let table = RoutingTable::build(&config, |name, _| name.to_owned());
    let map = cellroute_fuzz::customer_map(&config);
    let listed: Vec<Vec<u8>> = map.keys().cloned().collect();
    for raw in headers.iter().chain(&listed) {
        let Ok(value) = HeaderValue::from_bytes(raw) else {
            continue;
        };
        let route = table.route(Some(value.as_bytes()));
        match map.get(value.as_bytes()) {
            Some(placement) => {
                assert!(route.matched);
                assert_eq!(&route.placement.payload, placement);
            }
            None => {
                assert!(!route.matched, "{:?} matched but is not listed", value);
                assert_eq!(route.placement.payload, config.spec().default_placement);
            }
        }
    }
});
