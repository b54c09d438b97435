//! The OTLP wire format: the protobuf reader and writer, the scan that turns a request into Arrow
//! columns, and the rewrite that splices changes back into its bytes. Knows nothing of the stages.

pub mod arrow;
pub mod rewrite;
pub mod scan;
pub mod wire;
