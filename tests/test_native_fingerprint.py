"""Retry fingerprints are the same digest whichever path computes them, so budget state written by
a sidecar without the native module recognises retries seen by one with it, and back."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor import decode
from processor.policy_stage import fingerprint
from tests.otlp_builders import span, trace_request

pytestmark = pytest.mark.skipif(decode.native_module() is None, reason="native module not built")


@given(st.binary(max_size=4096))
def test_native_fingerprint_is_blake2b_128_of_the_bytes(raw: bytes) -> None:
    assert decode.native_module().fingerprint(raw) == hashlib.blake2b(raw, digest_size=16).hexdigest()


def test_a_request_has_the_same_fingerprint_on_both_decode_paths(monkeypatch) -> None:
    raw = trace_request([span(attributes={"gen_ai.request.model": "gpt-4o", "n": i}) for i in range(50)])
    raw = raw.SerializeToString()
    prints = []
    for flag in ("1", "0"):
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", flag)
        prints.append(fingerprint(decode.decode_traces(raw, decode.WantedKeys())))
    assert prints[0] == prints[1] == hashlib.blake2b(raw, digest_size=16).hexdigest()
