//! The served table as recorded in the status, so that every replica serves the same version of
//! it, and any replica can keep serving it while a newer generation of one of its objects is
//! refused.
//!
//! The control plane holds tables in memory. What travels in the status:
//! - the RoutingConfig's `status.snapshot`: the served table's `version`, content `hash`, the
//!   RoutingConfig's `generation` it holds, and the leader's `signature` over them. This is how
//!   the leader hands a version to the other replicas and to its successors: a replica serves a
//!   table under a version only when that signed record names its hash;
//! - while an object's current generation is not the one the table holds (refused, or blocked by
//!   another object), a copy of the generation it holds (`servedSpec`: gzip, then base64, of its
//!   JSON) in that object's own status, and for a RoutingShard the generation the copy is of.
//!
//! The status is no trust anchor: whoever may patch a status can write anything there. So the
//! record is signed with the [`StatusKey`], and [`check`] trusts it only when
//! - the signature is this control plane's, for this object (namespace, name, uid);
//! - its version is in range (`1..=2^53`) and its generation is not above the object's (below
//!   it, when the record carries a copy: a copy is only kept for an earlier generation);
//!
//! and [`recover`] serves what it rebuilds from the copies only when it composes (the shared
//! rules) and hashes to the signed hash. A copy therefore needs no signature of its own: the only
//! table it can help rebuild is the one the leader signed, which users applied and it accepted.
//! Anything else is refused with an [`Untrusted`] reason, which the caller reports.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use routing_model::compose::{Members, Shard, compose};
use routing_model::crd::{RoutingConfig, RoutingShard, SnapshotStatus};
use routing_model::{ContentHash, RoutingConfigSpec, ValidatedConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::snapshot::{ServedMembers, ServedShard};
use crate::status_key::{SignatureError, StatusKey};

/// The largest version a record may carry: JSON's exact integers, far beyond any real count of
/// changes, and far from where adding one would overflow.
pub const MAX_VERSION: i64 = 1 << 53;

/// Largest copy recorded in a status (gzip, then base64): a status never grows by more than
/// this, whatever the table's size.
pub const MAX_RECORDED_SPEC_BYTES: usize = 256 * 1024;

/// A copy is recorded only while the object's own spec plus the copy stay within this: an object
/// near the API server's limit (etcd's 1.5 MiB request) must keep room for its status, or no
/// status write of it would ever succeed.
pub const RECORDED_SPEC_OBJECT_BUDGET: usize = 1024 * 1024;

/// The copy of `value` to record in the status of an object whose own spec is `own_spec_bytes`
/// of JSON, or, when it would not fit, its size.
pub fn bounded_copy(value: &impl Serialize, own_spec_bytes: usize) -> Result<String, usize> {
    let encoded = encode(value);
    if encoded.len() <= MAX_RECORDED_SPEC_BYTES
        && own_spec_bytes + encoded.len() <= RECORDED_SPEC_OBJECT_BUDGET
    {
        Ok(encoded)
    } else {
        Err(encoded.len())
    }
}

/// Why a stored copy cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("servedSpec is unusable: {0}")]
pub struct DecodeError(String);

/// gzip, then base64, of `value`'s JSON. Deterministic for equal values, so recomputing it never
/// changes the status.
pub fn encode(value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).expect("a spec serializes");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json).expect("writing to memory cannot fail");
    STANDARD.encode(gz.finish().expect("writing to memory cannot fail"))
}

/// The value back from [`encode`]'s output; bounded so a hostile status cannot exhaust memory.
pub fn decode<T: DeserializeOwned>(text: &str, max_bytes: usize) -> Result<T, DecodeError> {
    let gz = STANDARD.decode(text).map_err(|e| DecodeError(e.to_string()))?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|e| DecodeError(e.to_string()))?;
    if json.len() > max_bytes {
        return Err(DecodeError(format!("larger than {max_bytes} bytes")));
    }
    serde_json::from_slice(&json).map_err(|e| DecodeError(e.to_string()))
}

/// What a signature covers: which object, which version of its table, which content, and which
/// generation of the RoutingConfig that table holds.
#[derive(Debug, Clone, Copy)]
pub struct TableRecord<'a> {
    /// The RoutingConfig's namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its uid (the table's lineage): a record never moves to another or a re-created object.
    pub uid: &'a str,
    /// The served version.
    pub version: i64,
    /// The served table's content hash (`sha256:<hex>`), which binds the content itself.
    pub hash: &'a str,
    /// The RoutingConfig's generation in the served table.
    pub generation: i64,
}

