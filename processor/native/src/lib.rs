//! Native hot path for OTLP export requests: `scan` (decode) and `rewrite` (encode).
//!
//! Iterating attributes as Python protobuf objects costs about a microsecond each. `otlp::scan` walks
//! the protobuf wire format once and returns, as Arrow buffers (arrow.rs), only what the stages
//! asked for; `rewrite` splices the stages' changes into the request bytes, copying untouched items.
//! Both mirror the pure-Python paths in processor/core/decode.py and processor/core/encode.py (the wire
//! oracle, GENOPS_NATIVE_DECODE=0); tests/core/test_native_decode.py and test_native_encode.py check they agree.
//! `Redactor` (redact.rs, detect.rs) runs the redaction stage's rules over a batch in one call;
//! its polars oracle is tests/oracle/redaction.py (tests/stages/redaction/test_redaction_native.py).
//! `PolicyPlan` (policy.rs) and the cost kernel (cost.rs) run the policy and cost stages' per-batch
//! work, called by processor/stages/policy/native.py and processor/stages/cost/native.py: the one engine
//! at run time. Their polars oracles live under tests/oracle/ (tests/stages/policy/test_policy_native.py,
//! tests/stages/cost/test_cost_native.py).

mod fasthash;
mod otlp;
mod stages;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use stages::redact::Redactor;

/// Scans a serialised ExportTraceServiceRequest (logs=False) or ExportLogsServiceRequest
/// (`otlp::scan::scan_request` says what comes back). With `values_to` (a Redactor) the values go
/// to that redactor's thread as `values_job` (`RedactionJob`) instead of to Python. Here, not in
/// `otlp`, because this is where the wire format meets a stage.
#[pyfunction]
#[pyo3(signature = (raw, item_keys, resource_keys, want_strings, logs=false, values_to=None))]
fn scan<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyBytes>,
    item_keys: Vec<String>,
    resource_keys: Vec<String>,
    want_strings: bool,
    logs: bool,
    values_to: Option<Bound<'py, Redactor>>,
) -> PyResult<Bound<'py, PyDict>> {
    let filter = values_to
        .as_ref()
        .map(|redactor| redactor.get() as &dyn otlp::scan::ValuesFilter);
    let (out, values) = otlp::scan::scan_request(
        py,
        raw.as_bytes(),
        &item_keys,
        &resource_keys,
        want_strings,
        logs,
        filter,
    )?;
    if let (Some(redactor), Some(values)) = (values_to.as_ref(), values) {
        out.set_item("values_job", Redactor::start(redactor, raw, values)?)?;
    }
    Ok(out)
}

#[pymodule]
fn _otlp_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(scan, m)?)?;
    m.add_function(wrap_pyfunction!(otlp::rewrite::rewrite, m)?)?;
    m.add_function(wrap_pyfunction!(stages::sanitize::sanitize, m)?)?;
    m.add_class::<stages::redact::Redactor>()?;
    m.add_function(wrap_pyfunction!(stages::redact::value_patterns_problem, m)?)?;
    m.add_class::<stages::redact::RedactionJob>()?;
    m.add_class::<stages::policy::PolicyPlan>()?;
    m.add_class::<stages::operation_totals::OperationTotals>()?;
    stages::cost::register(m)?;
    Ok(())
}

// The native stages allocate and free buffers of hundreds of KiB per request on two threads at
// once: the scan and the stages on the calling thread, the redaction rules on their own. In glibc's
// single arena that `serve` sets up (processor/transport/allocator.py) the two took turns at its lock, and a
// batch waited 0.4-0.5 ms longer (benchmarks/RESULTS.md); mimalloc gives each thread a heap of its
// own. Python, gRPC and polars keep their own allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
