"""The AWU events built and written as columns (processor/stages/policy/awu.py, processor/core/span_event_columns.py,
rewrite.rs `event_group`) give the bytes the one-object-per-event path gave: a differential test
against that path (tests/oracle/awu_oracle.py), batch by batch through the whole pipeline."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from prometheus_client import CollectorRegistry

from benchmarks.micro import stage_config
from benchmarks.workload import build_requests
from processor.core import encode
from processor.core.contract import BatchChanges, SpanEventToAdd
from processor.core.decode import TelemetryBatch, native_available
from processor.core.pipeline import Pipeline, _redact_written
from processor.core.span_event_columns import SpanEventColumns
from processor.observability import SidecarMetrics
from processor.stages.assembly import build_stages
from processor.stages.policy import awu
from tests.oracle import awu_oracle
from tests.support.otlp_builders import span, trace_request

pytestmark = pytest.mark.skipif(not native_available(), reason="the native rewriter is what is compared")

GENAI = {"gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 30, "gen_ai.provider.name": "openai"}


def _edge_cases() -> trace_pb.ExportTraceServiceRequest:
    """Spans the workload has few of: unknown models (no cost), no attribution, no end time, an SDK
    cost as text, operation names in other cases, a model name holding an e-mail address."""
    spans = [
        span(attributes={**GENAI, "gen_ai.request.model": "gpt-4o-mini", "gen_ai.operation.name": "Chat"}),
        span(attributes={**GENAI, "gen_ai.request.model": "no-such-model-9", "gen_ai.operation.name": "chat"}),
        span(attributes={**GENAI, "gen_ai.request.model": "gpt-4o", "llm.request.type": "embeddings"}),
        span(attributes={**GENAI, "gen_ai.request.model": "gpt-4o", "genops.cost.total": " 0.25 "}),
        span(attributes={**GENAI, "gen_ai.request.model": "mail bob@example.com", "genops.team": "search"}),
        span(name="GET /health"),
        span(attributes={"gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "execute_tool"}),
    ]
    spans[2].end_time_unix_nano = 0
    return trace_request(spans, resource={"service.name": "chat-api", "k8s.namespace.name": "ml"})


def _copy(changes: BatchChanges) -> BatchChanges:
    events = [dataclasses.replace(e, attributes=dict(e.attributes)) for e in changes.events]
    return dataclasses.replace(
        changes,
        set_attributes=dict(changes.set_attributes),
        events=events,
        event_columns=list(changes.event_columns),
        arrow=dict(changes.arrow),
    )


def _per_row(events: list[SpanEventToAdd]) -> dict[int, list[tuple]]:
    """Each span's events in order, values with their types (1.0 is not 1)."""
    rows: dict[int, list[tuple]] = {}
    for e in events:
        attributes = [(k, type(v).__name__, v) for k, v in e.attributes.items()]
        rows.setdefault(e.row, []).append((e.name, e.time_unix_nano, attributes))
    return rows


def _operation_sums(calls: list[tuple[list, list]]) -> dict[str | None, float]:
    """What SeedMetrics.record_operation_costs sums from the calls it was given."""
    sums: dict[str | None, float] = {}
    for kinds, costs in calls:
        for kind, cost in zip(kinds, costs, strict=True):
            if cost is not None:
                sums[kind] = sums.get(kind, 0.0) + cost
    return sums


def _assert_same_writes(pipeline: Pipeline, batch: TelemetryBatch, got: BatchChanges, want: BatchChanges) -> None:
    # As the pipeline leaves them before writing (on copies: it redacts `got` itself later).
    written_want, written_got = _copy(want), _copy(got)
    _redact_written(written_want, pipeline.outbound)
    _redact_written(written_got, pipeline.outbound)
    assert list(written_got.set_attributes) == list(written_want.set_attributes)
    for key, column in written_want.set_attributes.items():
        assert written_got.set_attributes[key].dtype == column.dtype, key
        assert written_got.set_attributes[key].to_list() == column.to_list(), key
    # The protobuf path writes each span's events in this order; the rewriter writes these bytes.
    assert _per_row(written_got.all_events()) == _per_row(written_want.all_events())
    assert encode.apply_and_serialize(batch, [written_got]) == encode.apply_and_serialize(batch, [written_want])


