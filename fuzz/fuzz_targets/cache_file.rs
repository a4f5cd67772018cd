//! The data plane's last-known-good cache file, read with the decoder `SnapshotCache::load`
//! uses: any bytes, and valid files (from a structure-aware snapshot, written by the data plane's
//! own encoder) then damaged, some resealed with a checksum that fits the damage so the payload
//! parser and the validation see them. Decoding never panics; whatever it accepts is a snapshot
//! the data plane would serve (its spec validates, hashes to the hash it claims, keeps every
//! promise of `check_accepted` and compiles into the proxy's table); a file over the size bound
//! is refused before it is parsed; an undamaged file of a servable snapshot is never refused.
#![no_main]

use arbitrary::Arbitrary;
use cellroute_fuzz::Snapshot;
use data_plane::cache::format::{self, DecodeError, HEADER_BYTES, MAGIC};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// The size bound of a run: larger than any input libFuzzer writes (`-max_len`), so only the
/// inputs that ask for a smaller one test it.
const LIMIT: usize = 1 << 20;

#[derive(Debug, Arbitrary)]
enum Damage {
    Truncate(u16),
    Flip(u16, u8),
    Insert(u16, u8),
    Remove(u16),
    Splice(u16, Vec<u8>),
    /// A checksum that fits the payload as it now is.
    Reseal,
}

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    Bytes(&'a [u8]),
    File {
        snapshot: Box<Snapshot>,
        damage: Vec<Damage>,
        limit: Option<u16>,
    },
}

fn at(file: &[u8], offset: u16) -> usize {
    if file.is_empty() {
        0
    } else {
        usize::from(offset) % (file.len() + 1)
    }
}

fn reseal(file: &[u8]) -> Vec<u8> {
    let payload = match file.iter().take(HEADER_BYTES).position(|b| *b == b'\n') {
        Some(newline) => &file[newline + 1..],
        None => file,
    };
    let digest: String = Sha256::digest(payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut sealed = format!("{MAGIC}{digest}\n").into_bytes();
    sealed.extend_from_slice(payload);
    sealed
}

fn damage(mut file: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        match d {
            Damage::Truncate(n) => file.truncate(at(&file, *n)),
            Damage::Flip(n, bits) => {
                let i = at(&file, *n);
                if let Some(b) = file.get_mut(i) {
                    *b ^= bits | 1;
                }
            }
            Damage::Insert(n, b) => {
                let i = at(&file, *n);
                file.insert(i, *b);
            }
            Damage::Remove(n) => {
                let i = at(&file, *n);
                if i < file.len() {
                    file.remove(i);
                }
            }
            Damage::Splice(n, bytes) => {
                let i = at(&file, *n);
                file.splice(i..i, bytes.iter().copied());
            }
            Damage::Reseal => file = reseal(&file),
        }
    }
    file
}

fn check(bytes: &[u8], limit: usize) -> Result<format::CachedSnapshot, DecodeError> {
    let decoded = format::decode(bytes, limit);
    match &decoded {
        Ok(cached) => {
            assert!(bytes.len() <= limit);
            let config = routing_model::validate::validate(cached.message.to_manifest())
                .unwrap_or_else(|e| panic!("an accepted cache file does not validate: {e}"));
            // The claimed hash, in the scheme it names (a cache from before delta push holds a
            // `sha256:` one), is the hash of what was accepted.
            let claimed = cached.message.snapshot.hash;
            assert_eq!(
                routing_model::ContentHash::of_spec_in(claimed.scheme(), config.spec()),
                claimed,
                "accepted with a hash that does not fit"
            );
            assert!(claimed.matches(cached.config.spec(), cached.config.hash()));
            cellroute_fuzz::check_accepted(&cached.config);
            let metrics = data_plane::metrics::Metrics::new();
            if let Err(e) = data_plane::compile::compile(&cached.config, &Default::default(), &metrics) {
                panic!("an accepted cache file does not compile into a table: {e}");
            }
            let again = format::decode(&format::encode(&cached.message), usize::MAX)
                .expect("a re-encoded accepted snapshot decodes");
            assert_eq!(again.message, cached.message);
        }
        Err(e) => {
            if bytes.len() > limit {
                assert!(
                    matches!(e, DecodeError::TooLarge { .. }),
                    "{} bytes over {limit}: {e}",
                    bytes.len()
                );
            }
            let shown = e.to_string();
            assert!(
                shown.len() < 2048,
                "the error grows with the file: {} bytes",
                shown.len()
            );
        }
    }
    decoded
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Bytes(bytes) => {
            let _ = check(bytes, LIMIT);
        }
        Input::File {
            snapshot,
            damage: changes,
            limit,
        } => {
            let good = format::encode(&snapshot.message);
            let limit = limit.map_or(LIMIT, usize::from);
            let file = damage(good.clone(), &changes);
            let decoded = check(&file, limit);
            if file == good && snapshot.servable && good.len() <= limit {
                let cached = decoded
                    .unwrap_or_else(|e| panic!("an undamaged file of a servable snapshot is refused: {e}"));
                assert_eq!(cached.message, snapshot.message);
            }
        }
    }
});
