"""The budget charge as polars queries: the differential oracle of the native plan's budget windows
(processor/native/src/stages/policy.rs), which tests/oracle/policy.py runs.

The per-span inputs (window label, subject) are columns of the batch's span frame, computed in
the query before the store is called; the window keys and running sums are then added up in
Python (a batch holds a few hundred GenAI spans: a plain loop costs less than polars' per-call
and per-expression overhead for the window functions); the consumed amounts go back as columns
into the query after it. A running sum in span order gives each span's consumed amount, and a
threshold is crossed on the span where that running amount first reaches it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from processor.core.contract import SpanEventToAdd
from processor.core.decode import ROW, START_TIME
from processor.stages.policy.budgets import COST, END_TIME, KEEP_CLOSED_WINDOW_SECONDS, TAGS, alert_event, column
from processor.stages.policy.policy_file import PERIOD_LABEL, Budget

if TYPE_CHECKING:
    from polars._typing import PolarsDataType
    from polars.expr.whenthen import ChainedThen, Then

# Columns the span frame must hold before `span_columns`: the batch's arrival time (a span
# without a start time is charged to the window it arrives in), the charged start and the time
# a crossing event gets.
NOW = "_now"
START = "_start"
EVENT_TIME = "_event_time"
PRICED = "_priced"
# Set by `charge_columns` when some span crossed a threshold (events are rare: built in Python).
CROSSED = "_crossed"
# Windows remembered per (budget, label) for their end; a bound, since labels keep coming.
_MAX_WINDOW_ENDS = 4096


def start_columns(has_end_time: bool) -> list[pl.Expr]:
    """The charged start and the event time, from the raw start/end columns and NOW."""
    start = pl.when(pl.col(START_TIME) > 0).then(pl.col(START_TIME).cast(pl.Int64)).otherwise(pl.col(NOW))
    end = pl.col(END_TIME).cast(pl.Int64) if has_end_time else pl.lit(None, dtype=pl.Int64)
    return [start.alias(START), pl.coalesce(end, start).alias(EVENT_TIME)]


def subject_source(budget: Budget) -> str:
    """The span frame column a per-value budget's subjects come from."""
    return budget.dimension if budget.dimension is not None else attribute_column(budget.attribute or "")


def attribute_column(key: str) -> str:
    """The span frame column of a budget attribute (apart from the raw columns of the same key)."""
    return "_attribute:" + key


@dataclass(frozen=True)
class Windows:
    """The windows a batch charges: what the store is asked to add, and how to read its answer."""

    # Window key -> the batch's spend in it, in first-charge order (budget, then span order).
    increments: dict[str, float]
    expires_at: dict[str, int]
    # Per budget, per span: the window key charged (None: not charged) and the running sum of the
    # batch's spend in that window up to and including the span.
    span_keys: list[list[str | None]]
    running: list[list[float | None]]

    @property
    def charged(self) -> bool:
        return bool(self.increments)


