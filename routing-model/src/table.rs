//! The compiled, immutable routing table.
//!
//! A table is built once per applied config and then only read. Customer ids live back to back in
//! one byte arena and the hash index stores 12-byte entries pointing into it, so a million
//! customers cost little more than their raw bytes and a lookup is one hash probe with no
//! allocation. The per-placement payload `P` is chosen by the caller: the data plane attaches its
//! parsed upstream address and pre-resolved metric handles, so the request path never looks
//! anything up by name.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::validate::ValidatedConfig;

/// A placement's slot in the table: its name, endpoint and caller-defined payload.
#[derive(Debug)]
pub struct PlacementSlot<P> {
    /// Placement name.
    pub name: Box<str>,
    /// Endpoint URL as written in the config.
    pub endpoint: Box<str>,
    /// Whatever the caller attached when building.
    pub payload: P,
}

/// Where one request goes.
#[derive(Debug)]
pub struct Route<'a, P> {
    /// The placement chosen.
    pub placement: &'a PlacementSlot<P>,
    /// False when the customer was missing or unknown and the default placement was used.
    pub matched: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u32,
    placement: u32,
    len: u8,
}

/// An immutable customer → placement index compiled from a [`ValidatedConfig`].
#[derive(Debug)]
pub struct RoutingTable<P> {
    header: Box<str>,
    placements: Vec<PlacementSlot<P>>,
    default: usize,
    arena: Vec<u8>,
    index: HashTable<Entry>,
    hasher: foldhash::fast::RandomState,
}

impl<P> RoutingTable<P> {
    /// Compiles a validated config, calling `payload` once per placement.
    ///
    /// Validation bounds names to 253 bytes and the customer count to 10 million, so the arena's
    /// 32-bit offsets and 8-bit lengths cannot overflow for any [`ValidatedConfig`].
    pub fn build(config: &ValidatedConfig, mut payload: impl FnMut(&str, &str) -> P) -> Self {
        let spec = config.spec();
        let mut placements = Vec::with_capacity(spec.placement_to_endpoint.len());
        let mut position = std::collections::HashMap::with_capacity(spec.placement_to_endpoint.len());
        for (name, endpoint) in &spec.placement_to_endpoint {
            position.insert(name.as_str(), placements.len());
            placements.push(PlacementSlot {
                name: name.as_str().into(),
                endpoint: endpoint.as_str().into(),
                payload: payload(name, endpoint),
            });
        }
        let default = position[spec.default_placement.as_str()];
        let arena_len: usize = spec.customer_to_placement.keys().map(String::len).sum();
        let mut arena = Vec::with_capacity(arena_len);
        let hasher = foldhash::fast::RandomState::default();
        let mut index = HashTable::with_capacity(spec.customer_to_placement.len());
        for (customer, placement) in &spec.customer_to_placement {
            let entry = Entry {
                offset: u32::try_from(arena.len()).expect("arena bounded by validation"),
                placement: u32::try_from(position[placement.as_str()]).expect("placement count fits u32"),
                len: u8::try_from(customer.len()).expect("customer id bounded by validation"),
            };
            arena.extend_from_slice(customer.as_bytes());
            let hash = hasher.hash_one(customer.as_bytes());
            index.insert_unique(hash, entry, |e| hasher.hash_one(key_of(&arena, e)));
        }
        Self {
            header: spec.customer_header.as_str().into(),
            placements,
            default,
            arena,
            index,
            hasher,
        }
    }

    /// Routes a request by its customer id; `None` (no header) goes to the default placement.
    #[inline]
    pub fn route(&self, customer: Option<&[u8]>) -> Route<'_, P> {
        let found = customer.and_then(|key| {
            let hash = self.hasher.hash_one(key);
            self.index.find(hash, |e| key_of(&self.arena, e) == key)
        });
        match found {
            Some(e) => Route {
                placement: &self.placements[e.placement as usize],
                matched: true,
            },
            None => Route {
                placement: &self.placements[self.default],
                matched: false,
            },
        }
    }

    /// The (lowercase) header that carries the customer id.
    pub fn customer_header(&self) -> &str {
        &self.header
    }

    /// Every placement, in name order.
    pub fn placements(&self) -> &[PlacementSlot<P>] {
        &self.placements
    }

    /// Number of customers with an explicit placement.
    pub fn customers(&self) -> usize {
        self.index.len()
    }

    /// Heap bytes held by the index and arena (excluding placement payloads).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.index.allocation_size()
    }
}

#[inline]
fn key_of<'a>(arena: &'a [u8], e: &Entry) -> &'a [u8] {
    &arena[e.offset as usize..e.offset as usize + e.len as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{ParseLimits, load};

    #[test]
    fn routes_known_unknown_and_missing_customers() {
        let cfg = load(
            b"apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec:\n  defaultPlacement: t3\n  customerToPlacement: {acme: t1, globex: t2}\n  placementToEndpoint: {t1: 'http://a', t2: 'http://b', t3: 'http://c'}\n",
            ParseLimits::default(),
        )
        .unwrap();
        let table = RoutingTable::build(&cfg, |name, _| name.len());
        let name = |c: Option<&[u8]>| &*table.route(c).placement.name;
        assert_eq!(name(Some(b"acme")), "t1");
        assert_eq!(name(Some(b"globex")), "t2");
        assert_eq!(name(Some(b"nobody")), "t3");
        assert_eq!(name(None), "t3");
        assert!(table.route(Some(b"acme")).matched);
        assert!(!table.route(Some(b"acm")).matched);
        assert_eq!(table.customers(), 2);
    }
}