def test_awu_columns_write_the_bytes_the_event_objects_wrote(tmp_path, monkeypatch):
    """The kernel's AWU columns (policy.rs `awu`) and awu.py's query both against the oracle: the
    same attributes, events, bytes and cost per operation type."""
    stages = build_stages(stage_config(True, tmp_path), CollectorRegistry())
    pipeline = Pipeline(stages, SidecarMetrics.create())
    assert pipeline.outbound.enabled
    new = awu.add_awu_changes
    compared: list[int] = []

    def both(
        batch: TelemetryBatch, changes: BatchChanges, attribution, operation_costs=None, native=None
    ) -> BatchChanges:
        assert native is not None  # the stage's native plan computed them
        want = awu_oracle.add_awu_changes(batch, _copy(changes), attribution)
        queried_costs: list[tuple[list, list]] = []
        queried = new(batch, _copy(changes), attribution, lambda *call: queried_costs.append(call))
        native_costs: list[tuple[list, list]] = []
        got = new(batch, changes, attribution, lambda *call: native_costs.append(call), native)
        assert got.event_columns and not want.event_columns
        _assert_same_writes(pipeline, batch, got, want)
        _assert_same_writes(pipeline, batch, queried, want)
        assert _operation_sums(native_costs) == _operation_sums(queried_costs)
        if operation_costs is not None:
            for call in native_costs:
                operation_costs(*call)
        compared.append(sum(map(len, got.event_columns)))
        return got

    monkeypatch.setattr(awu, "add_awu_changes", both)
    requests = [*build_requests(count=4, spans=300, genai_share=0.6, seed=3), _edge_cases()]
    for request in requests:
        out = pipeline.process_traces(request.SerializeToString())
        assert out.failed_stages == ()
    assert len(compared) == len(requests) and all(compared)
    # The edge cases: an evaluated event per decided span (6) and a calculated one where a cost is known.
    assert compared[-1] > 6


def test_an_event_group_is_written_as_its_events_one_by_one():
    """Nulls leave an attribute out; a zero time and an empty name are left out as proto3 does;
    times past 2**63 (held as negative i64) and every column type the rewriter writes."""
    group = SpanEventColumns(
        "",
        pl.Series([0, 2, 0], dtype=pl.Int64),
        pl.Series([0, -1, 1_760_000_000_000_000_001], dtype=pl.Int64),
        {
            "text": pl.Series(["a", None, "ü" * 20]),
            "number": pl.Series([None, 1.5, -0.0]),
            "count": pl.Series([3, -4, None], dtype=pl.Int64),
            "flag": pl.Series([True, False, None]),
            "nothing": pl.Series([None, None, None]),
        },
    )
    raw = trace_request([span(), span(), span()]).SerializeToString()
    from processor.core.decode import WantedKeys, decode_traces

    batch = decode_traces(raw, WantedKeys())
    as_columns = encode.apply_and_serialize(batch, [BatchChanges(event_columns=[group])])
    one_by_one = encode.apply_and_serialize(
        batch, [BatchChanges(events=BatchChanges(event_columns=[group]).all_events())]
    )
    assert as_columns == one_by_one
    sent = trace_pb.ExportTraceServiceRequest.FromString(as_columns).resource_spans[0].scope_spans[0].spans
    assert [len(s.events) for s in sent] == [2, 0, 1]
    assert sent[2].events[0].time_unix_nano == 2**64 - 1


