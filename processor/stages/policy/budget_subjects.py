"""The subjects of budgets keyed on a span attribute (`Budget.attribute`), per batch, for the native plan.

Such a budget charges each distinct value of the attribute (span first, then resource) in a window
apart, but the values are what apps send (a conversation id, a user id): unbounded and possibly
sensitive. So before the plan charges a batch, each window's distinct values are published as the
attribute is (redacted with the outbound label rules), then admitted to the window's
`max_subjects` in the state store (store_caps.py, shared by every process); spend of values past
the cap goes to the OVERFLOW subject. The plan then keys the budget on the resulting column as it
keys a budget on a dimension (processor/native/src/stages/policy.rs `SubjectColumn`).

Only the spans the budget charges ask the store: priced ones (a cost above 0), with the attribute
(and the budget's value, compared before redaction), that are calls of their own (not a log
record naming a span). Asking about others would fill the cap with subjects nothing was charged to.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from processor.core.attribution import text
from processor.core.batch_columns import array_parts, series_array
from processor.core.decode import RESOURCE_PREFIX, START_TIME, TelemetryBatch
from processor.core.outbound import OutboundRedaction
from processor.stages.policy.budgets import COST, KEEP_CLOSED_WINDOW_SECONDS
from processor.stages.policy.log_charges import IN_SPAN
from processor.stages.policy.policy_file import Budget
from processor.stages.policy.store_caps import OVERFLOW, StoreCap

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

# Windows remembered per budget; a bound, since late spans keep bringing old ones.
_MAX_WINDOWS = 4096


@dataclass(frozen=True)
class SubjectColumn:
    """One attribute budget's subjects over a batch, as the native plan reads them."""

    # The budget's index in the policy file (with the spec checks: the plan's budgets).
    budget: int
    # Arrow parts (batch_columns.array_parts) of a string column over the batch's rows: the
    # subject as published, OVERFLOW, or null where the budget charges nothing.
    subjects: tuple


@dataclass(frozen=True)
class _Window:
    start: int
    end: int
    label: str


class _Keyed:
    """One attribute budget: its store cap and the windows it has seen."""

    def __init__(self, index: int, budget: Budget) -> None:
        self.index = index
        self.budget = budget
        self.key = budget.attribute or ""
        self.cap = StoreCap(budget.max_subjects, f"budget {budget.name} max_subjects")
        self._windows: list[_Window] = []

    def window(self, seconds: int) -> _Window:
        """The window holding `seconds` (epoch), as the native plan finds it (Budget.window)."""
        known = self._windows
        at = bisect.bisect_right(known, seconds, key=lambda w: w.start)
        if at and seconds < known[at - 1].end:
            return known[at - 1]
        label, start, end = self.budget.window(dt.datetime.fromtimestamp(seconds, tz=dt.UTC))
        found = _Window(int(start.timestamp()), int(end.timestamp()), label)
        if len(known) >= _MAX_WINDOWS:
            known.clear()
        bisect.insort(known, found, key=lambda w: w.start)
        return found


class AttributeSubjects:
    """The subject columns of one policy file's attribute budgets (built once per policy file:
    the caps remember what the store answered)."""

    def __init__(self, budgets: Sequence[Budget], outbound: OutboundRedaction) -> None:
        self._keyed = [_Keyed(i, b) for i, b in enumerate(budgets) if b.attribute is not None]
        self._outbound = outbound

    def __bool__(self) -> bool:
        return bool(self._keyed)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(k.key for k in self._keyed)

    def columns(self, batch: TelemetryBatch, store: object, now_ns: int, now_s: int) -> list[SubjectColumn]:
        """Per attribute budget, its subjects over `batch`, admitted in `store` (the batch's
        arrival at `now_ns`/`now_s` dates spans without a start, and keeps closed windows)."""
        if not self._keyed:
            return []
        inputs = _inputs(batch, sorted(self.keys), now_ns)
        return [self._column(keyed, inputs, store, now_s) for keyed in self._keyed]

    def _column(self, keyed: _Keyed, inputs: pl.DataFrame, store: object, now_s: int) -> SubjectColumn:
        raw = inputs.get_column(_subject(keyed.key))
        charged = inputs.get_column(_CHARGED) & raw.is_not_null()
        if keyed.budget.value is not None:
            charged &= raw == keyed.budget.value
        rows = charged.fill_null(False).arg_true().to_list()
        values = raw.gather(rows).to_list() if rows else []
        starts = inputs.get_column(_START).gather(rows).to_list() if rows else []
        # Per window: its distinct values, and when the store may forget the window's family.
        asked: dict[_Window, set[str]] = {}
        windows = []
        for value, start in zip(values, starts, strict=True):
            window = keyed.window(start // 1_000_000_000)
            asked.setdefault(window, set()).add(value)
            windows.append(window)
        published: dict[_Window, dict[str, str]] = {}
        for window, members in asked.items():
            labels = {value: self._outbound.label(keyed.key, value) for value in members}
            family = f"budget|{keyed.budget.name}|{window.label}"
            # A late span's window may have closed long ago: kept from now on, not from its end.
            expires = max(window.end, now_s) + KEEP_CLOSED_WINDOW_SECONDS
            admitted = keyed.cap.admitted(store, family, set(labels.values()), expires)
            published[window] = {v: label if label in admitted else OVERFLOW for v, label in labels.items()}
        column: list[str | None] = [None] * inputs.height
        for row, value, window in zip(rows, values, windows, strict=True):
            column[row] = published[window][value]
        parts = array_parts(series_array(pl.Series(column, dtype=pl.String)))
        assert parts is not None
        return SubjectColumn(keyed.index, parts)


_CHARGED = "_charged"
_START = "_start"


def _subject(key: str) -> str:
    return "_subject:" + key


def _inputs(batch: TelemetryBatch, keys: list[str], now_ns: int) -> pl.DataFrame:
    """Per row: whether a budget may charge it (priced, a call of its own), its charged start
    (its start, else the batch's arrival) and per key the raw subject (trimmed text, span first)."""
    if batch.column_series(START_TIME) is None:
        raise ValueError("policy stage: no start times")  # as the native plan: the decoders write them
    names = dict.fromkeys((START_TIME, COST, IN_SPAN, *keys, *(RESOURCE_PREFIX + key for key in keys)))
    frame = pl.DataFrame([column for column in map(batch.column_series, names) if column is not None])
    schema = dict(frame.schema)
    cost = number(schema, COST)
    charged = cost.is_not_null() & (cost > 0)
    if IN_SPAN in schema:
        charged &= pl.col(IN_SPAN).not_()
    start = pl.when(pl.col(START_TIME) > 0).then(pl.col(START_TIME).cast(pl.Int64, strict=False)).otherwise(now_ns)
    return frame.select(
        charged.fill_null(False).alias(_CHARGED),
        start.alias(_START),
        *(pl.coalesce(text(schema, key), text(schema, RESOURCE_PREFIX + key)).alias(_subject(key)) for key in keys),
    )


def number(schema: dict[str, pl.DataType], key: str, dtype: PolarsDataType = pl.Float64) -> pl.Expr:
    """A numeric attribute column as `dtype` (strings trimmed first), null when absent or binary."""
    if schema.get(key, pl.Null) in (pl.Null, pl.Binary):
        return pl.lit(None, dtype=dtype)
    column = pl.col(key)
    if schema[key] == pl.String:
        column = column.str.strip_chars().cast(pl.Float64, strict=False)
    return column.cast(dtype, strict=False)
