//! The cache file's format, as pure functions from a snapshot to bytes and back: [`encode`] is
//! what [`super::store`] writes, [`decode`] is the one decoder [`super::load`] (and the
//! `cache_file` fuzz target) reads with.
//!
//! A file is one header line `cellroute-snapshot v1 sha256:<64 hex digits>` and then the JSON of
//! a [`SnapshotMessage`]; the digest is the SHA-256 of everything after the newline. [`decode`]
//! accepts only what the data plane would serve: a file within its size bound, whose checksum
//! matches, whose payload parses, whose spec passes the shared validation and hashes to the hash
//! the snapshot claims. Anything else is a [`DecodeError`] saying which of these failed.

use routing_model::protocol::{SnapshotMessage, truncate};
use routing_model::validate::ValidationErrors;
use routing_model::{ContentHash, ValidatedConfig};
use sha2::{Digest, Sha256};

/// The start of the header line; the payload's hex digest follows.
pub const MAGIC: &str = "cellroute-snapshot v1 sha256:";

/// Length of the header line, its newline included.
pub const HEADER_BYTES: usize = MAGIC.len() + 64 + 1;

/// How much of a parser's error is kept: it may quote the file.
const QUOTED_BYTES: usize = 512;

/// Why bytes are not a cache file the data plane may serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than any snapshot this data plane would accept (`--max-message-bytes`).
    #[error("{bytes} bytes, over the limit of {limit} bytes (--max-message-bytes and the header line)")]
    TooLarge {
        /// Size of the file.
        bytes: u64,
        /// The bound in force.
        limit: u64,
    },
    /// No newline where the header line ends.
    #[error("no header line")]
    NoHeader,
    /// The first line is not a cellroute header.
    #[error("not a cellroute snapshot file")]
    NotSnapshotFile,
    /// The payload does not hash to the header's digest.
    #[error("checksum mismatch: the file is truncated or corrupted")]
    Checksum,
    /// The payload is not the JSON of a snapshot message.
    #[error("payload does not parse: {0}")]
    Payload(String),
    /// The spec breaks the shared validation (a file written by an older data plane, or edited).
    #[error("the cached spec does not validate: {0}")]
    Invalid(String),
    /// The spec is valid but is not the one the snapshot names.
    #[error("the cached spec hashes to {computed}, not the {claimed} it claims")]
    HashMismatch {
        /// The hash in the snapshot's identity.
        claimed: ContentHash,
        /// The hash of the spec it carries.
        computed: ContentHash,
    },
}

/// A decoded cache file: the snapshot, and its spec as the shared validation accepted it.
#[derive(Debug, Clone)]
pub struct CachedSnapshot {
    /// The snapshot as it was pushed.
    pub message: SnapshotMessage,
    /// Its spec, validated; `message.snapshot.hash` is its hash (in either scheme).
    pub config: ValidatedConfig,
}

/// The file for `snapshot`: header line, then its JSON.
pub fn encode(snapshot: &SnapshotMessage) -> Vec<u8> {
    // Strings, integers and maps of strings: serializing cannot fail.
    let payload = serde_json::to_vec(snapshot).expect("a snapshot message serializes");
    let mut file = Vec::with_capacity(HEADER_BYTES + payload.len());
    file.extend_from_slice(MAGIC.as_bytes());
    file.extend_from_slice(hex(&Sha256::digest(&payload)).as_bytes());
    file.push(b'\n');
    file.extend_from_slice(&payload);
    file
}

