"""The native OTLP scanner and the pure-Python walk decode every request to the same batch."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from processor.core import decode
from processor.core.decode import MalformedRequest, decode_logs, decode_traces
from tests.support.attribute_strategies import KEYS, WANTED, attributes, values
from tests.support.otlp_builders import log_request, span, trace_request

pytestmark = pytest.mark.skipif(decode._native is None, reason="native scanner not built")


def both(decoder, raw: bytes, monkeypatch) -> tuple[decode.TelemetryBatch, decode.TelemetryBatch]:
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
    native = decoder(raw, WANTED)
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "0")
    python = decoder(raw, WANTED)
    return native, python


def assert_same(native: decode.TelemetryBatch, python: decode.TelemetryBatch) -> None:
    assert_frame_equal(native.frame, python.frame)
    order = ["scope", "owner", "position"]
    assert_frame_equal(native.string_values().sort(order), python.string_values().sort(order))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spans=st.lists(st.tuples(attributes, st.lists(attributes, max_size=2)), max_size=5),
    resource=attributes,
)
def test_traces_decode_identically(monkeypatch, spans, resource):
    request = trace_request(
        [span(attributes=a, events=[(f"e{i}", e) for i, e in enumerate(events)]) for a, events in spans],
        resource={"service.name": "svc", **resource},
    )
    assert_same(*both(decode_traces, request.SerializeToString(), monkeypatch))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(values, max_size=4), record_attributes=attributes)
def test_logs_decode_identically(monkeypatch, bodies, record_attributes):
    request = log_request(bodies, attributes=record_attributes)
    assert_same(*both(decode_logs, request.SerializeToString(), monkeypatch))


long_values = st.one_of(
    st.text(min_size=10, max_size=60), st.binary(min_size=10, max_size=30), st.integers(-(2**63), 2**63 - 1)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spans=st.lists(st.dictionaries(st.sampled_from(KEYS), long_values, max_size=6), max_size=6),
    names=st.lists(st.text(max_size=40), min_size=6, max_size=6),
)
def test_long_values_and_names_decode_identically(monkeypatch, spans, names):
    """Values past the 12 bytes a string view holds inline (stored apart, or in the request)."""
    request = trace_request(
        [span(name=name, attributes=a) for a, name in zip(spans, names, strict=False)],
        resource={"service.name": "a service name longer than twelve bytes"},
    )
    assert_same(*both(decode_traces, request.SerializeToString(), monkeypatch))


def test_double_rendering_follows_python(monkeypatch):
    doubles = [0.1, 1.0, 1e16, 1.5e-5, 0.0001, 12345.678, -2.5e300, 5e-324]
    request = trace_request([span(attributes={"n": d}) for d in doubles])
    native, _ = both(decode_traces, request.SerializeToString(), monkeypatch)
    rendered = native.string_values().filter(pl.col("key") == "n")["value"].to_list()
    assert rendered == [repr(d) for d in doubles]


def test_truncated_requests_are_malformed_for_both(monkeypatch):
    raw = trace_request([span(attributes={"n": "x" * 50})]).SerializeToString()[:-7]
    for flag in ("1", "0"):
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", flag)
        with pytest.raises(MalformedRequest):
            decode_traces(raw, WANTED)
