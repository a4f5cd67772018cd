//! The compiled, immutable routing table.
//!
//! A table is built once per applied config and then only read, so its index is laid out for the
//! read path. Customers live in one flat array of 32-byte slots (open addressing, linear probing
//! in Robin Hood order, at most 3/4 full), with one tag byte per slot in a separate array like
//! hashbrown's control bytes. A slot holds the customer id itself when it is at most 29 bytes
//! long, so a hit reads one word of tags and then one slot, rather than an index entry and then
//! the key's bytes somewhere else; longer ids keep their bytes in an arena and the slot says
//! where. Both arrays are sized from the exact customer count, not rounded up to a power of two,
//! so memory stays near 44 bytes per customer at every table size. A lookup is one hash, almost
//! always one group of eight tags, and no allocation. The per-placement payload `P` is chosen by
//! the caller: the data plane attaches its parsed upstream address and pre-resolved metric
//! handles, so the request path never looks anything up by name.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

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

/// An immutable customer → placement index compiled from a [`ValidatedConfig`].
///
/// A table made by [`Self::with_changes`] shares its predecessor's index and placements and adds
/// a small overlay of the customers changed since that index was built, consulted first: a
/// one-customer change costs the overlay, not a rebuild, and a lookup at most one more probe of
/// a table that fits in cache.
#[derive(Debug)]
pub struct RoutingTable<P> {
    header: Box<str>,
    placements: Arc<[PlacementSlot<P>]>,
    default: usize,
    index: Arc<Index>,
    overlay: Option<Arc<Overlay>>,
    hasher: foldhash::fast::RandomState,
}

/// The placement an overlay records for a customer removed since the index was built.
const GONE: u16 = u16::MAX;

/// The customers changed since a table's index was built.
#[derive(Debug)]
struct Overlay {
    /// Each changed customer's placement, or [`GONE`], for lookups.
    index: Index,
    /// The same, for merging with the next changes.
    entries: BTreeMap<Box<[u8]>, u16>,
    /// Customers in the table (index and overlay together).
    customers: usize,
}

/// The most customers an overlay may hold before [`RoutingTable::with_changes`] asks for a
/// rebuild: a 64th of the index, and never fewer than this.
const OVERLAY_MIN: usize = 4096;

impl<P> RoutingTable<P> {
    /// Compiles a validated config, calling `payload` once per placement.
    ///
    /// Validation bounds names to 253 bytes, placements to 1,000 and customers to 10 million, so
    /// a slot's 8-bit length, 16-bit placement and the arena's 32-bit offsets cannot overflow for
    /// any [`ValidatedConfig`].
    pub fn build(config: &ValidatedConfig, mut payload: impl FnMut(&str, &str) -> P) -> Self {
        let spec = config.spec();
        let mut placements = Vec::with_capacity(spec.placement_to_endpoint.len());
        let mut position = std::collections::HashMap::with_capacity(spec.placement_to_endpoint.len());
        for (name, endpoint) in &spec.placement_to_endpoint {
            position.insert(
                name.as_str(),
                u16::try_from(placements.len()).expect("placement count bounded by validation"),
            );
            placements.push(PlacementSlot {
                name: name.as_str().into(),
                endpoint: endpoint.as_str().into(),
                payload: payload(name, endpoint),
            });
        }
        let default = usize::from(position[spec.default_placement.as_str()]);
        let hasher = foldhash::fast::RandomState::default();
        let entries = spec.customer_to_placement.iter().map(|(customer, placement)| {
            let key = customer.as_bytes();
            (hasher.hash_one(key), key, position[placement.as_str()])
        });
        let index = Index::build(spec.customer_to_placement.len(), entries);
        Self {
            header: spec.customer_header.as_str().into(),
            placements: placements.into(),
            default,
            index: Arc::new(index),
            overlay: None,
            hasher,
        }
    }

