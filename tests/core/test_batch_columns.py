"""A batch read through its columns gives the same values whether it holds the native scan's
buffers or a polars frame, and a stage's columns reach later stages the same way in both."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal, assert_series_equal

from processor.core import batch_columns, decode
from processor.core.contract import BatchChanges
from processor.core.decode import END_TIME, RESOURCE_INDEX, ROW, START_TIME, STATUS_CODE, decode_traces
from processor.core.pipeline import _expose_to_later_stages
from tests.support.attribute_strategies import WANTED, attributes
from tests.support.otlp_builders import span, trace_request

pytestmark = pytest.mark.skipif(decode._native is None, reason="native scanner not built")


@pytest.fixture(autouse=True)
def native_scan(monkeypatch):
    # The scanned batch is the native path's (the suite also runs with GENOPS_NATIVE_DECODE=0).
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")


NAMES = [ROW, RESOURCE_INDEX, START_TIME, END_TIME, STATUS_CODE, "missing.key", "resource:genops.team"]
NAMES += sorted(WANTED.item)


def scanned_and_framed(raw: bytes) -> tuple[decode.TelemetryBatch, decode.TelemetryBatch]:
    scanned = decode_traces(raw, WANTED)
    assert scanned.columns is not None
    framed = decode_traces(raw, WANTED)
    framed.frame = framed.frame  # from now on the frame is what the batch holds
    assert framed.columns is None
    return scanned, framed


def assert_same_columns(scanned: decode.TelemetryBatch, framed: decode.TelemetryBatch, names: list[str]) -> None:
    assert len(scanned) == len(framed)
    for name in names:
        assert scanned.has_column(name) == framed.has_column(name), name
        assert scanned.has_values(name) == framed.has_values(name), name
        assert scanned.column_type(name) == framed.column_type(name), name
        array = scanned.column_array(name)
        assert (array is None) == (framed.column_array(name) is None), name
        if array is None:
            assert scanned.column_parts(name) is None and scanned.column_series(name) is None, name
            continue
        assert array.equals(framed.column_array(name)), name
        assert_series_equal(scanned.column_series(name), framed.column_series(name), check_names=False)
        parts = scanned.column_parts(name)
        assert (parts is None) == (framed.column_parts(name) is None), name
        if parts is not None:
            kind, length, offset, buffers, child = parts
            assert framed.column_parts(name)[:2] == (kind, length) and child is None, name
            # The parts describe the column's own values.
            rebuilt = pa.Array.from_buffers(
                array.type, length, [None if b is None else pa.py_buffer(b) for b in buffers], offset=offset
            )
            assert rebuilt.equals(array), name


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spans=st.lists(attributes, min_size=1, max_size=5), resource=attributes)
def test_scanned_columns_read_as_the_frame_does(spans, resource):
    raw = trace_request(
        [span(attributes=a) for a in spans], resource={"service.name": "svc", **resource}
    ).SerializeToString()
    scanned, framed = scanned_and_framed(raw)
    assert_same_columns(scanned, framed, NAMES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spans=st.lists(attributes, min_size=1, max_size=5),
    stage_columns=st.dictionaries(
        st.sampled_from(["genops.cost.total", "genops.team", "new.key", "gen_ai.request.model"]),
        st.sampled_from(["float", "string", "null"]),
        min_size=1,
        max_size=3,
    ),
)
def test_stage_columns_reach_later_stages_as_over_the_frame(spans, stage_columns):
    raw = trace_request([span(attributes=a) for a in spans]).SerializeToString()
    scanned, framed = scanned_and_framed(raw)
    rows = len(scanned)
    made = {
        "float": lambda: pl.Series([float(i) if i % 2 else None for i in range(rows)], dtype=pl.Float64),
        "string": lambda: pl.Series([f"v{i}" if i % 3 else None for i in range(rows)], dtype=pl.String),
        "null": lambda: pl.Series([None] * rows, dtype=pl.Null),
    }
    changes = BatchChanges(set_attributes={key: made[kind]() for key, kind in stage_columns.items()})
    for batch in (scanned, framed):
        _expose_to_later_stages(batch, changes)
    assert_same_columns(scanned, framed, [*NAMES, *stage_columns])
    assert_frame_equal(scanned.frame, framed.frame)


def test_a_stage_handing_over_its_arrow_columns_is_read_from_them():
    raw = trace_request([span(attributes={"a": 1}), span(attributes={})]).SerializeToString()
    batch = decode_traces(raw, WANTED)
    array = pa.array([0.5, None], type=pa.float64())
    changes = BatchChanges(
        set_attributes={"genops.cost.total": pl.Series([0.5, None])}, arrow={"genops.cost.total": array}
    )
    _expose_to_later_stages(batch, changes)
    assert batch.column_array("genops.cost.total") is array
    assert batch.frame.get_column("genops.cost.total").to_list() == [0.5, None]


def test_arrow_arrays_become_series_without_polars_private_import(monkeypatch):
    array = pa.array(["a", None], type=pa.string_view())
    fast = batch_columns.arrow_series("x", array)
    monkeypatch.setattr(batch_columns, "_FROM_C", None)
    assert_series_equal(batch_columns.arrow_series("x", array), fast)
    assert fast.name == "x" and fast.to_list() == ["a", None]
