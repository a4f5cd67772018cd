//! Reading a snapshot message's identity without decoding its table.
//!
//! A lightweight client only needs the message type and the `snapshot` reference to ACK. The
//! control plane writes both before the (large) `spec`, so they are read from the head of the
//! text; anything unexpected falls back to a full decode, which is always right.

use routing_model::protocol::{ServerMessage, SnapshotRef};
use serde::Deserialize;

/// Decompressed bytes read to find a compressed snapshot's identity.
const HEAD_BYTES: u64 = 4096;

/// What a client needs from a server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A snapshot (or delta) to ACK.
    Snapshot(SnapshotRef),
    /// The session opened.
    Welcome,
    /// Anything else (missing, error): a benchmark cannot go on.
    Other(String),
}

/// The head of `text`.
pub fn head(text: &str) -> anyhow::Result<Head> {
    if let Some(rest) = text.strip_prefix(r#"{"type":"snapshot","#)
        && let Some(at) = rest.find(r#""snapshot":"#)
    {
        let mut de = serde_json::Deserializer::from_str(&rest[at + r#""snapshot":"#.len()..]);
        if let Ok(reference) = SnapshotRef::deserialize(&mut de) {
            return Ok(Head::Snapshot(reference));
        }
    }
    if text.starts_with(r#"{"type":"welcome","#) {
        return Ok(Head::Welcome);
    }
    Ok(match serde_json::from_str::<ServerMessage>(text)? {
        ServerMessage::Snapshot(s) => Head::Snapshot(s.snapshot),
        // Small: decoded whole.
        ServerMessage::Delta(d) => Head::Snapshot(d.snapshot),
        ServerMessage::Welcome(_) => Head::Welcome,
        other => Head::Other(serde_json::to_string(&other)?),
    })
}

/// Reads the head of gzip-compressed messages, reusing one inflate state per session: a fresh
/// decoder allocates and zeroes tens of KiB, which at a thousand clients is the swarm's own cost,
/// not the control plane's.
pub struct GzipHead {
    inflate: flate2::Decompress,
    out: Vec<u8>,
}

impl Default for GzipHead {
    fn default() -> Self {
        Self {
            inflate: flate2::Decompress::new(false),
            out: vec![0; HEAD_BYTES as usize],
        }
    }
}

impl GzipHead {
    /// The head of `bytes`: only its first few KiB are inflated; the whole message only when the
    /// identity is not there.
    pub fn head(&mut self, bytes: &[u8], limit: usize) -> anyhow::Result<Head> {
        // A plain gzip header (no name, comment or extra field, as flate2 writes it) is 10 bytes.
        if let [0x1f, 0x8b, 8, 0, _, _, _, _, _, _, deflate @ ..] = bytes {
            self.inflate.reset(false);
            self.out.clear();
            let out = &mut self.out;
            out.resize(HEAD_BYTES as usize, 0);
            let _ = self
                .inflate
                .decompress(deflate, out, flate2::FlushDecompress::None)?;
            let produced = self.inflate.total_out() as usize;
            let start = &out[..produced];
            let valid = match std::str::from_utf8(start) {
                Ok(text) => text,
                Err(e) => std::str::from_utf8(&start[..e.valid_up_to()])?,
            };
            if let Some(rest) = valid.strip_prefix(r#"{"type":"snapshot","#)
                && let Some(at) = rest.find(r#""snapshot":"#)
            {
                let mut de = serde_json::Deserializer::from_str(&rest[at + r#""snapshot":"#.len()..]);
                if let Ok(reference) = SnapshotRef::deserialize(&mut de) {
                    return Ok(Head::Snapshot(reference));
                }
            }
        }
        head(&routing_model::compression::gunzip(bytes, limit)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing_model::protocol::SnapshotMessage;
    use routing_model::{ContentHash, RoutingConfigSpec};

    fn snapshot_text() -> (String, SnapshotRef) {
        let spec: RoutingConfigSpec = serde_json::from_str(
            r#"{"defaultPlacement":"a","customerToPlacement":{"snapshot":"a"},"placementToEndpoint":{"a":"http://127.0.0.1:1"}}"#,
        )
        .unwrap();
        let reference = SnapshotRef {
            lineage: "file:/x".into(),
            version: 7,
            hash: ContentHash::of_spec(&spec),
        };
        let message = ServerMessage::Snapshot(SnapshotMessage {
            routing_config: "default/snapshot".into(),
            snapshot: reference.clone(),
            spec,
        });
        (serde_json::to_string(&message).unwrap(), reference)
    }

    #[test]
    fn reads_the_reference_from_the_head() {
        let (text, reference) = snapshot_text();
        assert_eq!(head(&text).unwrap(), Head::Snapshot(reference));
    }

    #[test]
    fn falls_back_to_a_full_decode_when_fields_are_reordered() {
        let (text, reference) = snapshot_text();
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let snapshot = value.as_object_mut().unwrap().remove("snapshot").unwrap();
        value.as_object_mut().unwrap().insert("snapshot".into(), snapshot);
        let reordered = serde_json::to_string(&value).unwrap();
        assert!(!reordered.starts_with(r#"{"type":"snapshot","#));
        assert_eq!(head(&reordered).unwrap(), Head::Snapshot(reference));
    }

    #[test]
    fn reads_the_reference_from_a_compressed_head() {
        let (text, reference) = snapshot_text();
        let packed = routing_model::compression::gzip(text.as_bytes());
        let mut reader = GzipHead::default();
        for _ in 0..2 {
            assert_eq!(
                reader.head(&packed, 1 << 20).unwrap(),
                Head::Snapshot(reference.clone())
            );
        }
        let other = routing_model::compression::gzip(
            br#"{"type":"missing","routing_config":"a/b","reason":"deleted"}"#,
        );
        assert!(matches!(reader.head(&other, 1 << 20).unwrap(), Head::Other(_)));
    }

    #[test]
    fn other_messages_are_named() {
        let text = r#"{"type":"missing","routing_config":"default/x","reason":"not_found"}"#;
        assert!(matches!(head(text).unwrap(), Head::Other(s) if s.contains("missing")));
    }
}