    /// This table with some customers moved, added or removed (`None`), sharing this table's
    /// index and placements (and so their payloads). `None` when a change names a placement this
    /// table does not have, or when the customers changed since the index was built would
    /// outgrow the overlay: build the table afresh then.
    pub fn with_changes<'c>(
        &self,
        changes: impl IntoIterator<Item = (&'c str, Option<&'c str>)>,
    ) -> Option<Self> {
        let (mut entries, mut customers) = match &self.overlay {
            Some(overlay) => (overlay.entries.clone(), overlay.customers),
            None => (BTreeMap::new(), self.index.len),
        };
        let limit = OVERLAY_MIN.max(self.index.len / 64);
        for (customer, placement) in changes {
            let key = customer.as_bytes();
            let was = self.lookup(key).is_some();
            let now = match placement {
                Some(name) => self
                    .placements
                    .binary_search_by(|p| (*p.name).cmp(name))
                    .ok()
                    .map(|at| u16::try_from(at).expect("placement count bounded by validation"))?,
                None => GONE,
            };
            // Read through the overlay being built, so a customer changed twice counts once.
            let before = entries.insert(key.into(), now);
            let was = before.map_or(was, |p| p != GONE);
            match (was, now != GONE) {
                (false, true) => customers += 1,
                (true, false) => customers -= 1,
                _ => {}
            }
            if entries.len() > limit {
                return None;
            }
        }
        let hasher = self.hasher.clone();
        let index = Index::build(
            entries.len(),
            entries
                .iter()
                .map(|(key, &p)| (hasher.hash_one(&key[..]), &key[..], p)),
        );
        Some(Self {
            header: self.header.clone(),
            placements: self.placements.clone(),
            default: self.default,
            index: self.index.clone(),
            overlay: Some(Arc::new(Overlay {
                index,
                entries,
                customers,
            })),
            hasher,
        })
    }

    /// The placement of a customer listed in the table.
    #[inline]
    fn lookup(&self, key: &[u8]) -> Option<u16> {
        let hash = self.hasher.hash_one(key);
        if let Some(overlay) = &self.overlay
            && let Some(placement) = overlay.index.get(hash, key)
        {
            return (placement != GONE).then_some(placement);
        }
        self.index.get(hash, key)
    }

    /// Routes a request by its customer id; `None` (no header) goes to the default placement.
    #[inline]
    pub fn route(&self, customer: Option<&[u8]>) -> Route<'_, P> {
        let found = customer.and_then(|key| self.lookup(key));
        match found {
            Some(placement) => Route {
                placement: &self.placements[usize::from(placement)],
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
        self.overlay.as_ref().map_or(self.index.len, |o| o.customers)
    }

    /// Customers changed since the index was built (what [`Self::with_changes`] keeps apart).
    pub fn overlay_len(&self) -> usize {
        self.overlay.as_ref().map_or(0, |o| o.entries.len())
    }

    /// Heap bytes held by the index and arena (excluding placement payloads), counting an index
    /// shared with another table in full.
    pub fn heap_bytes(&self) -> usize {
        self.index.heap_bytes()
            + self.overlay.as_ref().map_or(0, |o| {
                o.index.heap_bytes() + o.entries.keys().map(|k| k.len() + 32).sum::<usize>()
            })
    }
}

/// Customer ids up to this many bytes are stored inside their slot; longer ones in the arena.
const INLINE_KEY: usize = 29;

/// One customer: its id (or, past [`INLINE_KEY`] bytes, where the arena holds it), its length and
/// its placement. 32 bytes aligned to 32, so two slots share a cache line and none straddles two.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Slot {
    placement: u16,
    /// The id, zero-padded, when `len <= INLINE_KEY`; otherwise its arena offset (little-endian
    /// `u32`) in the first four bytes.
    key: [u8; INLINE_KEY],
    /// Length of the id in bytes.
    len: u8,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

const EMPTY_SLOT: Slot = Slot {
    placement: 0,
    key: [0; INLINE_KEY],
    len: 0,
};

/// The tag of an empty slot. An occupied slot's tag is 7 bits of its id's hash, so the high bit
/// alone tells the two apart.
const EMPTY: u8 = 0x80;

/// Tags are scanned eight at a time, as one `u64`.
const GROUP: usize = 8;

/// Distances from home are recorded up to this; a longer one (never seen in practice) is stored
/// as this and only stops misses from ending early.
const MAX_DIST: u8 = 0x7f;

/// Home slots per customer, as a fraction: a load of at most 3/4. Lower loads shorten probes but
/// cost 33 bytes per empty slot; at 3/4 the index takes 44 bytes per customer, what the old
/// hashbrown index plus key arena took for 17-byte ids at 1M customers.
const SLOTS_PER_CUSTOMER: (usize, usize) = (4, 3);