class BudgetPlan:
    """The expressions charging one policy file's budgets, built once per policy file."""

    def __init__(self, budgets: Sequence[Budget]) -> None:
        self.budgets = tuple(budgets)
        zones = sorted({(b.timezone, b.period) for b in self.budgets})
        self._label_column = {zone: f"_label{i}" for i, zone in enumerate(zones)}
        self._window_ends: dict[tuple[Budget, str], int] = {}

    def _label(self, budget: Budget) -> str:
        return self._label_column[(budget.timezone, budget.period)]

    def span_columns(self) -> list[list[pl.Expr]]:
        """Layers of columns adding the window labels and per budget its subject (null: not
        charged), which `windows` reads.

        Needs START, PRICED and the dimension columns."""
        # Labels of the priced spans only: the time zone conversion and formatting cost per span.
        start = pl.when(pl.col(PRICED)).then(pl.col(START))
        labels = [
            _local(start, zone).dt.strftime(PERIOD_LABEL[period]).alias(column)
            for (zone, period), column in self._label_column.items()
        ]
        subjects = []
        for index, budget in enumerate(self.budgets):
            subject = pl.lit("*") if budget.per_value is None else pl.col(subject_source(budget))
            applies = pl.col(PRICED) & subject.is_not_null()
            if budget.value is not None:
                applies &= subject == budget.value
            subjects.append(pl.when(applies).then(subject.cast(pl.String)).alias(column(index, "subject")))
        return [labels + subjects]

    def capped(self, spans: pl.DataFrame, resolve: Callable[[int, str, set[str], int], dict[str, str]]) -> pl.DataFrame:
        """`spans` with the subjects of attribute budgets as `resolve(budget index, window label,
        subjects, expires_at)` maps them: published (redacted), or OVERFLOW past the budget's
        max_subjects (see processor/stages/policy/store_caps.py)."""
        replaced = []
        for index, budget in enumerate(self.budgets):
            if budget.attribute is None:
                continue
            name = column(index, "subject")
            subjects = spans.get_column(name).to_list()
            labels = spans.get_column(self._label(budget)).to_list()
            starts = spans.get_column(START).to_list()
            asked: dict[str, tuple[set[str], int]] = {}
            for subject, label, start in zip(subjects, labels, starts, strict=True):
                if subject is not None:
                    found = asked.get(label)
                    if found is None:
                        closes = max(self._window_end(budget, label, start), int(time.time()))
                        found = asked[label] = (set(), closes + KEEP_CLOSED_WINDOW_SECONDS)
                    found[0].add(subject)
            mapping = {label: resolve(index, label, members, expires) for label, (members, expires) in asked.items()}
            mapped = [
                None if subject is None else mapping[label][subject]
                for subject, label in zip(subjects, labels, strict=True)
            ]
            replaced.append(pl.Series(name, mapped, dtype=pl.String))
        return spans.with_columns(replaced) if replaced else spans

    def windows(self, spans: pl.DataFrame) -> Windows:
        """The windows charged by `spans` (the frame with `span_columns`), with each span's key
        and running sum per budget."""
        if not self.budgets or not spans.get_column(PRICED).any():
            return Windows({}, {}, [], [])
        costs = spans.get_column(COST).to_list()
        starts = spans.get_column(START).to_list()
        labels = {name: spans.get_column(name).to_list() for name in self._label_column.values()}
        increments: dict[str, float] = {}
        # key -> (budget index, label, start) of the window's first charge.
        first: dict[str, tuple[int, str, int]] = {}
        span_keys, running = [], []
        for index, budget in enumerate(self.budgets):
            prefix = budget.name + "|"
            sums: dict[str, float] = {}
            keys: list[str | None] = []
            totals: list[float | None] = []
            subjects = spans.get_column(column(index, "subject")).to_list()
            for subject, label, cost, start in zip(subjects, labels[self._label(budget)], costs, starts, strict=True):
                if subject is None:
                    keys.append(None)
                    totals.append(None)
                    continue
                key = prefix + subject + "|" + label
                total = sums.get(key)
                if total is None:
                    total = cost
                    if key not in first:
                        first[key] = (index, label, start)
                        increments[key] = 0.0
                else:
                    total += cost
                sums[key] = total
                keys.append(key)
                totals.append(total)
            for key, total in sums.items():
                increments[key] += total
            span_keys.append(keys)
            running.append(totals)
        now = int(time.time())
        expires = {
            # A late span's window may have closed long ago: keep it from now on, not from its end.
            key: max(self._window_end(self.budgets[index], label, start), now) + KEEP_CLOSED_WINDOW_SECONDS
            for key, (index, label, start) in first.items()
        }
        return Windows(increments, expires, span_keys, running)

    def _window_end(self, budget: Budget, label: str, start_ns: int) -> int:
        found = self._window_ends.get((budget, label))
        if found is None:
            if len(self._window_ends) >= _MAX_WINDOW_ENDS:
                self._window_ends.clear()
            found = int(budget.window(_at(start_ns))[2].timestamp())
            self._window_ends[(budget, label)] = found
        return found

    def consumed_columns(self, windows: Windows, totals: dict[str, float]) -> list[pl.Expr] | list[pl.Series]:
        """Per budget and span of the frame `windows` was read from, the window's consumed amount
        after the span: the amount before the batch (from the store's totals after it, so other
        pods' concurrent charges count) plus the running sum."""
        if not windows.charged:
            return [
                pl.lit(None, dtype=pl.Float64).alias(column(i, what))
                for i in range(len(self.budgets))
                for what in ("consumed", "utilization")
            ]
        before = {key: totals[key] - amount for key, amount in windows.increments.items()}
        out = []
        for index, (keys, running) in enumerate(zip(windows.span_keys, windows.running, strict=True)):
            limit = float(self.budgets[index].limit_usd)
            consumed = [
                None if key is None or total is None else before[key] + total
                for key, total in zip(keys, running, strict=True)
            ]
            out.append(pl.Series(column(index, "consumed"), consumed, dtype=pl.Float64))
            # Divided here, not in polars: polars divides a column without nulls by a scalar as a
            # product with its inverse, which can differ in the last bit from the quotient, and
            # the tag goes to the first budget of the highest utilization (a tie must stay a tie).
            utilization = [None if spent is None else spent / limit for spent in consumed]
            out.append(pl.Series(column(index, "utilization"), utilization, dtype=pl.Float64))
        return out

    def charge_columns(self) -> list[list[pl.Expr]]:
        """Layers, after `consumed_columns`: exceeded, warned, crossings."""
        derived = []
        crossed = []
        for index, budget in enumerate(self.budgets):
            limit = float(budget.limit_usd)
            spent = pl.col(column(index, "consumed"))
            utilization = pl.col(column(index, "utilization"))  # from consumed_columns
            previous = spent - pl.col(COST)
            derived += [
                (spent > limit).alias(column(index, "exceeded")),
                (utilization >= min(budget.warn_at, default=1.0)).alias(column(index, "warned")),
            ]
            for threshold in budget.thresholds():
                level = threshold * limit
                # Warn levels are crossed on reaching them; the limit itself only when spend goes past it.
                if threshold < 1.0:
                    crossed.append((previous < level) & (spent >= level))
                else:
                    crossed.append((previous <= level) & (spent > level))
        any_crossed = pl.any_horizontal(crossed).fill_null(False) if crossed else pl.lit(False)
        return [[*derived, any_crossed.alias(CROSSED)]]

    def exceeded(self, index: int) -> pl.Expr:
        """Span charged to budget `index` in a window past its limit."""
        return pl.col(column(index, "exceeded")).fill_null(False)

    def warned(self) -> pl.Expr:
        """Span past a warn level of a budget that is not audit-only."""
        flags = [pl.col(column(i, "warned")) for i, b in enumerate(self.budgets) if b.mode != "audit_only"]
        return pl.any_horizontal(flags).fill_null(False) if flags else pl.lit(False)

    def tag_columns(self) -> list[list[pl.Expr]]:
        """Layers, after `charge_columns`, of the tags of each span's budget closest to (or
        furthest past) its limit: the one a reader cares about."""
        count = len(self.budgets)
        utilization = [pl.col(column(i, "utilization")) for i in range(count)]
        top = pl.max_horizontal(utilization).alias("_top")
        # The first budget at the top utilization, like a sort keeping budget order on ties.
        best: Then | ChainedThen = pl.when(utilization[0] == pl.col("_top")).then(pl.lit(0, dtype=pl.UInt32))
        for index in range(1, count):
            best = best.when(utilization[index] == pl.col("_top")).then(pl.lit(index, dtype=pl.UInt32))

        def pick(what: str) -> pl.Expr:
            chosen: Then | ChainedThen = pl.when(pl.col("_best") == 0).then(pl.col(column(0, what)))
            for index in range(1, count):
                chosen = chosen.when(pl.col("_best") == index).then(pl.col(column(index, what)))
            return chosen

        def constant(values: list, dtype: PolarsDataType) -> pl.Expr:
            return pl.lit(pl.Series(values, dtype=dtype)).gather(pl.col("_best"))

        limit = constant([float(b.limit_usd) for b in self.budgets], pl.Float64)
        consumed = pick("consumed")
        return [
            [top],
            [best.alias("_best")],
            [
                constant([b.name for b in self.budgets], pl.String).alias(TAGS["name"]),
                constant([b.period for b in self.budgets], pl.String).alias(TAGS["period"]),
                limit.alias(TAGS["allocated"]),
                limit.alias(TAGS["limit"]),
                consumed.round(9).alias(TAGS["consumed"]),
                (limit - consumed).clip(lower_bound=0).round(9).alias(TAGS["remaining"]),
                pick("utilization").round(6).alias(TAGS["utilization"]),
                pick("exceeded").alias(TAGS["exceeded"]),
            ],
        ]

    def events(self, charged: pl.DataFrame) -> list[SpanEventToAdd]:
        """Threshold-crossing events, budget by budget, in span order (rare: a plain loop)."""
        if not charged.get_column(CROSSED).any():
            return []
        rows = charged.filter(pl.col(CROSSED))
        events = []
        row_ids = rows.get_column(ROW).to_list()
        costs = rows.get_column(COST).to_list()
        times = rows.get_column(EVENT_TIME).to_list()
        for index, budget in enumerate(self.budgets):
            limit = float(budget.limit_usd)
            columns = zip(
                row_ids,
                costs,
                times,
                rows.get_column(column(index, "subject")).to_list(),
                rows.get_column(self._label(budget)).to_list(),
                rows.get_column(column(index, "consumed")).to_list(),
                strict=True,
            )
            for row, cost, event_time, subject, label, consumed in columns:
                if consumed is None:
                    continue
                previous = consumed - cost
                for threshold in budget.thresholds():
                    level = threshold * limit
                    if threshold < 1.0:
                        crossed = previous < level and consumed >= level
                    else:
                        crossed = previous <= level and consumed > level
                    if not crossed:
                        continue
                    events.append(alert_event(row, event_time, budget, subject, label, threshold, consumed))
        return events

    def levels(self, charged: pl.DataFrame) -> list[tuple[str, str, float, float]]:
        """(budget, subject, consumed, limit) as last charged in this batch, per budget and subject
        in order of their first charge."""
        out = []
        for index, budget in enumerate(self.budgets):
            subjects = charged.get_column(column(index, "subject"))
            if subjects.null_count() == subjects.len():
                continue
            # Keys keep the order of their first appearance, values are the last one's.
            latest = dict(zip(subjects.to_list(), charged.get_column(column(index, "consumed")).to_list(), strict=True))
            latest.pop(None, None)
            limit = float(budget.limit_usd)
            out += [(budget.name, subject, consumed, limit) for subject, consumed in latest.items()]
        return out

    def exceeded_counts(self, charged: pl.DataFrame) -> list[tuple[str, str, int]]:
        """(budget, mode, spans charged past the limit) per budget."""
        counts = []
        for index, budget in enumerate(self.budgets):
            count = charged.get_column(column(index, "exceeded")).sum()
            if count:
                counts.append((budget.name, budget.mode, int(count)))
        return counts


def _local(epoch_ns: pl.Expr, zone: str) -> pl.Expr:
    """Local date and time in `zone` (UTC stays a plain datetime: same fields, half the work)."""
    utc = pl.from_epoch(epoch_ns, "ns")
    return utc if zone == "UTC" else utc.dt.replace_time_zone("UTC").dt.convert_time_zone(zone)


def _at(start_ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(start_ns / 1e9, tz=dt.UTC)
