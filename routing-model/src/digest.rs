//! The content hash of a routing table as a hash tree, so a change of a few customers is hashed
//! in the time of the change rather than of the table.
//!
//! Customers fall into [`BUCKETS`] buckets by a fixed hash of their id (the top bits of its
//! 64-bit FNV-1a). A bucket's digest is the SHA-256 of its entries in id order; the root is the
//! SHA-256 of a domain tag, the customer header, the default placement, every placement with its
//! endpoint, and the bucket digests in bucket order. Moving one customer rehashes one bucket
//! (about 1/1024 of the customers) and the root (32 KiB of digests and the placements).
//!
//! Every length is written before its bytes, so no two tables share an input to any SHA-256, and
//! collision resistance is SHA-256's. Which bucket an id lands in only shapes cost, never
//! correctness: a table whose ids crowd one bucket hashes as fast as the JSON scheme did.
//! `PROTOCOL.md` ("Content hash") specifies the same bytes for other implementations.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::hash::{ContentHash, HashScheme};
use crate::manifest::RoutingConfigSpec;

/// Number of customer buckets.
pub const BUCKETS: usize = 1024;
/// The domain tag that starts the root's input.
const TAG: &[u8] = b"cellroute.dev/table-sha256/v1\0";
/// The SHA-256 of no bytes: the digest of an empty bucket, which most buckets of a small table
/// are (hashing 1,024 of them was most of the time a small table took to hash).
const EMPTY: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27,
    0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

fn digest_of(bucket: &[u8]) -> [u8; 32] {
    if bucket.is_empty() {
        EMPTY
    } else {
        Sha256::digest(bucket).into()
    }
}

/// The bucket of a customer id: the top 10 bits of its 64-bit FNV-1a hash.
pub fn bucket_of(id: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> (64 - BUCKETS.trailing_zeros())) as usize
}

/// The customers of a table in buckets, with each bucket's digest, kept to update the content
/// hash as customers change.
///
/// Each bucket holds its entries encoded as they are hashed (`u32` big-endian length and bytes of
/// the id, then of the placement, in id order), so it costs about the table's raw size. Buckets
/// are shared between copies and copied on write: a copy with one customer changed costs one
/// bucket (about 1/1024 of the table) and the bucket digests (32 KiB), not the table.
#[derive(Clone, PartialEq, Eq)]
pub struct TableDigest {
    buckets: Vec<Arc<Vec<u8>>>,
    digests: Vec<[u8; 32]>,
    dirty: Vec<usize>,
}

impl std::fmt::Debug for TableDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableDigest")
            .field("bytes", &self.buckets.iter().map(|b| b.len()).sum::<usize>())
            .finish_non_exhaustive()
    }
}

fn put(out: &mut Vec<u8>, field: &str) {
    // Validation bounds every name to 253 bytes and every URL far below 4 GiB.
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field.as_bytes());
}

/// Reads one length-prefixed field at `at`, returning it and where the next starts.
fn field(bytes: &[u8], at: usize) -> (&[u8], usize) {
    let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    (&bytes[at + 4..at + 4 + len], at + 4 + len)
}

impl TableDigest {
    /// Buckets and digests of every customer of `spec`.
    pub fn of_spec(spec: &RoutingConfigSpec) -> Self {
        let mut buckets = vec![Vec::new(); BUCKETS];
        // The map iterates in id order, so each bucket is filled in id order too.
        for (id, placement) in &spec.customer_to_placement {
            let bucket = &mut buckets[bucket_of(id)];
            put(bucket, id);
            put(bucket, placement);
        }
        let digests = buckets.iter().map(|b| digest_of(b)).collect();
        Self {
            buckets: buckets.into_iter().map(Arc::new).collect(),
            digests,
            dirty: Vec::new(),
        }
    }

