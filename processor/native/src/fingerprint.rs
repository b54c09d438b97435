//! The policy stage's request fingerprint: BLAKE2b with a 16-byte digest, as hex.
//!
//! The same hash as `hashlib.blake2b(raw, digest_size=16).hexdigest()` (which stays the fallback
//! in processor/policy_stage.py), computed with SIMD where the CPU has it: on a ~700 kB request
//! it is the largest single cost of the stage after the native plan took the rest.

use pyo3::prelude::*;

#[pyfunction]
pub fn blake2b_128_hex(data: &[u8]) -> String {
    blake2b_simd::Params::new()
        .hash_length(16)
        .hash(data)
        .to_hex()
        .to_string()
}