/// Decodes a cache file of at most `max_bytes` bytes, refusing anything the data plane would not
/// serve. Memory stays proportional to the input: an oversized one is refused before any of it
/// is parsed.
pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<CachedSnapshot, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len() as u64,
            limit: max_bytes as u64,
        });
    }
    // The header has a fixed length: no need to search a large file for its first newline.
    let newline = bytes
        .iter()
        .take(HEADER_BYTES)
        .position(|b| *b == b'\n')
        .ok_or(DecodeError::NoHeader)?;
    let expected = std::str::from_utf8(&bytes[..newline])
        .ok()
        .and_then(|header| header.strip_prefix(MAGIC))
        .ok_or(DecodeError::NotSnapshotFile)?;
    let payload = &bytes[newline + 1..];
    if hex(&Sha256::digest(payload)) != expected {
        return Err(DecodeError::Checksum);
    }
    let message: SnapshotMessage = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::Payload(truncate(&e.to_string(), QUOTED_BYTES)))?;
    let config = routing_model::validate::validate(message.to_manifest())
        .map_err(|e: ValidationErrors| DecodeError::Invalid(truncate(&e.to_string(), QUOTED_BYTES)))?;
    // A cache written before delta push holds a hash in the JSON scheme; it is checked in that.
    if !message.snapshot.hash.matches(config.spec(), config.hash()) {
        return Err(DecodeError::HashMismatch {
            claimed: message.snapshot.hash,
            computed: routing_model::ContentHash::of_spec_in(message.snapshot.hash.scheme(), config.spec()),
        });
    }
    Ok(CachedSnapshot { message, config })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(in crate::cache) mod tests {
    use super::*;
    use routing_model::ParseLimits;
    use routing_model::protocol::SnapshotRef;

    const LIMIT: usize = 1 << 20;

    pub(in crate::cache) fn snapshot(version: i64) -> SnapshotMessage {
        let cfg = routing_model::load(
            b"apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec: {defaultPlacement: a, placementToEndpoint: {a: 'http://a'}}\n",
            ParseLimits::default(),
        )
        .unwrap();
        SnapshotMessage {
            routing_config: "ns/routes".into(),
            snapshot: SnapshotRef {
                lineage: "uid-1".into(),
                version,
                hash: cfg.hash(),
            },
            spec: cfg.spec().clone(),
        }
    }

    /// `file` with its payload replaced by `payload` and a checksum that matches it.
    fn resealed(payload: &[u8]) -> Vec<u8> {
        let mut file = format!("{MAGIC}{}\n", hex(&Sha256::digest(payload))).into_bytes();
        file.extend_from_slice(payload);
        file
    }

    #[test]
    fn round_trips() {
        let file = encode(&snapshot(3));
        assert_eq!(file.iter().position(|b| *b == b'\n'), Some(HEADER_BYTES - 1));
        let cached = decode(&file, LIMIT).unwrap();
        assert_eq!(cached.message, snapshot(3));
        assert_eq!(cached.config.hash(), cached.message.snapshot.hash);
    }

    /// A cache written before delta push holds a hash in the JSON scheme: it still loads, and
    /// one that lies in that scheme is still refused (the case the cache_file fuzz target
    /// reached once its oracle knew only the table scheme).
    #[test]
    fn a_cache_with_a_json_scheme_hash_loads_and_is_checked_in_that_scheme() {
        let mut old = snapshot(2);
        old.snapshot.hash = routing_model::ContentHash::json_of_spec(&old.spec);
        let cached = decode(&encode(&old), LIMIT).expect("a cache from before delta push loads");
        assert_eq!(cached.message.snapshot.hash, old.snapshot.hash);
        let mut lying = old.clone();
        lying.spec.default_placement = "b".into();
        lying
            .spec
            .placement_to_endpoint
            .insert("b".into(), "http://b".into());
        assert!(matches!(
            decode(&encode(&lying), LIMIT),
            Err(DecodeError::HashMismatch { .. })
        ));
    }

    #[test]
    fn damage_is_named() {
        let good = encode(&snapshot(1));
        let cases: [(&str, Vec<u8>, DecodeError); 5] = [
            ("empty", Vec::new(), DecodeError::NoHeader),
            (
                "no newline in the header's length",
                vec![b'x'; 200],
                DecodeError::NoHeader,
            ),
            (
                "another format",
                b"cellroute-snapshot v2 sha256:00\n{}".to_vec(),
                DecodeError::NotSnapshotFile,
            ),
            (
                "a header that is not text",
                [&[0xff, 0xfe][..], &good[2..]].concat(),
                DecodeError::NotSnapshotFile,
            ),
            (
                "truncated",
                good[..good.len() - 1].to_vec(),
                DecodeError::Checksum,
            ),
        ];
        for (what, bytes, want) in cases {
            assert_eq!(decode(&bytes, LIMIT).unwrap_err(), want, "{what}");
        }
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let file = encode(&snapshot(1));
        let err = decode(&file, file.len() - 1).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                bytes: file.len() as u64,
                limit: file.len() as u64 - 1
            }
        );
        assert!(decode(&file, file.len()).is_ok());
    }

    /// A checksum protects against damage, not against content the data plane would refuse: a
    /// resealed file must still validate and hash to what it claims.
    #[test]
    fn a_well_sealed_file_must_still_be_a_snapshot_the_data_plane_serves() {
        let err = decode(&resealed(b"{\"routing_config\":1}"), LIMIT).unwrap_err();
        assert!(matches!(err, DecodeError::Payload(_)), "{err}");

        let mut invalid = snapshot(1);
        invalid.spec.default_placement = "nowhere".into();
        let err = decode(&resealed(&serde_json::to_vec(&invalid).unwrap()), LIMIT).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Invalid(why) if why.contains("spec.defaultPlacement")),
            "{err}"
        );

        let mut forged = snapshot(1);
        forged
            .spec
            .customer_to_placement
            .insert("acme".into(), "a".into());
        let err = decode(&resealed(&serde_json::to_vec(&forged).unwrap()), LIMIT).unwrap_err();
        assert!(matches!(err, DecodeError::HashMismatch { .. }), "{err}");
    }

    #[test]
    fn errors_quoting_the_file_stay_short() {
        let huge = format!("{{\"routing_config\": \"{}", "é".repeat(100_000));
        let err = decode(&resealed(huge.as_bytes()), LIMIT).unwrap_err().to_string();
        assert!(err.len() < 1024, "{} bytes", err.len());
    }
}