/// The customer index: linear probing over exactly-sized arrays, one tag byte per slot kept apart
/// from the slots (like hashbrown's control bytes) so a probe scans eight candidates in one word
/// and then reads only the slot whose tag matched.
#[derive(Debug)]
struct Index {
    /// Home slots: `ceil(len * 4 / 3)`, never rounded up to a power of two.
    buckets: usize,
    /// One tag per slot, then [`GROUP`] empty tags so a group read never runs off the end.
    tags: Vec<u8>,
    /// Each slot's distance from its home slot (capped at [`MAX_DIST`]), padded like `tags`: what
    /// lets a miss stop at the first group, even one with no empty slot.
    dists: Vec<u8>,
    /// At least `buckets` slots, more when runs that start near the end spill forward (the table
    /// never wraps around, so a probe only ever moves forward).
    slots: Vec<Slot>,
    arena: Vec<u8>,
    len: usize,
}

impl Index {
    /// Lays out `count` entries of (hash, id, placement).
    fn build<'k>(count: usize, entries: impl Iterator<Item = (u64, &'k [u8], u16)>) -> Self {
        let (num, den) = SLOTS_PER_CUSTOMER;
        let buckets = (count * num).div_ceil(den).max(1);
        assert!(
            u32::try_from(buckets).is_ok(),
            "customer count bounded by validation"
        );
        // A little room for runs that spill past the last home slot; trimmed below.
        let mut tags = Vec::with_capacity(buckets + 4 * GROUP);
        tags.resize(buckets + GROUP, EMPTY);
        let mut slots = Vec::with_capacity(buckets + 4 * GROUP);
        slots.resize(buckets, EMPTY_SLOT);
        // Each resident's home slot, only while building.
        let mut homes = vec![0usize; buckets];
        let mut arena = Vec::new();
        let mut len = 0;
        for (hash, key, placement) in entries {
            let (home, tag) = split(hash, buckets);
            let mut slot = Slot {
                placement,
                len: u8::try_from(key.len()).expect("customer id bounded by validation"),
                ..EMPTY_SLOT
            };
            if key.len() <= INLINE_KEY {
                slot.key[..key.len()].copy_from_slice(key);
            } else {
                let offset = u32::try_from(arena.len()).expect("arena bounded by validation");
                slot.key[..4].copy_from_slice(&offset.to_le_bytes());
                arena.extend_from_slice(key);
            }
            // Robin Hood: walking forward from home, take the slot of any resident that lives
            // nearer its own home than we would, and carry it on instead. Mean probe length is
            // unchanged, but the long tail shrinks, so far more hits sit in their home group of
            // eight and a lookup rarely needs a second group (a mispredicted branch on data that
            // has just come from memory).
            let mut carried = (home, tag, slot);
            let mut at = home;
            loop {
                if at == slots.len() {
                    // Spilled past the end: the padding tag here becomes this slot's, and one
                    // more keeps GROUP empty tags after the last slot.
                    slots.push(EMPTY_SLOT);
                    homes.push(0);
                    tags.push(EMPTY);
                }
                if tags[at] == EMPTY {
                    (homes[at], tags[at], slots[at]) = carried;
                    break;
                }
                if homes[at] > carried.0 {
                    std::mem::swap(&mut homes[at], &mut carried.0);
                    std::mem::swap(&mut tags[at], &mut carried.1);
                    std::mem::swap(&mut slots[at], &mut carried.2);
                }
                at += 1;
            }
            len += 1;
        }
        let dists = (0..tags.len())
            .map(|at| match homes.get(at) {
                Some(&home) if tags[at] != EMPTY => MAX_DIST.min(u8::try_from(at - home).unwrap_or(MAX_DIST)),
                _ => 0,
            })
            .collect();
        tags.shrink_to_fit();
        slots.shrink_to_fit();
        arena.shrink_to_fit();
        Self {
            buckets,
            tags,
            dists,
            slots,
            arena,
            len,
        }
    }

    /// The placement of `key`, whose hash is `hash`.
    #[inline]
    fn get(&self, hash: u64, key: &[u8]) -> Option<u16> {
        const LSB: u64 = u64::from_ne_bytes([0x01; GROUP]);
        const MSB: u64 = u64::from_ne_bytes([0x80; GROUP]);
        const STEPS: u64 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let (home, tag) = split(hash, self.buckets);
        let mut pos = home;
        loop {
            let group = u64::from_le_bytes(*self.tags.get(pos..)?.first_chunk::<GROUP>()?);
            // Bytes equal to `tag` (hashbrown's SWAR trick: it can also flag a byte just above a
            // true match, never an empty one; the key comparison below settles both).
            let cmp = group ^ (LSB * u64::from(tag));
            let mut matches = cmp.wrapping_sub(LSB) & !cmp & MSB;
            while matches != 0 {
                let slot = &self.slots[pos + matches.trailing_zeros() as usize / 8];
                if usize::from(slot.len) == key.len() && self.holds(slot, key) {
                    return Some(slot.placement);
                }
                matches &= matches - 1;
            }
            // Nothing is ever removed, so an empty slot ends every run that passes through it:
            // a key stored beyond it would have been stored in it instead. Robin Hood order ends
            // it sooner: a resident nearer its home than `key` would be there was never displaced
            // by `key`, so `key` is not further on either. Both tests are folded into one branch,
            // which a miss then predicts well. Per byte, `(dist | 0x80) - want` keeps its high bit
            // exactly when `dist >= want`; both stay below 0x80, so no byte borrows from the next.
            let mut stop = group & MSB;
            let reach = pos - home;
            if reach <= usize::from(MAX_DIST) - GROUP {
                let dists = u64::from_le_bytes(*self.dists.get(pos..)?.first_chunk::<GROUP>()?);
                let want = LSB * reach as u64 + STEPS;
                stop |= !((dists | MSB) - want) & MSB;
            }
            if stop != 0 {
                return None;
            }
            pos += GROUP;
        }
    }

    /// Whether `slot`, whose length is already known to equal `key`'s, holds `key`.
    #[inline]
    fn holds(&self, slot: &Slot, key: &[u8]) -> bool {
        match key.len() {
            16..=INLINE_KEY => {
                let head = u128_at(&slot.key, 0) == u128_at(key, 0);
                head && u128_at(&slot.key, key.len() - 16) == u128_at(key, key.len() - 16)
            }
            ..16 => slot.key[..key.len()] == *key,
            _ => {
                let [a, b, c, d, ..] = slot.key;
                let offset = u32::from_le_bytes([a, b, c, d]) as usize;
                self.arena[offset..offset + key.len()] == *key
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.tags.capacity()
            + self.dists.capacity()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.arena.capacity()
    }
}

/// The 16 bytes of `bytes` from `at`, as one word: two of these, overlapping as needed, compare an
/// inline id of 16 to 29 bytes in a few instructions instead of a call to `memcmp`.
#[inline]
fn u128_at(bytes: &[u8], at: usize) -> u128 {
    bytes[at..]
        .first_chunk()
        .map_or(0, |chunk| u128::from_ne_bytes(*chunk))
}

/// Splits a hash into a home slot (from its high half, by multiply-shift rather than modulo) and
/// a 7-bit tag (from its low byte), so the two are independent.
#[inline]
fn split(hash: u64, buckets: usize) -> (usize, u8) {
    let home = ((hash >> 32) * buckets as u64) >> 32;
    (home as usize, (hash & 0x7f) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{ParseLimits, load};

    fn config(customers: &[(&str, &str)]) -> ValidatedConfig {
        let mut yaml = String::from(
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec:\n  defaultPlacement: t3\n  customerToPlacement:\n",
        );
        for (customer, placement) in customers {
            yaml.push_str(&format!("    '{customer}': {placement}\n"));
        }
        yaml.push_str("  placementToEndpoint: {t1: 'http://a', t2: 'http://b', t3: 'http://c'}\n");
        load(yaml.as_bytes(), ParseLimits::default()).unwrap()
    }

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

    #[test]
    fn keys_at_and_past_the_inline_limit_route_and_their_neighbours_miss() {
        let at_limit = "a".repeat(INLINE_KEY);
        let one_over = format!("{at_limit}b");
        let longest = "z".repeat(crate::validate::MAX_NAME_BYTES);
        let cfg = config(&[
            ("x", "t1"),
            (&at_limit, "t1"),
            (&one_over, "t2"),
            (&longest, "t2"),
        ]);
        let table = RoutingTable::build(&cfg, |_, _| ());
        let hit = |key: &str| {
            let route = table.route(Some(key.as_bytes()));
            route.matched.then_some(&*route.placement.name)
        };
        assert_eq!(hit("x"), Some("t1"));
        assert_eq!(hit(&at_limit), Some("t1"));
        assert_eq!(hit(&one_over), Some("t2"));
        assert_eq!(hit(&longest), Some("t2"));
        // Misses that share a prefix with a hit, are a prefix of one, or extend one.
        let misses = [
            String::new(),
            "xx".to_owned(),
            at_limit[..INLINE_KEY - 1].to_owned(),
            format!("{at_limit}a"),
            format!("{one_over}b"),
            format!("{at_limit}c"),
            longest[..longest.len() - 1].to_owned(),
            format!("{}y", &longest[..longest.len() - 1]),
            format!("{longest}z"),
        ];
        for miss in &misses {
            assert_eq!(hit(miss), None, "{} bytes", miss.len());
            assert_eq!(&*table.route(Some(miss.as_bytes())).placement.name, "t3");
        }
        assert_eq!(table.customers(), 4);
    }

    #[test]
    fn changes_route_like_a_table_built_from_the_result() {
        let base: Vec<(String, String)> = (0..3_000)
            .map(|i| (format!("customer-{i}"), format!("t{}", 1 + i % 3)))
            .collect();
        let borrowed: Vec<(&str, &str)> = base.iter().map(|(c, p)| (c.as_str(), p.as_str())).collect();
        let mut model: BTreeMap<String, String> = base.iter().cloned().collect();
        let mut table = RoutingTable::build(&config(&borrowed), |_, _| ());
        // Rounds of moves, removals (present, absent, twice), additions and re-additions.
        for round in 0..20usize {
            let mut changes: Vec<(String, Option<String>)> = Vec::new();
            for j in 0..40usize {
                let n = (round * 977 + j * 131) % 3_500;
                let id = format!("customer-{n}");
                let placement = match (round + j) % 4 {
                    0 => None,
                    k => Some(format!("t{k}")),
                };
                changes.push((id, placement));
            }
            changes.push((format!("customer-{}", round * 7), None));
            changes.push((format!("customer-{}", round * 7), Some("t2".to_owned())));
            for (id, placement) in &changes {
                match placement {
                    Some(p) => model.insert(id.clone(), p.clone()),
                    None => model.remove(id),
                };
            }
            table = table
                .with_changes(changes.iter().map(|(c, p)| (c.as_str(), p.as_deref())))
                .expect("within the overlay");
            assert_eq!(table.customers(), model.len(), "round {round}");
        }
        assert!(table.overlay_len() > 0);
        for n in 0..3_600 {
            let id = format!("customer-{n}");
            let route = table.route(Some(id.as_bytes()));
            match model.get(&id) {
                Some(p) => assert!(route.matched && *route.placement.name == **p, "{id}"),
                None => assert!(!route.matched && &*route.placement.name == "t3", "{id}"),
            }
        }
    }

    #[test]
    fn changes_that_name_an_unknown_placement_or_outgrow_the_overlay_ask_for_a_rebuild() {
        let table = RoutingTable::build(&config(&[("acme", "t1")]), |_, _| ());
        assert!(table.with_changes([("acme", Some("t9"))]).is_none());
        let many: Vec<String> = (0..=OVERLAY_MIN).map(|i| format!("c{i}")).collect();
        assert!(
            table
                .with_changes(many.iter().map(|c| (c.as_str(), Some("t1"))))
                .is_none()
        );
        let fits = table
            .with_changes(many[..OVERLAY_MIN].iter().map(|c| (c.as_str(), Some("t1"))))
            .expect("exactly the limit fits");
        assert_eq!(fits.customers(), OVERLAY_MIN + 1);
        assert_eq!(
            &*table.route(Some(b"c0")).placement.name,
            "t3",
            "the old table is unchanged"
        );
    }

    #[test]
    fn many_customers_of_mixed_lengths_all_route() {
        let customers: Vec<(String, &str)> = (0..5_000)
            .map(|i| {
                let len = 1 + i % 60;
                let id = format!("{i}-{}", "k".repeat(len));
                (id, ["t1", "t2", "t3"][i % 3])
            })
            .collect();
        let borrowed: Vec<(&str, &str)> = customers.iter().map(|(c, p)| (c.as_str(), *p)).collect();
        let table = RoutingTable::build(&config(&borrowed), |_, _| ());
        for (customer, placement) in &customers {
            let route = table.route(Some(customer.as_bytes()));
            assert!(route.matched, "{customer}");
            assert_eq!(&*route.placement.name, *placement);
            let mut longer = customer.clone().into_bytes();
            longer.push(b'k');
            let hits_longer = customers.iter().any(|(c, _)| c.as_bytes() == longer.as_slice());
            assert_eq!(table.route(Some(&longer)).matched, hits_longer);
        }
        assert_eq!(table.customers(), customers.len());
    }

    #[test]
    fn memory_stays_at_the_design_load() {
        let customers: Vec<(String, &str)> =
            (0..10_000).map(|i| (format!("customer-{i:08}"), "t1")).collect();
        let borrowed: Vec<(&str, &str)> = customers.iter().map(|(c, p)| (c.as_str(), *p)).collect();
        let table = RoutingTable::build(&config(&borrowed), |_, _| ());
        // One 32-byte slot, a tag byte and a distance byte per home slot, a few more for runs
        // spilled past the end, and no arena (17-byte ids): nothing rounded up to a power of two.
        let (num, den) = SLOTS_PER_CUSTOMER;
        let buckets = (10_000 * num).div_ceil(den);
        let bytes = table.heap_bytes();
        assert!(
            (buckets * 34..=(buckets + 100) * 34).contains(&bytes),
            "{bytes} bytes"
        );
    }

    /// Hashes chosen by the test: colliding tags and homes must still compare the key bytes.
    fn index(entries: &[(u64, &[u8], u16)]) -> Index {
        Index::build(entries.len(), entries.iter().copied())
    }

    #[test]
    fn full_hash_collisions_fall_back_to_the_key_bytes() {
        let long_a = [b'a'; 40];
        let long_b = [b'b'; 40];
        let same = 0xDEAD_BEEF_0000_0001;
        let entries: [(u64, &[u8], u16); 5] = [
            (same, b"acme", 1),
            (same, b"acme-corp", 2),
            (same, &long_a, 3),
            (same, &long_b, 4),
            (same, &[b'a'; INLINE_KEY], 5),
        ];
        let index = index(&entries);
        for (hash, key, placement) in entries {
            assert_eq!(index.get(hash, key), Some(placement));
        }
        for miss in [
            &b"acm"[..],
            b"acme-cor",
            b"",
            &[b'a'; 39],
            &[b'a'; INLINE_KEY + 1],
        ] {
            assert_eq!(index.get(same, miss), None);
        }
        // The right key with a hash that homes elsewhere is not found: lookups trust the hash.
        assert_eq!(index.get(!same, b"acme"), None);
    }

    #[test]
    fn runs_spill_past_the_last_home_slot_instead_of_wrapping() {
        let keys: Vec<[u8; 2]> = (0..8u8).map(|i| [b'k', i]).collect();
        // Every hash homes in the last slot, so seven entries spill past it.
        let entries: Vec<(u64, &[u8], u16)> = keys
            .iter()
            .zip(0..)
            .map(|(k, i)| (u64::MAX - i, &k[..], 7))
            .collect();
        let index = index(&entries);
        assert_eq!(index.slots.len(), index.buckets + 7);
        for (hash, key, placement) in entries {
            assert_eq!(index.get(hash, key), Some(placement));
        }
        assert_eq!(index.get(u64::MAX, b"k"), None);
    }

    #[test]
    fn runs_longer_than_a_group_are_followed_to_their_end() {
        let keys: Vec<String> = (0..300).map(|i| format!("c{i}")).collect();
        // One home and one tag for all: every probe walks the run group by group, past the
        // distance cap, where misses may no longer stop early but hits must still be found.
        let entries: Vec<(u64, &[u8], u16)> =
            keys.iter().zip(0..).map(|(k, i)| (42, k.as_bytes(), i)).collect();
        let index = index(&entries);
        for (hash, key, placement) in &entries {
            assert_eq!(index.get(*hash, key), Some(*placement));
        }
        assert_eq!(index.get(42, b"c300"), None);
        assert_eq!(index.get(42, b"c"), None);
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = index(&[]);
        assert_eq!(index.get(0, b"acme"), None);
        assert_eq!(index.get(u64::MAX, b""), None);
        assert_eq!(index.len, 0);
    }
}
