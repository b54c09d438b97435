"""A batch's fingerprint (what recognises the Collector retrying it) depends on its bytes only."""

from __future__ import annotations

import blake3
import pytest

from processor.core.decode import WantedKeys, decode_traces
from processor.stages.policy.stage import fingerprint
from tests.support.otlp_builders import span, trace_request


def _raw(model: str) -> bytes:
    spans = [span(attributes={"gen_ai.request.model": model, "n": i}) for i in range(20)]
    return trace_request(spans).SerializeToString()


@pytest.mark.parametrize("native", ["1", "0"])
def test_the_fingerprint_is_blake3_128_of_the_request_bytes_on_either_decode_path(native, monkeypatch):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    raw = _raw("gpt-4o")
    assert fingerprint(decode_traces(raw, WantedKeys())) == blake3.blake3(raw).hexdigest(length=16)


def test_requests_differing_in_one_attribute_get_different_fingerprints():
    one, other = (fingerprint(decode_traces(_raw(model), WantedKeys())) for model in ("gpt-4o", "gpt-4p"))
    assert len(one) == len(other) == 32
    assert one != other
