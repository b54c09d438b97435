"""Choosing the decoder for code that reads GENOPS_NATIVE_DECODE when it builds a stage."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def native(enabled: bool):
    """GENOPS_NATIVE_DECODE set to 1 or 0 inside the block, restored after it."""
    before = os.environ.get("GENOPS_NATIVE_DECODE")
    os.environ["GENOPS_NATIVE_DECODE"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["GENOPS_NATIVE_DECODE"]
        else:
            os.environ["GENOPS_NATIVE_DECODE"] = before
