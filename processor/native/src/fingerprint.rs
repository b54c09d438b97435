//! Request fingerprints for retry detection: BLAKE2b-128 of the request bytes, hex encoded.
//!
//! The same digest as Python's `hashlib.blake2b(raw, digest_size=16).hexdigest()` (budget state
//! written by either must recognise the other's retries), computed with the SIMD implementation
//! (several times faster than CPython's portable one) and without holding the GIL.

use pyo3::prelude::*;

#[pyfunction]
pub fn fingerprint(py: Python<'_>, raw: &[u8]) -> String {
    py.detach(|| {
        blake2b_simd::Params::new()
            .hash_length(16)
            .hash(raw)
            .to_hex()
            .to_string()
    })
}
