//! The served spec kept in the status while an object's current generation is rejected.
//!
//! The control plane holds snapshots in memory. Without this, a replica started while an object
//! is invalid would have nothing to serve for it, and would rewrite its status. With it, the
//! last valid spec travels with the object, and any replica can serve it again.
//!
//! The status is no trust anchor: whoever may patch `routingconfigs/status` can write anything
//! there. So the status writer signs the record (namespace, name, uid, version, hash) with the
//! [`StatusKey`], and [`recover`] serves a recorded spec only when
//! - the signature is this control plane's (so this control plane accepted that version of this
//!   object, which a user applied);
//! - its version is below the object's current generation (a served version is always an earlier
//!   generation, and a larger one would make every later generation look stale);
//! - the spec decodes within the size limit, passes validation again and has the recorded hash.
//!
//! Anything else is refused with an [`Untrusted`] reason, which the caller reports.

use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use routing_model::crd::SnapshotStatus;
use routing_model::manifest::{API_VERSION, KIND, ObjectMeta, RoutingConfigManifest};
use routing_model::validate::validate;
use routing_model::{RoutingConfigSpec, ValidatedConfig};

use crate::status_key::{SignatureError, StatusKey};

/// Why a stored spec cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("status.snapshot.servedSpec is unusable: {0}")]
pub struct DecodeError(String);

/// gzip, then base64, of the spec's JSON. Deterministic for equal specs, so recomputing it
/// never changes the status.
pub fn encode(spec: &RoutingConfigSpec) -> String {
    let json = serde_json::to_vec(spec).expect("spec serializes");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json).expect("writing to memory cannot fail");
    STANDARD.encode(gz.finish().expect("writing to memory cannot fail"))
}

/// The spec back from [`encode`]'s output; bounded so a hostile status cannot exhaust memory.
pub fn decode(text: &str, max_bytes: usize) -> Result<RoutingConfigSpec, DecodeError> {
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

/// What a signature covers: which object, which version, which content.
#[derive(Debug, Clone, Copy)]
pub struct ServedRecord<'a> {
    /// The object's namespace.
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The object's uid (its lineage): a record never moves to another or a re-created object.
    pub uid: &'a str,
    /// The served version (an earlier generation of the object).
    pub version: i64,
    /// The served spec's content hash (`sha256:<hex>`), which binds the spec itself.
    pub hash: &'a str,
}

impl ServedRecord<'_> {
    /// The signed bytes: one field per line (Kubernetes names and uids hold no newline).
    fn message(&self) -> Vec<u8> {
        format!(
            "cellroute.dev/served-spec/v1\n{}\n{}\n{}\n{}\n{}",
            self.namespace, self.name, self.uid, self.version, self.hash
        )
        .into_bytes()
    }

    /// The signature the status writer records beside the served spec.
    pub fn sign(&self, key: &StatusKey) -> String {
        key.sign(&self.message())
    }
}

/// Why a `status.snapshot` is not trusted: a served spec that [`recover`] refuses, or a snapshot
/// another field manager wrote (found by the status writer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// `servedSpec` without `servedSpecSignature`.
    #[error("status.snapshot.servedSpec carries no signature")]
    MissingSignature,
    /// The signature is not this control plane's for this record.
    #[error("status.snapshot.servedSpecSignature does not authenticate version {version} ({hash}): {reason}")]
    BadSignature {
        /// The recorded version.
        version: i64,
        /// The recorded hash (cut to a sane length).
        hash: String,
        /// What is wrong with the signature.
        reason: SignatureError,
    },
    /// A version that is not an earlier generation of the object.
    #[error(
        "status.snapshot.version {version} is not an earlier generation of the object (its generation is {generation}): a served version always is one"
    )]
    VersionNotBelowGeneration {
        /// The recorded version.
        version: i64,
        /// The object's current generation.
        generation: i64,
    },
    /// The spec does not decode (or is too large).
    #[error("{0}")]
    Undecodable(String),
    /// The spec fails validation.
    #[error("status.snapshot.servedSpec is not a valid spec: {0}")]
    Invalid(String),
    /// The spec is not the one the signature covers.
    #[error("status.snapshot.servedSpec hashes to {actual}, not to the recorded {recorded}")]
    HashMismatch {
        /// The hash of the spec found.
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
            Self::Undecodable(_) => "undecodable",
            Self::Invalid(_) => "invalid_spec",
            Self::HashMismatch { .. } => "hash_mismatch",
            Self::WrittenByOthers { .. } => "written_by_other_manager",
        }
    }
}

/// The object a recorded spec claims to belong to, as the apiserver stores it.
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

/// A recorded spec that passed every check: serve it as `version`.
#[derive(Debug)]
pub struct Recovered {
    /// The version it was served as.
    pub version: i64,
    /// The validated config.
    pub config: ValidatedConfig,
}

