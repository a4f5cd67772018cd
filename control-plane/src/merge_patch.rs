//! JSON merge patches (RFC 7386) from what is stored to what is wanted.
//!
//! The control plane writes status with merge patches rather than server-side apply. A
//! server-side apply makes the API server compute which manager owns every field of the object;
//! for a large table that is one entry per customer key, which doubles the request, and an
//! object that only just fits (the API server drops an object's field-ownership lists when they
//! would not fit) then fails every apply with a 500. A merge patch the API server stores without
//! those lists when they would not fit, and it carries only what changed.
//!
//! A merge patch merges objects key by key and replaces everything else (arrays too); `null`
//! removes a key. [`diff`] therefore nulls what the stored document has and the wanted one does
//! not, and never descends into arrays.

use serde_json::{Map, Value};

/// The merge patch that turns `current` into `desired`, or `None` when they are equal.
///
/// `desired` holds no `null`s (a `null` in a merge patch means "remove").
pub fn diff(current: &Value, desired: &Value) -> Option<Value> {
    match (current, desired) {
        (Value::Object(now), Value::Object(want)) => {
            let mut patch = Map::new();
            for (key, value) in want {
                match now.get(key) {
                    Some(old) => {
                        if let Some(change) = diff(old, value) {
                            patch.insert(key.clone(), change);
                        }
                    }
                    None => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            for key in now.keys().filter(|k| !want.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ if current == desired => None,
        _ => Some(desired.clone()),
    }
}

/// `value` without the member at `path` (a list of object keys), if it is there.
pub fn without(mut value: Value, path: &[&str]) -> Value {
    fn remove(value: &mut Value, path: &[&str]) {
        match path {
            [] => {}
            [last] => {
                if let Some(map) = value.as_object_mut() {
                    map.remove(*last);
                }
            }
            [first, rest @ ..] => {
                if let Some(child) = value.get_mut(*first) {
                    remove(child, rest);
                }
            }
        }
    }
    remove(&mut value, path);
    value
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What a merge patch does, as the API server applies it.
    fn apply(target: &Value, patch: &Value) -> Value {
        match (target, patch) {
            (_, Value::Object(changes)) => {
                let mut out = target.as_object().cloned().unwrap_or_default();
                for (key, change) in changes {
                    if change.is_null() {
                        out.remove(key);
                    } else {
                        let merged = apply(out.get(key).unwrap_or(&Value::Null), change);
                        out.insert(key.clone(), merged);
                    }
                }
                Value::Object(out)
            }
            _ => patch.clone(),
        }
    }

    #[test]
    fn a_diff_applied_gives_the_desired_document() {
        let current = json!({
            "observedGeneration": 1,
            "conditions": [{"type": "Accepted", "status": "True"}],
            "snapshot": {"version": 1, "hash": "h1", "servedSpec": "old"},
            "dataPlanes": {"connected": 2, "replicas": {"cp-0": {"connected": 2}}},
        });
        let desired = json!({
            "observedGeneration": 2,
            "conditions": [{"type": "Accepted", "status": "False"}],
            "snapshot": {"version": 1, "hash": "h1"},
            "dataPlanes": {"connected": 2},
        });
        let patch = diff(&current, &desired).unwrap();
        assert_eq!(
            patch,
            json!({
                "observedGeneration": 2,
                "conditions": [{"type": "Accepted", "status": "False"}],
                "snapshot": {"servedSpec": null},
                "dataPlanes": {"replicas": null},
            })
        );
        assert_eq!(apply(&current, &patch), desired);
        assert_eq!(diff(&desired, &desired), None);
        assert_eq!(diff(&Value::Null, &desired), Some(desired.clone()));
    }

    #[test]
    fn what_another_writer_owns_can_be_left_out_of_both_sides() {
        let current = json!({"dataPlanes": {"connected": 1, "replicas": {"cp-1": {"connected": 1}}}});
        let desired = json!({"dataPlanes": {"connected": 3}});
        let path = ["dataPlanes", "replicas"];
        let patch = diff(&without(current.clone(), &path), &without(desired, &path)).unwrap();
        assert_eq!(patch, json!({"dataPlanes": {"connected": 3}}));
        assert_eq!(
            apply(&current, &patch),
            json!({"dataPlanes": {"connected": 3, "replicas": {"cp-1": {"connected": 1}}}})
        );
    }
}
