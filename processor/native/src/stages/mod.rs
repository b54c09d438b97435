//! The stages' per-batch kernels: cost lookup, redaction (rules and detectors), policy checks and
//! per-operation totals. They read the columns `otlp::scan` produces.

pub mod cost;
pub mod detect;
pub mod operation_totals;
pub mod policy;
pub mod redact;
pub mod sanitize;
