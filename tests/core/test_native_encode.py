"""The native rewriter and the protobuf encoder write the same changes into a request."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from processor.core import decode, encode
from processor.core.contract import BatchChanges, SpanEventToAdd
from processor.core.decode import WantedKeys, decode_logs, decode_traces
from tests.support.otlp_builders import log_request, span, trace_request

pytestmark = pytest.mark.skipif(decode.native_module() is None, reason="native rewriter not built")

KEYS = ["a", "b", "genops.cost.total", "gen_ai.prompt"]
scalars = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.binary(max_size=4),
)
attribute_values = st.one_of(scalars, st.lists(st.text(max_size=4), max_size=3))
attributes = st.dictionaries(st.sampled_from(KEYS), attribute_values, max_size=4)
WANTED = WantedKeys(item=frozenset({"a"}), values=True)


def encode_both(decoder, raw: bytes, make_changes, monkeypatch) -> tuple[bytes, bytes]:
    """Each encoder gets a batch decoded by its own path, as in the pipeline."""
    outputs = []
    for flag in ("1", "0"):
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", flag)
        batch = decoder(raw, WANTED)
        outputs.append(encode.apply_and_serialize(batch, make_changes(batch)))
    return outputs[0], outputs[1]


def column_strategy(rows: int):
    return st.lists(
        st.one_of(st.none(), scalars, st.lists(st.text(max_size=3), min_size=1, max_size=2)),
        min_size=rows,
        max_size=rows,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), spans=st.lists(st.tuples(attributes, st.lists(attributes, max_size=2)), min_size=1, max_size=4))
def test_traces_encode_identically(monkeypatch, data, spans):
    request = trace_request(
        [span(attributes=a, events=[(f"e{i}", e) for i, e in enumerate(events)]) for a, events in spans],
        resource={"service.name": "svc", "user.email": "x@y.z"},
    )
    rows = len(spans)
    set_columns = data.draw(st.dictionaries(st.sampled_from([*KEYS, "new.key"]), column_strategy(rows), max_size=3))
    second = data.draw(st.dictionaries(st.sampled_from(KEYS), column_strategy(rows), max_size=2))
    new_events = data.draw(st.lists(st.tuples(st.integers(0, rows - 1), st.text(max_size=5), attributes), max_size=3))
    picks = data.draw(
        st.lists(st.tuples(st.integers(0, 10_000), st.one_of(st.none(), st.text(max_size=5))), max_size=6)
    )

    def changes(batch):
        values = batch.string_values().sort("scope", "owner", "position")
        rewrites = None
        if values.height and picks:
            chosen = values[[index % values.height for index, _ in picks]].with_columns(
                new_value=pl.Series([text for _, text in picks], dtype=pl.String)
            )
            rewrites = chosen.select("scope", "owner", "position", "new_value")
        first = BatchChanges(set_attributes={k: _series(v) for k, v in set_columns.items()}, rewrites=rewrites)
        events = [SpanEventToAdd(row, name, 1_760_000_000_000_000_123, attrs) for row, name, attrs in new_events]
        return [first, BatchChanges(set_attributes={k: _series(v) for k, v in second.items()}, events=events)]

    native, python = encode_both(decode_traces, request.SerializeToString(), changes, monkeypatch)
    assert _traces(native) == _traces(python)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    bodies=st.lists(st.one_of(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=4),
)
def test_logs_encode_identically(monkeypatch, data, bodies):
    request = log_request(bodies, attributes={"a": "keep", "b": "x"})
    picks = data.draw(st.lists(st.tuples(st.integers(0, 1000), st.one_of(st.none(), st.text(max_size=5))), max_size=4))

    def changes(batch):
        values = batch.string_values().sort("scope", "owner", "position")
        chosen = values[[index % values.height for index, _ in picks]].with_columns(
            new_value=pl.Series([text for _, text in picks], dtype=pl.String)
        )
        summary = pl.Series([len(bodies)] * len(batch))
        return [BatchChanges(set_attributes={"genops.redaction.count": summary}, rewrites=chosen)]

    native, python = encode_both(decode_logs, request.SerializeToString(), changes, monkeypatch)
    assert _logs(native) == _logs(python)


TYPED = {
    pl.Boolean: st.booleans(),
    pl.Int64: st.integers(min_value=-(2**63), max_value=2**63 - 1),
    pl.Float64: st.floats(allow_nan=False),
    pl.String: st.text(max_size=20),
    pl.Binary: st.binary(max_size=20),
    pl.List(pl.String): st.lists(st.text(max_size=14), max_size=3),
    pl.List(pl.Binary): st.lists(st.binary(max_size=14), max_size=2),
}


@st.composite
def typed_column(draw, rows: int) -> pl.Series:
    """A column of one type the stages set, sometimes a slice or a concatenation (offsets, chunks)."""
    dtype = draw(st.sampled_from(list(TYPED)))
    values = draw(st.lists(st.one_of(st.none(), TYPED[dtype]), min_size=rows, max_size=rows))
    shape = draw(st.sampled_from(["plain", "slice", "chunks"]))
    if shape == "slice":
        return pl.Series([*values[:1], *values, *values[:2]], dtype=dtype).slice(1, rows)
    if shape == "chunks" and rows > 1:
        return pl.concat([pl.Series(values[:1], dtype=dtype), pl.Series(values[1:], dtype=dtype)], rechunk=False)
    return pl.Series(values, dtype=dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), spans=st.lists(attributes, min_size=1, max_size=5))
def test_typed_columns_encode_identically(monkeypatch, data, spans):
    request = trace_request([span(attributes=a) for a in spans])
    rows = len(spans)
    stages = data.draw(
        st.lists(st.dictionaries(st.sampled_from([*KEYS, "new.key"]), typed_column(rows), max_size=3), max_size=3)
    )
    picks = data.draw(st.lists(st.tuples(st.integers(0, 1000), st.none() | st.text(max_size=5)), max_size=4))
    owner_type = data.draw(st.sampled_from([pl.Int64, pl.Int32, pl.UInt32]))

    def changes(batch):
        values = batch.string_values().sort("scope", "owner", "position")
        rewrites = None
        if values.height and picks:
            new_values = [text for _, text in picks]
            rewrites = values[[index % values.height for index, _ in picks]].select(
                "scope",
                pl.col("owner").cast(owner_type),
                "position",
                new_value=pl.Series(new_values, dtype=pl.Null if set(new_values) == {None} else pl.String),
            )
        return [
            BatchChanges(set_attributes=columns, rewrites=rewrites if i == 0 else None)
            for i, columns in enumerate(stages)
        ]

    native, python = encode_both(decode_traces, request.SerializeToString(), changes, monkeypatch)
    assert _traces(native) == _traces(python)


def test_untouched_spans_keep_their_exact_bytes(monkeypatch):
    # The rewriter's own property (the suite also runs with GENOPS_NATIVE_DECODE=0).
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
    spans = [span(attributes={"a": i}) for i in range(3)]
    raw = trace_request(spans).SerializeToString()
    batch = decode_traces(raw, WANTED)
    column = pl.Series([None, "only the middle one", None])
    out = encode.apply_and_serialize(batch, [BatchChanges(set_attributes={"genops.cost.model": column})])
    for untouched in (spans[0], spans[2]):
        assert untouched.SerializeToString() in out
    received = trace_pb.ExportTraceServiceRequest.FromString(out).resource_spans[0].scope_spans[0].spans
    assert [[kv.key for kv in one.attributes] for one in received] == [["a"], ["a", "genops.cost.model"], ["a"]]


def _series(values: list) -> pl.Series:
    return pl.Series(values, dtype=pl.Object) if _mixed(values) else pl.Series(values, strict=False)


def _mixed(values: list) -> bool:
    return len({type(v) for v in values if v is not None}) > 1


def _sorted_attributes(attributes) -> None:
    # OTLP attributes are a map: the order keys were appended in carries no meaning.
    ordered = sorted(attributes, key=lambda kv: kv.key)
    copies = [type(kv)() for kv in ordered]
    for copy, kv in zip(copies, ordered, strict=True):
        copy.CopyFrom(kv)
    del attributes[:]
    attributes.extend(copies)


def _traces(raw: bytes) -> trace_pb.ExportTraceServiceRequest:
    request = trace_pb.ExportTraceServiceRequest.FromString(raw)
    for rs in request.resource_spans:
        _sorted_attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for one in ss.spans:
                _sorted_attributes(one.attributes)
                for event in one.events:
                    _sorted_attributes(event.attributes)
    return request


def _logs(raw: bytes) -> logs_pb.ExportLogsServiceRequest:
    request = logs_pb.ExportLogsServiceRequest.FromString(raw)
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for record in sl.log_records:
                _sorted_attributes(record.attributes)
    return request
