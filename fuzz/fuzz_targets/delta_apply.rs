//! Deltas and the incremental content hash. For two tables, the delta between them, sent as
//! JSON and applied to the first, makes the second, and the hash updated along the way is the
//! second's full hash. Arbitrary changes (what a control plane could send) applied to a table
//! either change nothing and say why, or leave a hash that is the full hash of the result.
#![no_main]

use cellroute_fuzz::Spec;
use libfuzzer_sys::fuzz_target;
use routing_model::ContentHash;
use routing_model::delta::SpecChanges;
use routing_model::digest::TableDigest;

fuzz_target!(|input: (Spec, Spec, Vec<u8>)| {
    let (base, target, raw) = input;
    let Some(base) = cellroute_fuzz::validate_value(&base.0) else {
        return;
    };
    let base = base.spec().clone();
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
});
