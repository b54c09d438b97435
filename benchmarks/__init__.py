"""Load generator and micro-benchmarks for the genops sidecar (see benchmarks/README.md)."""