impl TableRecord<'_> {
    /// The signed bytes: one field per line (Kubernetes names and uids hold no newline).
    fn message(&self) -> Vec<u8> {
        format!(
            "cellroute.dev/served-table/v1\n{}\n{}\n{}\n{}\n{}\n{}",
            self.namespace, self.name, self.uid, self.version, self.hash, self.generation
        )
        .into_bytes()
    }

    /// The signature the status writer records.
    pub fn sign(&self, key: &StatusKey) -> String {
        key.sign(&self.message())
    }
}

/// Why a `status.snapshot` is not trusted: a record [`check`] or [`recover`] refuses, or a
/// snapshot another field manager wrote (found by the status writer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// A copy of a spec without a signature.
    #[error("status.snapshot carries a servedSpec but no signature")]
    MissingSignature,
    /// The signature is not this control plane's for this record.
    #[error("status.snapshot.signature does not authenticate version {version} ({hash}): {reason}")]
    BadSignature {
        /// The recorded version.
        version: i64,
        /// The recorded hash (cut to a sane length).
        hash: String,
        /// What is wrong with the signature.
        reason: SignatureError,
    },
    /// A generation the object never had, or a copy of the current one.
    #[error(
        "status.snapshot.generation {recorded} is not an earlier generation of the object (its generation is {generation}): the generation a copy is kept of always is one"
    )]
    VersionNotBelowGeneration {
        /// The recorded generation.
        recorded: i64,
        /// The object's current generation.
        generation: i64,
    },
    /// A version out of range.
    #[error("status.snapshot.version {version} is out of range (1 to {MAX_VERSION})")]
    VersionOutOfRange {
        /// The recorded version.
        version: i64,
    },
    /// A copy does not decode (or is too large).
    #[error("{0}")]
    Undecodable(String),
    /// What the copies rebuild is not a valid table.
    #[error("the table rebuilt from the recorded copies is not valid: {0}")]
    Invalid(String),
    /// What the copies rebuild is not the table the signature covers.
    #[error("the table rebuilt from the recorded copies hashes to {actual}, not to the recorded {recorded}")]
    HashMismatch {
        /// The hash of what was rebuilt.
        actual: String,
        /// The recorded hash.
        recorded: String,
    },
    /// Someone other than the status writer wrote part of `status.snapshot` (found by the
    /// leader, which removes it and writes what it serves).
    #[error("status.snapshot was written by {managers}, not by the control plane; removed it")]
    WrittenByOthers {
        /// The field managers that own part of it (cut to a sane length).
        managers: String,
    },
}

impl Untrusted {
    /// The `reason` label of `cellroute_untrusted_status_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::BadSignature { .. } => "bad_signature",
            Self::VersionNotBelowGeneration { .. } => "version_not_below_generation",
            Self::VersionOutOfRange { .. } => "version_out_of_range",
            Self::Undecodable(_) => "undecodable",
            Self::Invalid(_) => "invalid_spec",
            Self::HashMismatch { .. } => "hash_mismatch",
            Self::WrittenByOthers { .. } => "written_by_other_manager",
        }
    }
}

/// The RoutingConfig a record claims to belong to, as the apiserver stores it.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
    /// `metadata.generation`.
    pub generation: i64,
}

/// A record this control plane signed: a version the leader gave a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    /// The version.
    pub version: i64,
    /// The table's content hash.
    pub hash: ContentHash,
    /// The RoutingConfig's generation in that table.
    pub generation: i64,
}

/// The record in `recorded`, if this control plane signed it for `owner`; `Ok(None)` when there
/// is none. A record without a signature and without a copy is a control plane's from before
/// records were signed: nothing to trust, nothing forged (the version line then continues from
/// the object's generations, as it did then).
pub fn check(
    key: &StatusKey,
    owner: Owner<'_>,
    recorded: &SnapshotStatus,
) -> Result<Option<Trusted>, Untrusted> {
    let Some(signature) = recorded.signature.as_deref() else {
        return match recorded.served_spec {
            Some(_) => Err(Untrusted::MissingSignature),
            None => Ok(None),
        };
    };
    let generation = recorded.generation.unwrap_or(0);
    let record = TableRecord {
        namespace: owner.namespace,
        name: owner.name,
        uid: owner.uid,
        version: recorded.version,
        hash: &recorded.hash,
        generation,
    };
    key.verify(&record.message(), signature)
        .map_err(|reason| Untrusted::BadSignature {
            version: recorded.version,
            hash: crate::report::status::truncate(&recorded.hash, 80),
            reason,
        })?;
    if !(1..=MAX_VERSION).contains(&recorded.version) {
        return Err(Untrusted::VersionOutOfRange {
            version: recorded.version,
        });
    }
    let copy = recorded.served_spec.is_some();
    if generation < 1 || generation > owner.generation || (copy && generation == owner.generation) {
        return Err(Untrusted::VersionNotBelowGeneration {
            recorded: generation,
            generation: owner.generation,
        });
    }
    let hash = recorded
        .hash
        .parse()
        .map_err(|e: &str| Untrusted::Undecodable(format!("status.snapshot.hash: {e}")))?;
    Ok(Some(Trusted {
        version: recorded.version,
        hash,
        generation,
    }))
}

