"""The GenOps specification's attributes and events on every AI Workload Unit (AWU): each GenAI
span the policy stage decides on (the spans the cost stage recognises).

Added to the policy stage's changes, from its decision and the columns of the batch:
- §7.1 attributes: genops.spec.version; genops.team, .project, .environment (and the optional
  customer_id, cost_center, feature) where the span itself does not carry them but its resource
  or a fallback key does; genops.operation.name and .type from gen_ai.operation.name;
  genops.accounting.actual and .unit (USD) where the span has a cost.
- events: genops.policy.evaluated on every decision (at the span's start: the decision is
  about the unit before it ran), genops.cost.calculated where a cost is known (at its end).

On the native path the policy kernel computes them with its verdicts (policy.rs `awu`, handed
over as `NativeAwu`); the polars query below computes them for the polars path, and
tests/core/test_awu_columns.py checks both against the one-object-per-event oracle.

Nothing is written that the span has no value for: a span without attribution gets a WARNING
from policies.SPEC_ATTRIBUTION_RULE instead of a placeholder, and one whose cost is unknown
(a model missing from the pricing table) gets no genops.accounting.* at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from processor.core import genops_semconv as gs
from processor.core.attribution import DIMENSIONS, Attribution, dimension_key, text
from processor.core.batch_columns import arrow_series
from processor.core.contract import BatchChanges
from processor.core.decode import END_TIME, RESOURCE_PREFIX, ROW, START_TIME, TelemetryBatch, WantedKeys
from processor.core.span_event_columns import SpanEventColumns
from processor.stages.policy import budgets


def wanted_keys() -> WantedKeys:
    return WantedKeys(item=frozenset(gs.OPERATION_SOURCES))


_WRITTEN = (gs.OPERATION_NAME, gs.OPERATION_TYPE, gs.ACCOUNTING_ACTUAL, gs.ACCOUNTING_UNIT)
# The attributes written on the decided spans, in the order they are written.
WRITTEN_KEYS = (gs.SPEC_VERSION, *(dimension_key(dim) for dim in DIMENSIONS), *_WRITTEN)


@dataclass(frozen=True)
class NativeAwu:
    """The AWU attributes and events as the native policy kernel computed them (policy.rs `awu`),
    the same values the query below gives for the spans the kernel decided.

    written: key -> its column over the whole batch, in WRITTEN_KEYS order, all-null ones left out.
    events: genops.policy.evaluated, then genops.cost.calculated when some span has a cost.
    operation_costs: (operation type, summed cost) per type of the costed spans, in order of
    first appearance.
    """

    written: dict[str, pa.Array]
    events: list[SpanEventColumns]
    operation_costs: list[tuple[str | None, float]]


def add_awu_changes(
    batch: TelemetryBatch,
    changes: BatchChanges,
    attribution: Attribution,
    operation_costs: Callable[[list[str | None], list[float | None]], None] | None = None,
    native: NativeAwu | None = None,
) -> BatchChanges:
    """`changes` (the policy stage's) with the spec's AWU attributes and events added, from
    `native` when the kernel computed them, else by a query over the batch; `operation_costs`
    (when given) is called with the decided spans' operation types and costs."""
    result = changes.set_attributes.get(gs.POLICY_RESULT)
    if result is None or result.null_count() == len(result):
        return changes
    if native is not None:
        return _add_native(changes, native, operation_costs)
    frame = _inputs(batch, attribution)
    decided = (
        frame.lazy()
        .with_columns(
            result.alias(gs.POLICY_RESULT),
            _reasons(changes, len(result)).alias(gs.POLICY_REASON_CODE),
            pl.int_range(pl.len(), dtype=pl.UInt32).alias(_POSITION),
        )
        .filter(pl.col(gs.POLICY_RESULT).is_not_null())
        .select(_outputs(frame.schema, attribution))
        # Written in the shape it runs in: the optimiser's passes cost more than they save here.
        .collect(engine=budgets.ENGINE, optimizations=budgets.OPTIMIZATIONS)
    )
    laid = decided.select(WRITTEN_KEYS)[_lay_back(decided.get_column(_POSITION), len(result))]
    for column in laid.get_columns():
        if column.null_count() < len(column):  # an all-null column writes nothing
            changes.set_attributes[column.name] = column
    if operation_costs is not None:
        operation_costs(
            decided.get_column(gs.OPERATION_TYPE).to_list(), decided.get_column(gs.ACCOUNTING_ACTUAL).to_list()
        )
    changes.event_columns.extend(_events(decided))
    return changes


# (frame schema, attribution) -> the output expressions: batches mostly repeat a few shapes, and
# building the expressions costs more than the query over a batch's decided spans.
_OUTPUTS: dict[tuple, list[pl.Expr]] = {}
_MAX_SCHEMAS = 64


def _outputs(frame_schema: pl.Schema, attribution: Attribution) -> list[pl.Expr]:
    """What the query selects from the decided spans: position, written columns, event inputs."""
    schema = dict(frame_schema)
    shape = (tuple(schema.items()), tuple(attribution.fallbacks.items()))
    found = _OUTPUTS.get(shape)
    if found is not None:
        return found
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
    outputs = [pl.col(_POSITION), *written, *_event_inputs(schema)]
    if len(_OUTPUTS) >= _MAX_SCHEMAS:
        _OUTPUTS.clear()
    _OUTPUTS[shape] = outputs
    return outputs


_POSITION = "_awu_position"


def _add_native(
    changes: BatchChanges,
    native: NativeAwu,
    operation_costs: Callable[[list[str | None], list[float | None]], None] | None,
) -> BatchChanges:
    for key, array in native.written.items():
        changes.set_attributes[key] = arrow_series(key, array)
        changes.arrow[key] = array
    if operation_costs is not None and native.operation_costs:
        # One entry per type, already summed in span order: summing them again adds each to 0.0,
        # which leaves the same floats (the kernel's sums start from 0.0 too).
        kinds, costs = zip(*native.operation_costs, strict=True)
        operation_costs(list(kinds), list(costs))
    changes.event_columns.extend(native.events)
    return changes


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


def _event_inputs(schema: dict[str, pl.DataType]) -> list[pl.Expr]:
    """The columns the events read besides the written ones (`_EVENT_INPUTS`)."""

    def number(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Int64) if name in schema else pl.lit(0, dtype=pl.Int64)

    start = number(START_TIME)
    end = number(END_TIME)
    return [
        pl.col(ROW).cast(pl.Int64).alias(_EVENT_ROW),
        pl.col(gs.POLICY_RESULT).cast(pl.String),
        pl.col(gs.POLICY_REASON_CODE).cast(pl.String),
        start.alias(_EVENT_START),
        pl.when(end > 0).then(end).otherwise(start).alias(_EVENT_END),
        text(schema, gs.COST_PROVIDER).alias(gs.COST_PROVIDER),
        text(schema, gs.COST_MODEL).alias(gs.COST_MODEL),
    ]


_EVENT_ROW = "_awu_row"
_EVENT_START = "_awu_start"
_EVENT_END = "_awu_end"


def _events(decided: pl.DataFrame) -> list[SpanEventColumns]:
    """genops.policy.evaluated on every decided span, then genops.cost.calculated on those with a
    cost: as columns, so each span gets its evaluated event before its calculated one."""
    evaluated = SpanEventColumns(
        gs.EVENT_POLICY_EVALUATED,
        decided.get_column(_EVENT_ROW),
        decided.get_column(_EVENT_START),
        {key: decided.get_column(key) for key in (gs.POLICY_RESULT, gs.POLICY_REASON_CODE)},
    )
    costed = decided.filter(pl.col(gs.ACCOUNTING_ACTUAL).is_not_null())
    calculated = SpanEventColumns(
        gs.EVENT_COST_CALCULATED,
        costed.get_column(_EVENT_ROW),
        costed.get_column(_EVENT_END),
        {
            gs.COST_TOTAL: costed.get_column(gs.ACCOUNTING_ACTUAL),
            # USD wherever there is a cost, as genops.accounting.unit.
            gs.COST_CURRENCY: costed.get_column(gs.ACCOUNTING_UNIT),
            gs.COST_PROVIDER: costed.get_column(gs.COST_PROVIDER),
            gs.COST_MODEL: costed.get_column(gs.COST_MODEL),
        },
    )
    return [evaluated, calculated] if len(calculated) else [evaluated]