/// The served spec recorded in `recorded`, if it is one this control plane signed for `owner`
/// at an earlier generation; `Ok(None)` when nothing is recorded.
pub fn recover(
    key: &StatusKey,
    owner: Owner<'_>,
    recorded: &SnapshotStatus,
    max_bytes: usize,
) -> Result<Option<Recovered>, Untrusted> {
    let Some(text) = recorded.served_spec.as_deref() else {
        return Ok(None);
    };
    let signature = recorded
        .served_spec_signature
        .as_deref()
        .ok_or(Untrusted::MissingSignature)?;
    let record = ServedRecord {
        namespace: owner.namespace,
        name: owner.name,
        uid: owner.uid,
        version: recorded.version,
        hash: &recorded.hash,
    };
    key.verify(&record.message(), signature)
        .map_err(|reason| Untrusted::BadSignature {
            version: recorded.version,
            hash: crate::status::truncate(&recorded.hash, 80),
            reason,
        })?;
    if recorded.version >= owner.generation || recorded.version < 1 {
        return Err(Untrusted::VersionNotBelowGeneration {
            version: recorded.version,
            generation: owner.generation,
        });
    }
    let spec = decode(text, max_bytes).map_err(|e| Untrusted::Undecodable(e.to_string()))?;
    let manifest = RoutingConfigManifest {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        metadata: ObjectMeta {
            name: Some(owner.name.to_owned()),
            namespace: Some(owner.namespace.to_owned()),
        },
        spec,
        status: None,
    };
    let config = validate(manifest).map_err(|e| Untrusted::Invalid(e.to_string()))?;
    let actual = config.hash().to_string();
    if actual != recorded.hash {
        return Err(Untrusted::HashMismatch {
            actual,
            recorded: crate::status::truncate(&recorded.hash, 80),
        });
    }
    Ok(Some(Recovered {
        version: recorded.version,
        config,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_deterministically() {
        let spec: RoutingConfigSpec =
            serde_json::from_str(r#"{"defaultPlacement":"a","customerToPlacement":{"x":"a"},"placementToEndpoint":{"a":"http://a"}}"#)
                .unwrap();
        let text = encode(&spec);
        assert_eq!(text, encode(&spec));
        assert_eq!(decode(&text, 1 << 20).unwrap(), spec);
        assert!(decode(&text, 10).is_err());
        assert!(decode("not base64!", 1 << 20).is_err());
    }
}

#[cfg(test)]
mod recover_tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

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

    fn hash_of(spec: &RoutingConfigSpec) -> String {
        let manifest = RoutingConfigManifest {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta::default(),
            spec: spec.clone(),
            status: None,
        };
        validate(manifest).unwrap().hash().to_string()
    }

    /// The record an honest status writer makes for `OWNER` at `version`.
    fn signed(key: &StatusKey, version: i64, spec: &RoutingConfigSpec) -> SnapshotStatus {
        let hash = hash_of(spec);
        let signature = ServedRecord {
            namespace: OWNER.namespace,
            name: OWNER.name,
            uid: OWNER.uid,
            version,
            hash: &hash,
        }
        .sign(key);
        SnapshotStatus {
            version,
            hash,
            accepted_at: Time(Timestamp::UNIX_EPOCH),
            served_spec: Some(encode(spec)),
            served_spec_signature: Some(signature),
        }
    }

    #[test]
    fn an_honest_record_is_recovered() {
        let key = StatusKey::from_bytes(&[1; 32]);
        let good = spec("http://cell-a");
        let got = recover(&key, OWNER, &signed(&key, 2, &good), 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!((got.version, got.config.spec()), (2, &good));
        let mut nothing = signed(&key, 2, &good);
        nothing.served_spec = None;
        assert!(recover(&key, OWNER, &nothing, 1 << 20).unwrap().is_none());
    }

    #[test]
    fn forged_records_are_refused_with_their_reason() {
        let key = StatusKey::from_bytes(&[1; 32]);
        let good = spec("http://cell-a");
        let evil = spec("http://attacker");
        let label = |r: &SnapshotStatus, owner: Owner<'_>| {
            recover(&key, owner, r, 1 << 20).unwrap_err().metric_label()
        };

        let mut unsigned = signed(&key, 2, &good);
        unsigned.served_spec_signature = None;
        assert_eq!(label(&unsigned, OWNER), "missing_signature");

        // A spec nobody applied, with its matching hash, under the old signature.
        let mut swapped = signed(&key, 2, &good);
        swapped.served_spec = Some(encode(&evil));
        swapped.hash = hash_of(&evil);
        assert_eq!(label(&swapped, OWNER), "bad_signature");

        // The same spec with the old hash: the signature holds, the content does not.
        let mut content = signed(&key, 2, &good);
        content.served_spec = Some(encode(&evil));
        assert_eq!(label(&content, OWNER), "hash_mismatch");

        // Signed with another key.
        let other = StatusKey::from_bytes(&[2; 32]);
        assert_eq!(label(&signed(&other, 2, &good), OWNER), "bad_signature");

        // A signed record moved to another object, or to a re-created one.
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
            assert_eq!(label(&signed(&key, 2, &good), owner), "bad_signature");
        }

        // The right signature, but a version at or above the generation.
        for version in [3, 4, 1 << 40] {
            assert_eq!(
                label(&signed(&key, version, &good), OWNER),
                "version_not_below_generation"
            );
        }
        assert_eq!(
            label(&signed(&key, 0, &good), OWNER),
            "version_not_below_generation"
        );

        let mut garbage = signed(&key, 2, &good);
        garbage.served_spec = Some("not base64!".to_owned());
        assert_eq!(label(&garbage, OWNER), "undecodable");
        assert!(matches!(
            recover(&key, OWNER, &signed(&key, 2, &good), 10),
            Err(Untrusted::Undecodable(_))
        ));
    }
}
