"""Differential oracles: the polars per-span implementations the native stages were written
against (issue 19: one engine at run time, the other under tests/ as the reference)."""
