//! Content hashes: the identity of a routing table's content, independent of where it came from.
//!
//! Two schemes, told apart by their text prefix:
//!
//! - `table-sha256:` ([`HashScheme::Table`], what this build computes): the root of a hash tree
//!   over the table (see [`crate::digest`]). A change of a few customers updates it without
//!   hashing the rest of the table, so a one-customer delta on a 1M-customer table is verified in
//!   microseconds.
//! - `sha256:` ([`HashScheme::Json`]): SHA-256 of the spec's canonical JSON, what data planes and
//!   control planes before delta push use. A control plane still speaks it to data planes that
//!   did not offer `delta`, and a data plane still checks it in snapshots from an older control
//!   plane and in caches written before the upgrade.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::RoutingConfigSpec;

/// How a [`ContentHash`] was computed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum HashScheme {
    /// The hash tree of [`crate::digest`] (`table-sha256:`).
    Table,
    /// SHA-256 of the canonical JSON (`sha256:`), before delta push.
    Json,
}

impl HashScheme {
    fn prefix(self) -> &'static str {
        match self {
            HashScheme::Table => "table-sha256:",
            HashScheme::Json => "sha256:",
        }
    }
}

/// The hash of a spec's content, shown as `table-sha256:<hex>` (or `sha256:<hex>` in the scheme
/// before delta push).
///
/// Maps are `BTreeMap`s and both schemes are canonical, so the hash is independent of key order
/// in the source file: reordering a file does not change its hash and is not treated as a change.
/// Hashes of two schemes never compare equal, even for the same content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash {
    scheme: HashScheme,
    digest: [u8; 32],
}

impl ContentHash {
    /// The hash of a spec in the current scheme ([`HashScheme::Table`]).
    pub fn of_spec(spec: &RoutingConfigSpec) -> Self {
        crate::digest::TableDigest::of_spec(spec).root(spec)
    }

    /// The hash of a spec in the scheme before delta push: SHA-256 of its canonical JSON.
    pub fn json_of_spec(spec: &RoutingConfigSpec) -> Self {
        let mut hasher = Sha256::new();
        // Serializing a struct of strings and BTreeMaps into a Vec cannot fail.
        let canonical = serde_json::to_vec(spec).expect("spec serializes to JSON");
        hasher.update(&canonical);
        Self::from_parts(HashScheme::Json, hasher.finalize().into())
    }

    /// The hash of a spec in `scheme`.
    pub fn of_spec_in(scheme: HashScheme, spec: &RoutingConfigSpec) -> Self {
        match scheme {
            HashScheme::Table => Self::of_spec(spec),
            HashScheme::Json => Self::json_of_spec(spec),
        }
    }

    /// Whether this hash, in its own scheme, is the hash of `spec`, whose hash in the current
    /// scheme validation already computed (`current`). Only a hash in the JSON scheme costs a
    /// pass over the spec.
    pub fn matches(&self, spec: &RoutingConfigSpec, current: ContentHash) -> bool {
        match self.scheme {
            HashScheme::Table => *self == current,
            HashScheme::Json => *self == Self::json_of_spec(spec),
        }
    }

    pub(crate) fn from_parts(scheme: HashScheme, digest: [u8; 32]) -> Self {
        Self { scheme, digest }
    }

    /// The scheme it was computed in.
    pub fn scheme(&self) -> HashScheme {
        self.scheme
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme.prefix())?;
        for b in self.digest {
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

    /// Parses `table-sha256:<64 hex digits>` or `sha256:<64 hex digits>`. Works on bytes after
    /// checking every one is an ASCII hex digit, so no input (multi-byte characters included) can
    /// make it slice inside a character.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (scheme, hex) = [HashScheme::Table, HashScheme::Json]
            .into_iter()
            .find_map(|scheme| {
                text.strip_prefix(scheme.prefix())
                    .map(|hex| (scheme, hex.as_bytes()))
            })
            .ok_or("content hash must start with `table-sha256:` or `sha256:`")?;
        if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err("content hash must be `table-sha256:` or `sha256:` and 64 hexadecimal digits");
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
        Ok(Self::from_parts(scheme, out))
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
        for scheme in [HashScheme::Table, HashScheme::Json] {
            let h = ContentHash::from_parts(scheme, [0xab; 32]);
            assert_eq!(h.to_string().parse::<ContentHash>().unwrap(), h);
            let upper = format!("{}{}", scheme.prefix(), "AB".repeat(32));
            assert_eq!(upper.parse::<ContentHash>().unwrap(), h);
        }
        let table = ContentHash::from_parts(HashScheme::Table, [1; 32]);
        let json = ContentHash::from_parts(HashScheme::Json, [1; 32]);
        assert_ne!(table, json, "two schemes never compare equal");
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
