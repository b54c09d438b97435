//! A fast non-cryptographic hash for the scanner's and rewriter's lookup tables.
//!
//! The keys are attribute names and (owner, position) pairs from one request: no adversary can
//! pick them to collide usefully, and SipHash (std's default) costs more than the lookups save.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The multiply-rotate hash rustc uses internally (FxHash), eight bytes at a time.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// An attribute key as a map key, hashed by its length and its first and last eight bytes only:
/// keys that share all three still compare in full, they only share a bucket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyBytes<'a>(pub &'a [u8]);

impl std::hash::Hash for KeyBytes<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let bytes = self.0;
        let (head, tail) = if bytes.len() >= 8 {
            (
                u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().expect("8 bytes")),
            )
        } else {
            let mut short = [0u8; 8];
            short[..bytes.len()].copy_from_slice(bytes);
            (u64::from_le_bytes(short), 0)
        };
        let mixed = (head.wrapping_mul(SEED) ^ tail ^ bytes.len() as u64).wrapping_mul(SEED);
        // The table picks buckets by the low bits: fold the high ones in.
        state.write_u64(mixed ^ (mixed >> 32));
    }
}
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;
