//! Almost-valid RoutingConfigs: validation never panics and what it accepts keeps every promise
//! of `check_accepted`. One input in eight is also written out as JSON text and as YAML text and
//! loaded through the file parser: all three must reach the same verdict and content hash.
#![no_main]

use cellroute_fuzz::Spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|spec: Spec| {
    let direct = cellroute_fuzz::validate_value(&spec.0);
    if let Some(config) = &direct {
        cellroute_fuzz::check_accepted(config);
    }
    if !spec.1 {
        return;
    }
    let json = serde_json::to_string(&spec.0).expect("a JSON value serializes");
    let from_json = routing_model::load(json.as_bytes(), cellroute_fuzz::limits()).ok();
    assert_eq!(
        from_json.as_ref().map(|c| c.hash()),
        direct.as_ref().map(|c| c.hash()),
        "the JSON text and the value disagree: {json}"
    );
    // The YAML writer is not ours; only a document it produces and reads back identically is a
    // fair comparison of the two forms.
    let Ok(yaml) = serde_saphyr::to_string(&spec.0) else { return };
    let Ok(round_trip) = serde_saphyr::from_str::<serde_json::Value>(&yaml) else { return };
    if round_trip != spec.0 {
        return;
    }
    let from_yaml = routing_model::load(yaml.as_bytes(), cellroute_fuzz::limits()).ok();
    assert_eq!(
        from_yaml.as_ref().map(|c| c.hash()),
        direct.as_ref().map(|c| c.hash()),
        "the YAML and JSON forms disagree:\nJSON {json}\nYAML {yaml}"
    );
});
