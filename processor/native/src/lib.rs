//! Native hot path for OTLP export requests: `scan` (decode) and `rewrite` (encode).
//!
//! Iterating attributes as Python protobuf objects costs about a microsecond each. `scan` walks
//! the protobuf wire format once and returns, as Arrow buffers (arrow.rs), only what the stages
//! asked for; `rewrite` splices the stages' changes into the request bytes, copying untouched items.
//! Both mirror the pure-Python paths in processor/decode.py and processor/encode.py, which remain
//! the fallback; tests/test_native_decode.py and tests/test_native_encode.py check they agree.
//! `Redactor` (redact.rs, detect.rs) runs the redaction stage's rules over a batch in one call;
//! processor/redact.py keeps the polars path, tests/test_redaction_native.py checks they agree.
//! `PolicyPlan` (policy.rs) and the cost kernel (cost.rs) run the policy and cost stages' per-batch
//! work; processor/policy_native.py and processor/cost_native.py call them, the polars paths stay
//! the fallback, tests/test_policy_native.py and tests/test_cost_native.py check they agree.

mod arrow;
mod cost;
mod detect;
mod fasthash;
mod operation_totals;
mod policy;
mod redact;
mod rewrite;
mod sanitize;
mod scan;
mod wire;

use pyo3::prelude::*;

#[pymodule]
fn _otlp_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(scan::scan, m)?)?;
    m.add_function(wrap_pyfunction!(rewrite::rewrite, m)?)?;
    m.add_function(wrap_pyfunction!(sanitize::sanitize, m)?)?;
    m.add_class::<redact::Redactor>()?;
    m.add_class::<redact::RedactionJob>()?;
    m.add_class::<policy::PolicyPlan>()?;
    m.add_class::<operation_totals::OperationTotals>()?;
    cost::register(m)?;
    Ok(())
}

// The native stages allocate and free buffers of hundreds of KiB per request on two threads at
// once: the scan and the stages on the calling thread, the redaction rules on their own. In glibc's
// single arena that `serve` sets up (processor/allocator.py) the two took turns at its lock, and a
// batch waited 0.4-0.5 ms longer (benchmarks/RESULTS.md); mimalloc gives each thread a heap of its
// own. Python, gRPC and polars keep their own allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
