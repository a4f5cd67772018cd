//! Content hashes: the identity of a routing table's content, independent of where it came from.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::RoutingConfigSpec;

/// SHA-256 of a spec's canonical JSON form, shown as `sha256:<hex>`.
///
/// Maps are `BTreeMap`s, so the canonical form is independent of key order in the source file:
/// reordering a file does not change its hash and is not treated as a change.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    /// Hashes a spec's canonical serialization.
    pub fn of_spec(spec: &RoutingConfigSpec) -> Self {
        let mut hasher = Sha256::new();
        // Serializing a struct of strings and BTreeMaps into a Vec cannot fail.
        let canonical = serde_json::to_vec(spec).expect("spec serializes to JSON");
        hasher.update(&canonical);
        Self(hasher.finalize().into())
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| serde::de::Error::custom("content hash must start with `sha256:`"))?;
        if hex.len() != 64 {
            return Err(serde::de::Error::custom("content hash must have 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16)
                .map_err(|_| serde::de::Error::custom("content hash is not hexadecimal"))?;
        }
        Ok(Self(out))
    }
}
