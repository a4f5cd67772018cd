//! Deltas and the incremental content hash. For two tables, the delta between them, sent as
//! JSON and applied to the first, makes the second, and the hash updated along the way is the
//! second's full hash. Arbitrary changes (what a control plane could send) applied to a table
//! either change nothing and say why, or leave a hash that is the full hash of the result; the
//! incremental validation of those changes reaches the verdict, hash and warnings of validating
//! the whole result, and the routing table they patch routes like one built from it.
#![no_main]

use cellroute_fuzz::Spec;
use libfuzzer_sys::fuzz_target;
use routing_model::manifest::{API_VERSION, KIND, RoutingConfigManifest};
use routing_model::validate::{ChangeError, validate};
use routing_model::{ContentHash, RoutingTable};
use routing_model::delta::SpecChanges;
use routing_model::digest::TableDigest;

fuzz_target!(|input: (Spec, Spec, Vec<u8>)| {
    let (base, target, raw) = input;
    let Some(config) = cellroute_fuzz::validate_value(&base.0) else {
        return;
    };
    let base = config.spec().clone();
    if let Some(target) = cellroute_fuzz::validate_value(&target.0) {
        let target = target.spec();
        let changes = SpecChanges::between(&base, target);
        let wire = serde_json::to_vec(&changes).expect("changes serialize");
        let changes: SpecChanges = serde_json::from_slice(&wire).expect("changes read back");
        let mut spec = base.clone();
        let mut digest = TableDigest::of_spec(&base);
        changes
            .apply(&mut spec, Some(&mut digest))
            .expect("the delta between two tables applies to the first");
        assert_eq!(&spec, target);
        assert_eq!(digest.root(&spec), ContentHash::of_spec(target));
    }
    let Ok(changes) = serde_json::from_slice::<SpecChanges>(&raw) else {
        return;
    };
    let mut spec = base.clone();
    let mut digest = TableDigest::of_spec(&base);
    match changes.apply(&mut spec, Some(&mut digest)) {
        Ok(()) => assert_eq!(digest.root(&spec), ContentHash::of_spec(&spec)),
        Err(_) => {
            assert_eq!(spec, base, "a refused delta changed the table");
            assert_eq!(digest.root(&spec), ContentHash::of_spec(&base));
        }
    }

    let incremental = config.with_changes(&changes);
    let mut whole = base.clone();
    let full = changes.apply(&mut whole, None).map_err(ChangeError::from).and_then(|()| {
        let manifest = RoutingConfigManifest {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: config.metadata().clone(),
            spec: whole,
            status: None,
        };
        validate(manifest).map_err(ChangeError::from)
    });
    let changed = match (incremental, full) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.spec(), b.spec());
            assert_eq!(a.hash(), b.hash());
            assert_eq!(a.warnings(), b.warnings());
            a
        }
        (a, b) => {
            assert_eq!(a.err(), b.err(), "incremental and whole validation disagree");
            return;
        }
    };
    if changes.touches_placements() {
        return;
    }
    let table = RoutingTable::build(&config, |name, _| name.to_owned());
    let changes = changes.customer_to_placement.iter().map(|(c, p)| (c.as_str(), p.as_deref()));
    let Some(table) = table.with_changes(changes) else {
        return;
    };
    let spec = changed.spec();
    assert_eq!(table.customers(), spec.customer_to_placement.len());
    for (customer, placement) in &spec.customer_to_placement {
        let route = table.route(Some(customer.as_bytes()));
        assert!(route.matched, "{customer:?} is listed but not matched");
        assert_eq!(&route.placement.payload, placement);
    }
    for customer in base.customer_to_placement.keys() {
        if !spec.customer_to_placement.contains_key(customer) {
            let route = table.route(Some(customer.as_bytes()));
            assert!(!route.matched, "{customer:?} was removed but still matches");
            assert_eq!(route.placement.payload, spec.default_placement);
        }
    }
});
