"""Fixtures of the redaction tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["1", "0"], ids=["native-decoder", "python-decoder"])
def engine(request, monkeypatch):
    """The test once with the native decoder and once with the pure-Python one, which hand the
    values to the redactor differently (from the scan, or as a frame)."""
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", request.param)
    return request.param