@pytest.mark.parametrize(
    ("starts", "ends"),
    [
        ([5, 7, 2**63 - 1], [6, 7, 2**63 - 1]),
        ([5, 7, 9], None),
        ([5, None, 9], [6, 8, None]),
        ([0, 7, 9], [6, 8, 10]),
        ([5, 7, 2**63], [6, 8, 10]),
        ([5, 7, 9], [4, 8, 10]),
        ([5, 7, 9], [6, 0, 2**64 - 1]),
    ],
)
def test_clean_times_skips_its_queries_only_where_they_change_nothing(starts, ends, monkeypatch):
    """The unsigned columns of a usual batch go back as they came; any invalid value takes the
    full path, whose answer is what the skipped one would have been for valid columns."""
    from processor.core import span_values
    from processor.core.decode import END_TIME, START_TIME

    start = pl.Series(START_TIME, starts, dtype=pl.UInt64)
    end = None if ends is None else pl.Series(END_TIME, ends, dtype=pl.UInt64)
    fast = span_values.clean_times(start, end)
    valid = span_values._all_valid(start, end)
    monkeypatch.setattr(span_values, "_all_valid", lambda *_: False)
    full = span_values.clean_times(start, end)
    # A missing start is not counted but reads as 0: not valid for the shortcut, yet nothing counted.
    assert valid == (full[2] == [] and None not in starts)
    for got, want in zip(fast[:2], full[:2], strict=True):
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert (got.name, got.dtype, got.to_list()) == (want.name, want.dtype, want.to_list())
    assert fast[2] == full[2]


def test_forecast_rows_give_the_column_of_the_forecast_query():
    """budget_forecast: the row-by-row forecast against the polars query it stands in for, on
    spans of known and unknown budgets, below, at and past their limits, with missing amounts."""
    import datetime as dt
    import random

    from processor.stages.policy import budget_forecast as bf

    rng = random.Random(5)
    now = dt.datetime(2026, 12, 8, 0, 10, 7, 123456, tzinfo=dt.UTC)
    elapsed = {"daily": 607.123456, "monthly": 605407.5, "tiny": 1.0}
    left = {"daily": 85792.9, "monthly": 2072992.8, "tiny": 3.0}
    rows = 2000
    names = pl.Series([rng.choice([None, "daily", "monthly", "tiny", "unknown"]) for _ in range(rows)], dtype=pl.String)

    def amount() -> float | None:
        return rng.choice([None, 0.0, -1.0, rng.uniform(0, 2), rng.uniform(0, 0.001), 1.0, rng.uniform(0, 1e6)])

    consumed = pl.Series([amount() for _ in range(rows)], dtype=pl.Float64)
    limits = pl.Series([rng.choice([1.0, 2.5, 1e6, amount()]) for _ in range(rows)], dtype=pl.Float64)
    got = bf._forecast_rows(names, consumed, limits, elapsed, left, now)
    want = bf._forecast_query(names, consumed, limits, elapsed, left, now)
    assert got is not None
    assert (got.name, got.dtype) == (want.name, want.dtype)
    assert got.to_list() == want.to_list()
    assert 100 < got.null_count() < rows - 100
    infinite = pl.Series([float("inf")] * rows, dtype=pl.Float64)
    assert bf._forecast_rows(names, infinite, limits, elapsed, left, now) is None


def test_attribution_columns_are_remembered_per_column_types():
    """Attribution.columns builds its expressions once per shape of the columns it reads: the
    same expressions for the same types, the ones a fresh build gives for other types."""
    from processor.core.attribution import Attribution
    from processor.core.decode import RESOURCE_PREFIX

    service = RESOURCE_PREFIX + "service.name"
    attribution = Attribution.from_config({"project": "service.name"})
    text = pl.Schema({"genops.team": pl.String, service: pl.String, "other": pl.Int64})
    number = pl.Schema({"genops.team": pl.Int64, service: pl.String})
    first = attribution.columns(text)
    first.append(pl.lit(1))  # a caller's list, not the remembered one
    for schema in (text, number, pl.Schema({"other": pl.Int64})):
        got = attribution.columns(schema)
        want = attribution._build_columns(schema)
        assert len(got) == len(want) == 6
        assert all(g.meta.eq(w) for g, w in zip(got, want, strict=True))
    assert len(attribution._columns) == 3
    frame = pl.DataFrame({"genops.team": [" a ", None], service: ["svc", ""]})
    assert frame.select(attribution.columns(frame.schema)[:2]).rows() == [("a", "svc"), (None, None)]