    /// Sets a customer's placement (`None` removes the customer). The root reflects it at the
    /// next [`Self::root`].
    pub fn set(&mut self, id: &str, placement: Option<&str>) {
        let index = bucket_of(id);
        let bucket = &self.buckets[index];
        // Find the entry of `id`, or where it would go.
        let mut at = 0;
        let mut found = None;
        while at < bucket.len() {
            let (key, value_at) = field(bucket, at);
            let (_, next) = field(bucket, value_at);
            match key.cmp(id.as_bytes()) {
                std::cmp::Ordering::Less => at = next,
                std::cmp::Ordering::Equal => {
                    found = Some(next);
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        let mut entry = Vec::new();
        if let Some(placement) = placement {
            put(&mut entry, id);
            put(&mut entry, placement);
        }
        let end = found.unwrap_or(at);
        if found.is_none() && placement.is_none() {
            return;
        }
        Arc::make_mut(&mut self.buckets[index]).splice(at..end, entry);
        self.dirty.push(index);
    }

    /// The content hash of a table with these customers and `spec`'s header, default placement
    /// and placements (its customers are not read).
    pub fn root(&mut self, spec: &RoutingConfigSpec) -> ContentHash {
        for index in self.dirty.drain(..) {
            self.digests[index] = digest_of(&self.buckets[index]);
        }
        let mut head = Vec::with_capacity(TAG.len() + 64 + spec.placement_to_endpoint.len() * 64);
        head.extend_from_slice(TAG);
        put(&mut head, &spec.customer_header);
        put(&mut head, &spec.default_placement);
        head.extend_from_slice(&(spec.placement_to_endpoint.len() as u32).to_be_bytes());
        for (placement, endpoint) in &spec.placement_to_endpoint {
            put(&mut head, placement);
            put(&mut head, endpoint);
        }
        head.extend_from_slice(&(BUCKETS as u32).to_be_bytes());
        let mut hasher = Sha256::new();
        hasher.update(&head);
        for digest in &self.digests {
            hasher.update(digest);
        }
        ContentHash::from_parts(HashScheme::Table, hasher.finalize().into())
    }

    /// Bytes held (counting shared buckets in full).
    pub fn heap_bytes(&self) -> usize {
        self.buckets.iter().map(|b| b.capacity()).sum::<usize>() + self.digests.len() * 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(customers: &[(&str, &str)]) -> RoutingConfigSpec {
        RoutingConfigSpec {
            customer_header: "x-customer-id".into(),
            default_placement: "a".into(),
            customer_to_placement: customers
                .iter()
                .map(|(c, p)| (c.to_string(), p.to_string()))
                .collect(),
            placement_to_endpoint: [("a", "http://a"), ("b", "http://b")]
                .iter()
                .map(|(p, e)| (p.to_string(), e.to_string()))
                .collect(),
            rollout: None,
        }
    }

    #[test]
    fn the_empty_digest_is_the_sha256_of_no_bytes() {
        assert_eq!(EMPTY, <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn updates_give_the_hash_of_the_table_they_make() {
        let table: Vec<(String, String)> = (0..5000)
            .map(|i| {
                (
                    format!("customer-{i}"),
                    if i % 3 == 0 { "a" } else { "b" }.to_string(),
                )
            })
            .collect();
        let borrowed: Vec<(&str, &str)> = table.iter().map(|(c, p)| (c.as_str(), p.as_str())).collect();
        let mut current = spec(&borrowed);
        let mut digest = TableDigest::of_spec(&current);
        assert_eq!(digest.root(&current), ContentHash::of_spec(&current));
        // Moves, removals (present and absent) and additions, checked after each.
        let changes: [(&str, Option<&str>); 6] = [
            ("customer-7", Some("a")),
            ("customer-8", None),
            ("customer-8", None),
            ("new", Some("b")),
            ("", Some("a")),
            ("customer-0", Some("a")),
        ];
        for (id, placement) in changes {
            digest.set(id, placement);
            match placement {
                Some(p) => current.customer_to_placement.insert(id.into(), p.into()),
                None => current.customer_to_placement.remove(id),
            };
            assert_eq!(
                digest.root(&current),
                TableDigest::of_spec(&current).root(&current),
                "{id}"
            );
        }
        // Every field outside the customers is part of the hash too.
        let before = digest.root(&current);
        current.default_placement = "b".into();
        assert_ne!(digest.root(&current), before);
    }

    #[test]
    fn the_hash_is_independent_of_key_order_and_tells_fields_apart() {
        let a = spec(&[("x", "a"), ("y", "b")]);
        let b = spec(&[("y", "b"), ("x", "a")]);
        assert_eq!(ContentHash::of_spec(&a), ContentHash::of_spec(&b));
        // Moving bytes between an id and its placement changes the hash.
        let c = spec(&[("xa", ""), ("y", "b")]);
        assert_ne!(ContentHash::of_spec(&a), ContentHash::of_spec(&c));
        assert_eq!(ContentHash::of_spec(&a).scheme(), HashScheme::Table);
        assert!(ContentHash::of_spec(&a).to_string().starts_with("table-sha256:"));
    }

    /// The bucket function is part of the wire contract (PROTOCOL.md): pinned values.
    #[test]
    fn buckets_are_the_top_bits_of_fnv1a() {
        assert_eq!(bucket_of(""), (0xcbf2_9ce4_8422_2325u64 >> 54) as usize);
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(bucket_of("a"), (0xaf63_dc4c_8601_ec8cu64 >> 54) as usize);
    }
}
