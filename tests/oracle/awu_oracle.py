"""The AWU attributes and events as processor/stages/policy/awu.py made them before they were built column-wise
(2026-12-07, main at 79af840): the oracle of tests/core/test_awu_columns.py, kept as it was."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from processor.core import genops_semconv as gs
from processor.core.attribution import DIMENSIONS, Attribution, dimension_key, text
from processor.core.contract import BatchChanges, SpanEventToAdd
from processor.core.decode import END_TIME, RESOURCE_PREFIX, ROW, START_TIME, TelemetryBatch, WantedKeys


def _unused_wanted_keys() -> WantedKeys:
    return WantedKeys(item=frozenset(gs.OPERATION_SOURCES))


@dataclass(frozen=True)
class _Decided:
    """The decided spans' columns the events are made from, as Python lists."""

    rows: list[int]
    results: list[str]
    reasons: list[str | None]
    starts: list[int]
    ends: list[int]
    costs: list[float | None]
    providers: list[str | None]
    models: list[str | None]


def add_awu_changes(batch: TelemetryBatch, changes: BatchChanges, attribution: Attribution) -> BatchChanges:
    """`changes` (the policy stage's) with the spec's AWU attributes and events added."""
    result = changes.set_attributes.get(gs.POLICY_RESULT)
    if result is None or result.null_count() == len(result):
        return changes
    frame = _inputs(batch, attribution)
    schema = dict(frame.schema)
    cost = _cost(schema)
    operation = pl.coalesce([text(schema, key) for key in gs.OPERATION_SOURCES])
    dimensions = zip(DIMENSIONS, attribution.columns(schema), strict=True)
    written = [
        pl.lit(gs.SPEC_VERSION_VALUE).alias(gs.SPEC_VERSION),
        # Attribution from the resource or a fallback key, on the span itself (the spec reads it
        # there); a span's own value is left as it came (§2.3: immutable).
        *(
            pl.when(text(schema, dimension_key(dim)).is_null()).then(column).alias(dimension_key(dim))
            for dim, column in dimensions
        ),
        operation.alias(gs.OPERATION_NAME),
        operation.str.to_lowercase().replace(gs.OPERATION_TYPES).alias(gs.OPERATION_TYPE),
        cost.alias(gs.ACCOUNTING_ACTUAL),
        pl.when(cost.is_not_null()).then(pl.lit(gs.ACCOUNTING_UNIT_USD)).alias(gs.ACCOUNTING_UNIT),
    ]
    # Only the decided spans (~40% of a batch) are computed, then laid back over the batch.
    decided = (
        frame.lazy()
        .with_columns(
            result.alias(gs.POLICY_RESULT),
            _reasons(changes, len(result)).alias(gs.POLICY_REASON_CODE),
            pl.int_range(pl.len(), dtype=pl.UInt32).alias(_POSITION),
        )
        .filter(pl.col(gs.POLICY_RESULT).is_not_null())
        .select(pl.col(_POSITION), *written, *_event_inputs(schema, cost))
        .collect()
    )
    names = [gs.SPEC_VERSION, *(dimension_key(dim) for dim in DIMENSIONS), *_WRITTEN]
    laid = decided.select(names)[_lay_back(decided.get_column(_POSITION), len(result))]
    for column in laid.get_columns():
        if column.null_count() < len(column):  # an all-null column writes nothing
            changes.set_attributes[column.name] = column
    inputs = decided.select(pl.exclude(_POSITION, *names))
    changes.events.extend(_events(_Decided(*(column.to_list() for column in inputs.get_columns()))))
    return changes


_POSITION = "_awu_position"
_WRITTEN = (gs.OPERATION_NAME, gs.OPERATION_TYPE, gs.ACCOUNTING_ACTUAL, gs.ACCOUNTING_UNIT)


def _lay_back(positions: pl.Series, rows: int) -> pl.Series:
    """Per batch row, the index of its row among the decided ones, or null."""
    index: list[int | None] = [None] * rows
    for at, position in enumerate(positions.to_list()):
        index[position] = at
    return pl.Series(index, dtype=pl.UInt32)


def _inputs(batch: TelemetryBatch, attribution: Attribution) -> pl.DataFrame:
    """The batch columns the AWU attributes and events read (absent ones left out)."""
    keys = {key for dim in DIMENSIONS for key in attribution.sources(dim)}
    names = [
        ROW,
        START_TIME,
        END_TIME,
        *keys,
        *(RESOURCE_PREFIX + key for key in keys),
        *gs.OPERATION_SOURCES,
        gs.COST_TOTAL,
        gs.COST_PROVIDER,
        gs.COST_MODEL,
    ]
    columns = [column for name in dict.fromkeys(names) if (column := batch.column_series(name)) is not None]
    return pl.DataFrame(columns, height=len(batch))


def _reasons(changes: BatchChanges, rows: int) -> pl.Series:
    reasons = changes.set_attributes.get(gs.POLICY_REASON_CODE)
    return pl.Series(gs.POLICY_REASON_CODE, [None] * rows, dtype=pl.String) if reasons is None else reasons


def _cost(schema: dict[str, pl.DataType]) -> pl.Expr:
    """The span's USD cost (the cost stage's or its SDK's), null when unknown or not a finite amount."""
    if schema.get(gs.COST_TOTAL, pl.Null) in (pl.Null, pl.Binary):
        return pl.lit(None, dtype=pl.Float64)
    column = pl.col(gs.COST_TOTAL)
    if schema[gs.COST_TOTAL] == pl.String:
        column = column.str.strip_chars()
    number = column.cast(pl.Float64, strict=False)
    return pl.when(number.is_finite() & (number >= 0)).then(number)


def _event_inputs(schema: dict[str, pl.DataType], cost: pl.Expr) -> list[pl.Expr]:
    """The columns of `_Decided`, in its order."""

    def number(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Int64) if name in schema else pl.lit(0, dtype=pl.Int64)

    start = number(START_TIME)
    end = number(END_TIME)
    return [
        pl.col(ROW),
        pl.col(gs.POLICY_RESULT).cast(pl.String),
        pl.col(gs.POLICY_REASON_CODE).cast(pl.String),
        start.alias("start"),
        pl.when(end > 0).then(end).otherwise(start).alias("end"),
        cost.alias("cost"),
        text(schema, gs.COST_PROVIDER).alias("provider"),
        text(schema, gs.COST_MODEL).alias("model"),
    ]


def _events(decided: _Decided) -> list[SpanEventToAdd]:
    events = []
    for row, result, reason, start, end, cost, provider, model in zip(
        decided.rows,
        decided.results,
        decided.reasons,
        decided.starts,
        decided.ends,
        decided.costs,
        decided.providers,
        decided.models,
        strict=True,
    ):
        evaluated: dict[str, object] = {gs.POLICY_RESULT: result}
        if reason is not None:
            evaluated[gs.POLICY_REASON_CODE] = reason
        events.append(SpanEventToAdd(row, gs.EVENT_POLICY_EVALUATED, start, evaluated))
        if cost is not None:
            calculated: dict[str, object] = {gs.COST_TOTAL: cost, gs.COST_CURRENCY: gs.ACCOUNTING_UNIT_USD}
            if provider is not None:
                calculated[gs.COST_PROVIDER] = provider
            if model is not None:
                calculated[gs.COST_MODEL] = model
            events.append(SpanEventToAdd(row, gs.EVENT_COST_CALCULATED, end, calculated))
    return events
