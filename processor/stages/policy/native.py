"""The policy stage's native path: one Rust call per batch (`PolicyPlan` in
processor/native/src/stages/policy.rs), the stage's one engine.

The call reads the frame's columns as Arrow buffers, finds the GenAI spans, attributes them, runs
the rule checks, charges the budget windows (the store is a callback, so a batch is still applied
in one atomic step), and returns the verdict and budget tag columns, the threshold events and the
small tables the metrics need; also the GenOps AWU columns and events (awu.py) and the budget
forecast tag (budget_forecast.py), which the stage writes after its own (`NativeExtras`). Log
batches run the same call (records naming a span are that span's call: not evaluated), and budgets
keyed on span attributes key on the subject columns budget_subjects.py resolves first. The polars
queries it was written against are the differential oracle in tests/oracle/policy.py:
tests/stages/policy/test_policy_native.py checks both give the same changes, events, metrics and
stored totals.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from processor.core import genops_semconv as gs
from processor.core.attribution import DIMENSIONS, Attribution, dimension_key
from processor.core.batch_columns import array_parts, arrow_series, series_array
from processor.core.contract import BatchChanges, SpanEventToAdd
from processor.core.decode import RESOURCE_PREFIX, ROW, START_TIME, STATUS_CODE, TelemetryBatch, native_module
from processor.core.genai_attributes import MODEL, PROVIDER, TOKENS_INPUT, TOKENS_OUTPUT, normalized
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.core.span_event_columns import SpanEventColumns
from processor.files.linear_regex import glob_regex
from processor.stages.policy import budgets
from processor.stages.policy import rules as policies
from processor.stages.policy.awu import WRITTEN_KEYS, NativeAwu
from processor.stages.policy.budget_forecast import level_forecasts, now_utc, window_times
from processor.stages.policy.budget_state import BudgetStore
from processor.stages.policy.budget_subjects import AttributeSubjects
from processor.stages.policy.log_charges import IN_SPAN
from processor.stages.policy.metrics import GovernanceMetrics
from processor.stages.policy.policy_file import Budget, PolicyFile

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

ERROR_TYPE = "error.type"
# Metric label -> its source in the native plan: a dimension, then model and provider.
_LABEL_SOURCES = {name: i for i, name in enumerate((*DIMENSIONS, "model", "provider"))}


class Unsupported(ValueError):
    """A column type the native path does not read (the decoder makes none such): the stage
    fails on the batch, which goes on without its changes (counted as a stage error)."""


# batch.derived key of the inputs `NativePolicy.prepare` read, and where the PII count sits in them.
_PREPARED = "policy.native_inputs"
_PII_AT = 5


@dataclass(frozen=True)
class NativeExtras:
    """What the kernel computed for the stage's later steps, None where they compute it themselves.

    awu: the AWU attributes and events (awu.add_awu_changes).
    forecast: budget_forecast.FORECAST_TAG over the batch (the stage's `_with_forecast`).
    """

    awu: NativeAwu | None
    forecast: pa.Array | None


NO_EXTRAS = NativeExtras(None, None)


class NativePolicy:
    """One policy file's native plan (built once per policy file, by stage._Plan)."""

    def __init__(
        self,
        policy: PolicyFile,
        attribution: Attribution,
        labels: tuple[str, ...],
        checks: list[policies.Check],
        counted: list[policies.Check],
        outbound: OutboundRedaction = NO_REDACTION,
    ) -> None:
        self.policy = policy
        # Budgets keyed on span attributes charge the subjects this resolves per batch.
        self.subjects = AttributeSubjects(policy.budgets, outbound)
        texts: list[str] = []

        def text_index(name: str) -> int:
            if name not in texts:
                texts.append(name)
            return texts.index(name)

        dims = [
            [text_index(name) for key in attribution.sources(dim) for name in (key, RESOURCE_PREFIX + key)]
            for dim in DIMENSIONS
        ]
        cost_texts = tuple(
            text_index(name) for name in (gs.COST_MODEL, gs.COST_PROVIDER, "genops.cost.status", ERROR_TYPE)
        )
        # The AWU columns (awu.py): the operation name's sources and each dimension's own key.
        awu = (
            [text_index(name) for name in gs.OPERATION_SOURCES],
            [text_index(dimension_key(dim)) for dim in DIMENSIONS],
            list(gs.OPERATION_TYPES.items()),
            gs.SPEC_VERSION_VALUE,
            gs.ACCOUNTING_UNIT_USD,
        )
        self.texts = tuple(texts)
        dimension = {dim: i for i, dim in enumerate(DIMENSIONS)}
        rules = [
            (
                rule.type,
                [(dimension[dim], list(values)) for dim, values in rule.match.items()],
                float(rule.max_usd) if rule.max_usd is not None else 0.0,
                int(rule.max_tokens) if rule.max_tokens is not None else 0,
                glob_regex(rule.allow) if rule.allow else None,
                glob_regex(rule.deny) if rule.deny else None,
                [dimension[dim] for dim in rule.dimensions],
            )
            for rule in policy.rules
        ]
        zones = sorted({(b.timezone, b.period) for b in policy.budgets})
        self._zone_budget: list[Budget] = [
            next(b for b in policy.budgets if (b.timezone, b.period) == zone) for zone in zones
        ]
        budget_specs = [
            (
                b.name,
                b.period,
                None if b.dimension is None else dimension[b.dimension],
                b.value,
                zones.index((b.timezone, b.period)),
                float(b.limit_usd),
                min(b.warn_at, default=1.0),
                [float(t) for t in b.thresholds()],
                b.mode != "audit_only",
            )
            for b in policy.budgets
        ]
        self.plan = native_module().PolicyPlan(
            dims,
            cost_texts,
            rules,
            budget_specs,
            len(zones),
            [_LABEL_SOURCES[name] for name in labels],
            [(c.name, policies.MODE_ORDER.index(c.mode), c.reason_code) for c in checks],
            policies.severity_order(checks),
            policies.VERDICT_WORDS,
            awu,
        )
        self._counted = counted

    def prepare(self, batch: TelemetryBatch) -> None:
        """Reads the plan's inputs ahead, but for the PII count (the redaction stage's output,
        read by `process`)."""
        try:
            inputs = ([_text(batch, name) for name in self.texts], _numbers(batch, normalized(batch)))
        except Unsupported:
            return
        batch.derived[_PREPARED] = (self, inputs)

    def process(
        self, batch: TelemetryBatch, store: BudgetStore, metrics: GovernanceMetrics, fingerprint: Callable
    ) -> tuple[BatchChanges, NativeExtras]:
        """The batch's changes and what the stage writes after them; raises on a batch the plan
        cannot read (nothing applied then)."""
        # batch.derived is untyped (issue 19 replaces it with typed hand-offs): prepare() put it there.
        prepared: Any = batch.derived.pop(_PREPARED, None)
        try:
            if prepared is not None and prepared[0] is self:
                texts, numbers = prepared[1]
                numbers[_PII_AT] = _pii_count(batch)
            else:
                texts = [_text(batch, name) for name in self.texts]
                numbers = _numbers(batch, normalized(batch))
            numbers.append(_rows(batch))
        except Unsupported as e:
            raise Unsupported(f"policy stage: a column of type {e} cannot be read") from None
        rows = len(batch)
        now_ns, now_s = time.time_ns(), int(time.time())
        subjects = self.subjects.columns(batch, store, now_ns, now_s)

        def apply(increments: dict[str, float], expires_at: dict[str, int]) -> tuple[dict[str, float], bool]:
            applied = store.apply(fingerprint(batch), increments, expires_at)
            return applied.totals, applied.repeated

        found = self.plan.run(
            rows,
            texts,
            numbers,
            now_ns,
            now_s,
            apply,
            self._window,
            metrics.operation_labels,
            subjects,
            # A log record naming a span is that span's call (log_charges.py): not evaluated.
            batch.column_parts(IN_SPAN),
            self._forecast_windows(),
        )
        if found is None:
            # A non-finite cost or a time past i64: span_values.check_batch clears those first.
            raise ValueError("policy stage: a cost or time the plan cannot charge")
        if not found:
            return BatchChanges(), NO_EXTRAS
        (violations, result, reason), tags, events, levels, check_counts, result_counts, groups, awu = found
        arrays = {
            policies.VIOLATIONS: _lists(rows, violations),
            policies.RESULT: _string_views(rows, result),
            policies.REASON_CODE: _string_views(rows, reason),
        }
        forecast = None
        if tags is not None:
            name, period, limit, consumed, remaining, utilization, exceeded, forecasts = tags
            forecast = None if forecasts is None else _string_views(rows, forecasts)
            arrays[budgets.TAGS["name"]] = _string_views(rows, name)
            arrays[budgets.TAGS["period"]] = _string_views(rows, period)
            for what, column in (
                ("allocated", limit),
                ("limit", limit),
                ("consumed", consumed),
                ("remaining", remaining),
                ("utilization", utilization),
            ):
                arrays[budgets.TAGS[what]] = _array(pa.float64(), rows, column)
            arrays[budgets.TAGS["exceeded"]] = _array(pa.bool_(), rows, exceeded)
        changes = {name: arrow_series(name, array) for name, array in arrays.items()}
        span_events = self._events(batch, events)
        extras = NativeExtras(None if awu is None else _native_awu(rows, awu), forecast)
        if groups is None:  # a retried batch: same tags and events as the first time, counted once
            return BatchChanges(set_attributes=changes, events=span_events, arrow=arrays), extras
        costs = groups.costs()
        if costs is not None:
            # No metric labels: one group, its cost summed by polars as the polars path does.
            groups.set_cost(0, pl.Series(_array(pa.float64(), len(costs[1]) // 8, costs)).sum() or 0.0)
        metrics.record_operation_groups(groups)
        results: Counter[str] = Counter(dict(result_counts))
        metrics.record_verdicts(
            results,
            [(c.name, c.reason_code, c.mode, count) for c, count in zip(self._counted, check_counts, strict=True)],
        )
        if tags is not None:
            listed = self.policy.budgets
            exceeded = check_counts[len(self.policy.rules) :]
            found_levels = [(listed[b].name, who, spent, float(listed[b].limit_usd)) for b, who, spent in levels]
            metrics.record_budgets(
                found_levels,
                [(b.name, b.mode, count) for b, count in zip(listed, exceeded, strict=True) if count],
                level_forecasts({b.name: b for b in listed}, found_levels, now_utc()),
            )
        return BatchChanges(set_attributes=changes, events=span_events, arrow=arrays), extras

    def _forecast_windows(self) -> tuple[int, list[tuple[float, float]]] | None:
        """(now in ns, per budget (seconds since its window opened, seconds left in it)) for the
        forecast tag, as budget_forecast.forecast_column reads them; None without budgets."""
        if not self.policy.budgets:
            return None
        now = now_utc()
        return int(now.timestamp() * 1e9), [window_times(budget, now) for budget in self.policy.budgets]

    def _window(self, zone: int, seconds: int) -> tuple[int, int, str]:
        """(start, end, label) of the window of a (time zone, period) holding `seconds`."""
        label, start, end = self._zone_budget[zone].window(dt.datetime.fromtimestamp(seconds, tz=dt.UTC))
        return int(start.timestamp()), int(end.timestamp()), label

    def _events(self, batch: TelemetryBatch, found: list) -> list[SpanEventToAdd]:
        if not found:
            return []
        rows = batch.column_array(ROW)
        assert rows is not None
        events = []
        for position, index, threshold, event_time, subject, label, consumed in found:
            budget = self.policy.budgets[index]
            events.append(
                budgets.alert_event(rows[position].as_py(), event_time, budget, subject, label, threshold, consumed)
            )
        return events


def _native_awu(rows: int, found: tuple) -> NativeAwu:
    """policy.rs `awu`'s buffers as the arrays and event columns awu.add_awu_changes writes."""
    written, (event_rows, starts, results, reasons), calculated, sums = found
    columns: dict[str, pa.Array] = {}
    for key, buffers in zip(WRITTEN_KEYS, written, strict=True):
        if buffers is not None:
            numeric = key == gs.ACCOUNTING_ACTUAL
            columns[key] = _array(pa.float64(), rows, buffers) if numeric else _string_views(rows, buffers)
    decided = len(event_rows) // 8
    events = [
        SpanEventColumns(
            gs.EVENT_POLICY_EVALUATED,
            _int64s(decided, event_rows),
            _int64s(decided, starts),
            {
                gs.POLICY_RESULT: arrow_series(gs.POLICY_RESULT, _string_views(decided, results)),
                gs.POLICY_REASON_CODE: arrow_series(gs.POLICY_REASON_CODE, _string_views(decided, reasons)),
            },
        )
    ]
    if calculated is not None:
        cost_rows, ends, costs, currencies, providers, models = calculated
        costed = len(cost_rows) // 8
        events.append(
            SpanEventColumns(
                gs.EVENT_COST_CALCULATED,
                _int64s(costed, cost_rows),
                _int64s(costed, ends),
                {
                    gs.COST_TOTAL: arrow_series(gs.COST_TOTAL, _array(pa.float64(), costed, costs)),
                    gs.COST_CURRENCY: arrow_series(gs.COST_CURRENCY, _string_views(costed, currencies)),
                    gs.COST_PROVIDER: arrow_series(gs.COST_PROVIDER, _string_views(costed, providers)),
                    gs.COST_MODEL: arrow_series(gs.COST_MODEL, _string_views(costed, models)),
                },
            )
        )
    return NativeAwu(columns, events, [(kind, float(spent)) for kind, spent in sums])


def _int64s(length: int, data: bytes) -> pl.Series:
    return arrow_series("", _array(pa.int64(), length, (None, data)))


def _array(arrow_type: pa.DataType, rows: int, buffers: tuple) -> pa.Array:
    validity, data = buffers
    return pa.Array.from_buffers(
        arrow_type, rows, [None if validity is None else pa.py_buffer(validity), pa.py_buffer(data)]
    )


def _string_views(rows: int, buffers: tuple) -> pa.Array:
    validity, views, data = buffers
    return pa.Array.from_buffers(
        pa.string_view(),
        rows,
        [None if validity is None else pa.py_buffer(validity), pa.py_buffer(views), pa.py_buffer(data)],
    )


def _lists(rows: int, buffers: tuple) -> pa.Array:
    validity, offsets, count, names = buffers
    return pa.Array.from_buffers(
        pa.large_list(pa.string_view()),
        rows,
        [None if validity is None else pa.py_buffer(validity), pa.py_buffer(offsets)],
        children=[_string_views(count, names)],
    )


def _parts(column: pl.Series) -> tuple:
    """(kind, length, offset, buffers, child) as processor/native/src/otlp/arrow.rs reads an array."""
    parts = array_parts(series_array(column))
    if parts is None:
        raise Unsupported(str(column.dtype))
    return parts


def _readable(batch: TelemetryBatch, name: str) -> tuple[pa.DataType | None, tuple | None]:
    """(Arrow type, parts): the type None when absent, all-null or binary (read as absent); the parts
    None when the column must go through polars first."""
    arrow_type = batch.column_type(name)
    if arrow_type is None or arrow_type == pa.binary_view():
        return None, None
    return arrow_type, batch.column_parts(name)


def _text(batch: TelemetryBatch, name: str) -> tuple | None:
    """attribution.text's input: the column as strings (None: absent, null or binary)."""
    arrow_type, parts = _readable(batch, name)
    if arrow_type is None:
        return None
    if arrow_type == pa.string_view():
        return parts
    column = batch.column_series(name)
    assert column is not None
    if not (column.dtype.is_numeric() or column.dtype == pl.Boolean):
        raise Unsupported(str(column.dtype))
    return _parts(column.cast(pl.String, strict=False))


def _number(batch: TelemetryBatch, name: str, dtype: PolarsDataType, arrow_type: pa.DataType) -> tuple | None:
    """policy_stage._number: the column as `dtype` (strings trimmed first), None when absent."""
    found, parts = _readable(batch, name)
    if found is None:
        return None
    if found == arrow_type:
        return parts
    column = batch.column_series(name)
    assert column is not None
    if column.dtype == pl.String:
        column = column.str.strip_chars().cast(pl.Float64, strict=False)
    elif not (column.dtype.is_numeric() or column.dtype == pl.Boolean):
        raise Unsupported(str(column.dtype))
    return _parts(column.cast(dtype, strict=False))


def _pii_count(batch: TelemetryBatch) -> tuple | None:
    return _number(batch, policies.PII_COUNT, pl.Int64, pa.int64())


def _numbers(batch: TelemetryBatch, genai: pl.DataFrame) -> list[tuple | None]:
    genai_schema = dict(zip(genai.columns, genai.dtypes, strict=True))

    def canonical(name: str, dtype: PolarsDataType) -> tuple | None:
        found = genai_schema.get(name)
        if found is None or found == pl.Null:
            return None
        column = genai.get_column(name)
        return _parts(column if found == dtype else column.cast(dtype))

    status = None
    status_type = batch.column_type(STATUS_CODE)
    if status_type == pa.int32():  # as the decoders type it: widened without a polars round trip
        status = array_parts(batch.column_array(STATUS_CODE).cast(pa.int64()))  # type: ignore[union-attr]
    elif status_type is not None and status_type != pa.binary_view():
        status = _parts(batch.column_series(STATUS_CODE).cast(pl.Int64, strict=False))  # type: ignore[union-attr]
    start = _time_column(batch, START_TIME)
    if start is None:
        raise Unsupported("no start times")
    return [
        canonical(MODEL, pl.String),
        canonical(PROVIDER, pl.String),
        canonical(TOKENS_INPUT, pl.Int64),
        canonical(TOKENS_OUTPUT, pl.Int64),
        _number(batch, budgets.COST, pl.Float64, pa.float64()),
        _pii_count(batch),
        status,
        start,
        _time_column(batch, budgets.END_TIME),
    ]


def _rows(batch: TelemetryBatch) -> tuple | None:
    """The batch row of each frame row as Int64 parts (the AWU events name it)."""
    if batch.column_type(ROW) == pa.uint32():  # as the decoders type it: widened without polars
        return array_parts(batch.column_array(ROW).cast(pa.int64()))  # type: ignore[union-attr]
    return _time_column(batch, ROW)


def _time_column(batch: TelemetryBatch, name: str) -> tuple | None:
    """An integer column (times, batch rows) as Int64 parts (u64 read as i64 bits)."""
    arrow_type = batch.column_type(name)
    if arrow_type is None:
        # An all-null column reads as nulls, an absent one as absent (as on the polars path).
        return _parts(pl.Series(name, [None] * len(batch), dtype=pl.Int64)) if batch.has_column(name) else None
    if arrow_type in (pa.uint64(), pa.int64()):
        return batch.column_parts(name)
    return _parts(batch.column_series(name).cast(pl.Int64))  # type: ignore[union-attr]
