//! The served spec kept in the status while an object's current generation is rejected.
//!
//! The control plane holds snapshots in memory. Without this, a replica started while an object
//! is invalid would have nothing to serve for it, and would rewrite its status. With it, the
//! last valid spec travels with the object: any replica decodes it, re-validates it, checks it
//! against the recorded hash, and serves it again.

use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use routing_model::RoutingConfigSpec;

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
