//! Almost-valid RoutingConfigs, written as JSON and as YAML: both forms must get the same
//! verdict (and, when accepted, the same content hash), and what is accepted keeps every promise
//! of `check_accepted`.
#![no_main]

use cellroute_fuzz::Spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|spec: Spec| {
    let json = serde_json::to_string(&spec.0).expect("a JSON value serializes");
    let from_json = routing_model::load(json.as_bytes(), cellroute_fuzz::limits());
    if let Ok(config) = &from_json {
        cellroute_fuzz::check_accepted(config);
    }
    // The YAML writer is not ours; only a document it produces and reads back identically is a
    // fair comparison of the two forms.
    let Ok(yaml) = serde_saphyr::to_string(&spec.0) else { return };
    let Ok(round_trip) = serde_saphyr::from_str::<serde_json::Value>(&yaml) else { return };
    if round_trip != spec.0 {
        return;
    }
    let from_yaml = routing_model::load(yaml.as_bytes(), cellroute_fuzz::limits());
    match (&from_json, &from_yaml) {
        (Ok(a), Ok(b)) => assert_eq!(a.hash(), b.hash(), "JSON and YAML forms hash differently"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "JSON and YAML forms disagree:\nJSON {json}\n=> {:?}\nYAML {yaml}\n=> {:?}",
            a.as_ref().map(|c| c.hash()),
            b.as_ref().map(|c| c.hash())
        ),
    }
});