/// A table rebuilt from the records: serve it as `version`.
#[derive(Debug)]
pub struct Recovered {
    /// The version it was served as.
    pub version: i64,
    /// The validated table.
    pub config: ValidatedConfig,
    /// The objects it was rebuilt from, at the generations it holds.
    pub members: ServedMembers,
}

/// Why the records cannot rebuild the served table, though nothing in them is forged: a copy is
/// missing (kept out as too large, or the object was deleted meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot rebuild the served table (version {version}) from the status: {why}")]
pub struct Incomplete {
    /// The recorded version.
    pub version: i64,
    /// What is missing.
    pub why: String,
}

/// Why [`recover`] rebuilt nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRecovered {
    /// The records are not trustworthy.
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    /// Something needed is not recorded.
    #[error(transparent)]
    Incomplete(#[from] Incomplete),
}

/// Rebuilds the table of the trusted record from the current objects and their copies: for each
/// object, its current spec when its current generation is the one the table holds, else the copy
/// in its status.
pub fn recover(
    trusted: &Trusted,
    config: &RoutingConfig,
    shards: &[Arc<RoutingShard>],
    max_bytes: usize,
) -> Result<Recovered, NotRecovered> {
    let incomplete = |why: String| Incomplete {
        version: trusted.version,
        why,
    };
    let namespace = config.metadata.namespace.clone().unwrap_or_default();
    let name = config.metadata.name.clone().unwrap_or_default();
    let current = config.metadata.generation.unwrap_or(0);
    let recorded = config.status.as_ref().and_then(|s| s.snapshot.as_ref());
    let config_spec: RoutingConfigSpec = if trusted.generation == current {
        config.spec.clone()
    } else {
        let text = recorded.and_then(|r| r.served_spec.as_deref()).ok_or_else(|| {
            incomplete(format!(
                "no copy of generation {} of RoutingConfig {namespace}/{name} is recorded (kept out as too large?)",
                trusted.generation
            ))
        })?;
        decode(text, max_bytes).map_err(|e| Untrusted::Undecodable(e.to_string()))?
    };
    let mut held = BTreeMap::new();
    for shard in shards {
        let Some(status) = &shard.status else { continue };
        let Some(generation) = status.served_generation else {
            continue;
        };
        let shard_name = shard.metadata.name.clone().unwrap_or_default();
        let customers: routing_model::CustomerMap = if shard.metadata.generation == Some(generation) {
            shard.spec.customer_to_placement.clone()
        } else {
            let text = status.served_spec.as_deref().ok_or_else(|| {
                incomplete(format!(
                    "no copy of generation {generation} of RoutingShard {namespace}/{shard_name} is recorded (kept out as too large?)"
                ))
            })?;
            decode(text, max_bytes).map_err(|e| Untrusted::Undecodable(e.to_string()))?
        };
        let mut object = RoutingShard::new(
            &shard_name,
            routing_model::manifest::RoutingShardSpec {
                customer_to_placement: customers,
            },
        );
        object.metadata = shard.metadata.clone();
        object.metadata.generation = Some(generation);
        let since = status.version.unwrap_or(trusted.version);
        held.insert(
            shard_name,
            ServedShard {
                object: Arc::new(object),
                since,
            },
        );
    }
    let members = Members {
        namespace: &namespace,
        name: &name,
        config: &config_spec,
        shards: held
            .iter()
            .map(|(name, s)| Shard {
                name,
                customers: &s.object.spec.customer_to_placement,
            })
            .collect(),
    };
    let composed = compose(&members).map_err(|e| Untrusted::Invalid(e.to_string()))?;
    // A record written before delta push names its hash in the JSON scheme; it is checked in that.
    if !trusted.hash.matches(composed.spec(), composed.hash()) {
        return Err(Untrusted::HashMismatch {
            actual: routing_model::ContentHash::of_spec_in(trusted.hash.scheme(), composed.spec())
                .to_string(),
            recorded: trusted.hash.to_string(),
        }
        .into());
    }
    let mut config_object = RoutingConfig::new(&name, config_spec);
    config_object.metadata = config.metadata.clone();
    config_object.metadata.generation = Some(trusted.generation);
    Ok(Recovered {
        version: trusted.version,
        config: composed,
        members: ServedMembers {
            config: Arc::new(config_object),
            shards: held,
        },
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use routing_model::crd::{RoutingConfigStatus, RoutingShardStatus};

    use super::*;

    const OWNER: Owner<'static> = Owner {
        namespace: "ns",
        name: "routes",
        uid: "uid-1",
        generation: 3,
    };

    fn spec(endpoint: &str) -> RoutingConfigSpec {
        serde_json::from_value(serde_json::json!({
            "defaultPlacement": "a",
            "customerToPlacement": {"acme": "a"},
            "placementToEndpoint": {"a": endpoint},
        }))
        .unwrap()
    }

    fn hash_of(spec: &RoutingConfigSpec, shards: &[(&str, &routing_model::CustomerMap)]) -> ContentHash {
        compose(&Members {
            namespace: "ns",
            name: "routes",
            config: spec,
            shards: shards
                .iter()
                .map(|(name, customers)| Shard { name, customers })
                .collect(),
        })
        .unwrap()
        .hash()
    }

    /// The record an honest status writer makes for `OWNER`.
    fn signed(
        key: &StatusKey,
        version: i64,
        generation: i64,
        hash: ContentHash,
        copy: Option<&RoutingConfigSpec>,
    ) -> SnapshotStatus {
        let hash = hash.to_string();
        let signature = TableRecord {
            namespace: OWNER.namespace,
            name: OWNER.name,
            uid: OWNER.uid,
            version,
            hash: &hash,
            generation,
        }
        .sign(key);
        SnapshotStatus {
            version,
            hash,
            accepted_at: Time(Timestamp::UNIX_EPOCH),
            generation: Some(generation),
            shards: None,
            signature: Some(signature),
            served_spec: copy.map(encode),
        }
    }

    fn object(current: &RoutingConfigSpec, generation: i64, recorded: SnapshotStatus) -> RoutingConfig {
        let mut obj = RoutingConfig::new("routes", current.clone());
        obj.metadata.namespace = Some("ns".into());
        obj.metadata.uid = Some("uid-1".into());
        obj.metadata.generation = Some(generation);
        obj.status = Some(RoutingConfigStatus {
            snapshot: Some(recorded),
            ..RoutingConfigStatus::default()
        });
        obj
    }

    #[test]
    fn a_copy_round_trips_deterministically_and_is_bounded() {
        let spec = spec("http://a");
        let text = encode(&spec);
        assert_eq!(text, encode(&spec));
        assert_eq!(decode::<RoutingConfigSpec>(&text, 1 << 20).unwrap(), spec);
        assert!(decode::<RoutingConfigSpec>(&text, 10).is_err());
        assert!(decode::<RoutingConfigSpec>("not base64!", 1 << 20).is_err());
    }

    #[test]
    fn an_honest_record_is_trusted_and_rebuilds_a_refused_table_with_its_shards() {
        let key = StatusKey::from_bytes(&[1; 32]);
        let served = spec("http://cell-a");
        let served_shard: routing_model::CustomerMap =
            [("globex".to_owned(), "a".to_owned())].into_iter().collect();
        let hash = hash_of(&served, &[("routes-0", &served_shard)]);
        // Generation 2 of the RoutingConfig was served with shard routes-0 at its generation 4;
        // both were edited since (generation 3, and 5), and the table is refused.
        let recorded = signed(&key, 7, 2, hash, Some(&served));
        let trusted = check(&key, OWNER, &recorded).unwrap().unwrap();
        assert_eq!((trusted.version, trusted.generation), (7, 2));
        let obj = object(&spec("http://edited"), 3, recorded);
        let mut shard = RoutingShard::new(
            "routes-0",
            routing_model::manifest::RoutingShardSpec {
                customer_to_placement: [("globex".to_owned(), "nowhere".to_owned())]
                    .into_iter()
                    .collect(),
            },
        );
        shard.metadata.generation = Some(5);
        shard.status = Some(RoutingShardStatus {
            served_generation: Some(4),
            version: Some(6),
            served_spec: Some(encode(&served_shard)),
            ..RoutingShardStatus::default()
        });
        let got = recover(&trusted, &obj, &[Arc::new(shard.clone())], 1 << 20).unwrap();
        assert_eq!((got.version, got.config.hash()), (7, hash));
        assert_eq!(got.members.config_generation(), 2);
        assert_eq!(got.members.shards["routes-0"].since, 6);
        assert_eq!(got.members.shards["routes-0"].object.metadata.generation, Some(4));

        // Without the shard's copy, nothing is rebuilt, and it says what is missing.
        shard.status.as_mut().unwrap().served_spec = None;
        let err = recover(&trusted, &obj, &[Arc::new(shard.clone())], 1 << 20).unwrap_err();
        assert!(matches!(err, NotRecovered::Incomplete(_)), "{err}");
        // Without the shard at all (deleted): it rebuilds another table, which is refused.
        let err = recover(&trusted, &obj, &[], 1 << 20).unwrap_err();
        assert_eq!(
            match err {
                NotRecovered::Untrusted(u) => u.metric_label(),
                other => panic!("{other}"),
            },
            "hash_mismatch"
        );
    }

    #[test]
    fn forged_records_are_refused_with_their_reason() {
        let key = StatusKey::from_bytes(&[1; 32]);
        let good = spec("http://cell-a");
        let evil = spec("http://attacker");
        let hash = hash_of(&good, &[]);
        let label = |r: &SnapshotStatus, owner: Owner<'_>| check(&key, owner, r).unwrap_err().metric_label();

        // Legacy (unsigned, no copy): nothing to trust, nothing reported.
        let mut legacy = signed(&key, 2, 2, hash, None);
        legacy.signature = None;
        assert_eq!(check(&key, OWNER, &legacy), Ok(None));

        let mut unsigned = signed(&key, 2, 2, hash, Some(&good));
        unsigned.signature = None;
        assert_eq!(label(&unsigned, OWNER), "missing_signature");

        // A table nobody applied, with its matching hash, under the old signature.
        let mut swapped = signed(&key, 2, 2, hash, Some(&good));
        swapped.served_spec = Some(encode(&evil));
        swapped.hash = hash_of(&evil, &[]).to_string();
        assert_eq!(label(&swapped, OWNER), "bad_signature");

        // The evil copy under the honest hash: trusted record, but it rebuilds another table.
        let mut content = signed(&key, 2, 2, hash, Some(&evil));
        let trusted = check(&key, OWNER, &content).unwrap().unwrap();
        let obj = object(&good, 3, content.clone());
        let err = recover(&trusted, &obj, &[], 1 << 20).unwrap_err();
        assert!(
            matches!(&err, NotRecovered::Untrusted(u) if u.metric_label() == "hash_mismatch"),
            "{err}"
        );
        content.served_spec = Some("not base64!".to_owned());
        let obj = object(&good, 3, content);
        let err = recover(&trusted, &obj, &[], 1 << 20).unwrap_err();
        assert!(
            matches!(&err, NotRecovered::Untrusted(u) if u.metric_label() == "undecodable"),
            "{err}"
        );

        // Signed with another key, or moved to another object.
        let other = StatusKey::from_bytes(&[2; 32]);
        assert_eq!(
            label(&signed(&other, 2, 2, hash, Some(&good)), OWNER),
            "bad_signature"
        );
        for owner in [
            Owner {
                name: "other",
                ..OWNER
            },
            Owner {
                uid: "uid-2",
                ..OWNER
            },
            Owner {
                namespace: "ns2",
                ..OWNER
            },
        ] {
            assert_eq!(
                label(&signed(&key, 2, 2, hash, Some(&good)), owner),
                "bad_signature"
            );
        }

        // The right signature, but a generation the object never had, or a copy of the current
        // one; or a version out of range.
        assert_eq!(
            label(&signed(&key, 2, 4, hash, None), OWNER),
            "version_not_below_generation"
        );
        assert_eq!(
            label(&signed(&key, 3, 3, hash, Some(&good)), OWNER),
            "version_not_below_generation"
        );
        assert_eq!(
            label(&signed(&key, 2, 0, hash, None), OWNER),
            "version_not_below_generation"
        );
        assert!(
            check(&key, OWNER, &signed(&key, 3, 3, hash, None))
                .unwrap()
                .is_some()
        );
        for version in [0, -1, MAX_VERSION + 1, i64::MAX] {
            assert_eq!(
                label(&signed(&key, version, 2, hash, None), OWNER),
                "version_out_of_range"
            );
        }
    }
}
