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

impl std::str::FromStr for ContentHash {
    type Err = &'static str;

    /// Parses `sha256:<64 hex digits>`. Works on bytes after checking every one is an ASCII hex
    /// digit, so no input (multi-byte characters included) can make it slice inside a character.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or("content hash must start with `sha256:`")?
            .as_bytes();
        if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err("content hash must be `sha256:` and 64 hexadecimal digits");
        }
        let digit = |b: u8| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = digit(pair[0]) << 4 | digit(pair[1]);
        }
        Ok(Self(out))
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        let h = ContentHash([0xab; 32]);
        assert_eq!(h.to_string().parse::<ContentHash>().unwrap(), h);
        let upper = format!("sha256:{}", "AB".repeat(32));
        assert_eq!(upper.parse::<ContentHash>().unwrap(), h);
    }

    /// The frame of issue #10: 64 bytes of "hex" with multi-byte characters straddling the
    /// 2-byte slices once panicked the control plane's session task.
    #[test]
    fn multi_byte_characters_are_refused_not_sliced() {
        let text = format!("sha256:a{}b", "é".repeat(31));
        assert_eq!(text.len(), "sha256:".len() + 64);
        assert!(text.parse::<ContentHash>().is_err());
        let json = format!(r#""{text}""#);
        assert!(serde_json::from_str::<ContentHash>(&json).is_err());
        for bad in ["sha256:", "sha256:zz", "md5:00", "", "sha256:+1"] {
            assert!(bad.parse::<ContentHash>().is_err(), "{bad}");
        }
        let plus = format!("sha256:+{}", "0".repeat(63));
        assert!(
            plus.parse::<ContentHash>().is_err(),
            "from_str_radix would take `+0`"
        );
    }
}
