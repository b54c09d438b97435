"""The numbers a span reports that cost and budgets read, checked one span at a time.

An SDK may send anything: a cost of NaN, `inf`, -3 or "abc", a token count of -1, an end time
past 2^63 ns (it does not fit the signed columns the queries compute in) or before its start. Such
a value is ignored for its own span (as if the span had not reported it) and counted by reason in
`genops_invalid_values_total`; every other span of the batch is priced, charged and checked as if
the bad one were not there.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import ClassVar

import polars as pl
from prometheus_client import CollectorRegistry, Counter

from processor.core.decode import START_TIME, TelemetryBatch
from processor.core.genai_attributes import TOKEN_SOURCES

COST = "genops.cost.total"
# Where SDKs report the cost of a call, in precedence order: ours, OpenLIT/Laminar's, the proposed
# GenAI convention, OpenInference's. The first usable one is the span's SDK cost, read as ours.
SDK_COST_KEYS = (COST, "gen_ai.usage.cost", "gen_ai.usage.cost.amount", "llm.cost.total")
END_TIME = "_end_time_unix_nano"
# batch.derived keys: the batch's times and cost were checked (and replaced by their clean
# columns); the SDK costs as checked (a CostCheck), when the batch had any.
_CHECKED = "span_values.checked"
_RECORDED = "span_values.recorded"
SDK_COSTS = "span_values.sdk_costs"
INT64_MAX = 2**63 - 1

# Metric label values of `field` (fixed names: never a value a sender chose).
FIELD_COST = "cost"
FIELD_START = "start_time"
FIELD_END = "end_time"
FIELD_TOKENS = "tokens"


@dataclass(frozen=True)
class InvalidCount:
    """Spans of a batch whose `field` was ignored for `reason`."""

    field: str
    reason: str
    count: int


@dataclass(frozen=True)
class CostCheck:
    """The SDK's cost per span (the first usable of SDK_COST_KEYS): the usable amount (Float64,
    null when none), whether a value was sent and none was usable, and whether the amount is to be
    written as genops.cost.total (it came as text, or under another key: a stage writing the cost
    then writes the number, so text never goes out as the cost and every reader finds it there)."""

    usable: pl.Series
    ignored: pl.Series
    was_text: bool
    rewrite: pl.Series | None = None  # Boolean per span; None: was_text says for every span


class InvalidValueMetrics:
    """One counter per registry: the cost and the policy stage both record into it."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, InvalidValueMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.invalid = Counter(
            "genops_invalid_values",
            "Span values ignored for their own span (the rest of the batch is processed as usual).",
            ["field", "reason"],
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry) -> InvalidValueMetrics:
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls._by_registry[registry] = cls(registry)
        return found

    def record(self, batch: TelemetryBatch) -> None:
        """Counts what `check_batch` ignored in `batch`, once per batch however many stages ask."""
        found = batch.derived.get(_CHECKED)
        recorded = batch.derived.setdefault(_RECORDED, set())
        if not isinstance(found, list) or not isinstance(recorded, set) or id(self) in recorded:
            return
        recorded.add(id(self))
        for item in found:
            self.invalid.labels(item.field, item.reason).inc(item.count)


def _counts(field: str, reasons: pl.Series) -> list[InvalidCount]:
    if reasons.null_count() == reasons.len():
        return []
    counted = reasons.value_counts(sort=True).iter_rows()
    return [InvalidCount(field, reason, count) for reason, count in counted if reason]


def clean_costs(column: pl.Series | None, rows: int) -> tuple[pl.Series, pl.Series]:
    """USD per span as Float64: null where the span sent none, or one that is not a finite number
    at or above zero, with the reason it was ignored. Numbers sent as strings are read (surrounding
    blanks allowed)."""
    if column is None or column.dtype == pl.Null:
        return pl.Series(COST, [None] * rows, dtype=pl.Float64), pl.Series("reason", [None] * rows, dtype=pl.String)
    if column.dtype == pl.String:
        values = column.str.strip_chars().cast(pl.Float64, strict=False)
    elif column.dtype.is_numeric():
        values = column.cast(pl.Float64)
    else:  # bytes, booleans, lists: not an amount
        values = pl.Series([None] * rows, dtype=pl.Float64)
    frame = pl.DataFrame({"raw_present": column.is_not_null(), "value": values})
    value = pl.col("value")
    reason = (
        pl.when(pl.col("raw_present") & value.is_null())
        .then(pl.lit("not_a_number"))
        .when(value.is_nan())
        .then(pl.lit("nan"))
        .when(value.is_infinite())
        .then(pl.lit("infinite"))
        .when(value < 0)
        .then(pl.lit("negative"))
    )
    out = frame.select(pl.when(reason.is_null()).then(value).alias(COST), reason.alias("reason"))
    return out.get_column(COST), out.get_column("reason")


def clean_times(start: pl.Series, end: pl.Series | None) -> tuple[pl.Series, pl.Series | None, list[InvalidCount]]:
    """Start and end as Int64 ns. A start of 0 or past i64 reads as 0 (none: the span is charged
    when it arrives); an end of 0, past i64 or before a valid start reads as null (none)."""
    if _all_valid(start, end):
        # What the queries below give for such columns, without planning them (the usual batch).
        return start.alias(START_TIME), None if end is None else end.alias(END_TIME), []
    start_ok = _in_range(start)
    frame = pl.DataFrame({"start": start_ok, "start_raw": start})
    raw = pl.col("start_raw")
    start_reason = (
        pl.when(raw.is_not_null() & pl.col("start").is_null())
        .then(pl.lit("out_of_range"))
        .when(pl.col("start") == 0)
        .then(pl.lit("zero"))
    )
    columns = [pl.col("start").fill_null(0).alias(START_TIME), start_reason.alias("start_reason")]
    if end is not None:
        frame = frame.with_columns(end=_in_range(end), end_raw=end)
        end_value = pl.col("end")
        end_reason = (
            pl.when(pl.col("end_raw").is_not_null() & end_value.is_null())
            .then(pl.lit("out_of_range"))
            .when(end_value == 0)
            .then(pl.lit("zero"))
            .when((pl.col("start") > 0) & (end_value < pl.col("start")))
            .then(pl.lit("before_start"))
        )
        columns += [pl.when(end_reason.is_null()).then(end_value).alias(END_TIME), end_reason.alias("end_reason")]
    out = frame.select(columns)
    found = _counts(FIELD_START, out.get_column("start_reason"))
    if end is None:
        return out.get_column(START_TIME), None, found
    found += _counts(FIELD_END, out.get_column("end_reason"))
    return out.get_column(START_TIME), out.get_column(END_TIME), found


def _all_valid(start: pl.Series, end: pl.Series | None) -> bool:
    """Unsigned times that `clean_times` leaves as they are: every start and end within 1..i64,
    no end before its start; no start missing (it would read as 0), an end missing only where
    others are not."""
    columns = (start,) if end is None else (start, end)
    if any(column.dtype != pl.UInt64 or column.null_count() == len(column) for column in columns):
        return False
    if start.null_count():
        return False
    if any(column.min() < 1 or column.max() > INT64_MAX for column in columns):  # type: ignore[operator]
        return False
    return end is None or not (end < start).any()


def _in_range(times: pl.Series) -> pl.Series:
    """Int64 times, null where a value is negative or does not fit."""
    if times.dtype == pl.UInt64:
        return pl.Series(times.name, times.to_frame().select(pl.when(pl.first() <= INT64_MAX).then(pl.first())))
    values = times.cast(pl.Int64, strict=False)
    return values.to_frame().select(pl.when(pl.first() >= 0).then(pl.first())).to_series()


def invalid_tokens(batch: TelemetryBatch) -> list[InvalidCount]:
    """Token counts the normalised columns ignore (genai_attributes.normalize reads them as
    absent), counted: negative, not a number, or not a whole count that fits."""
    found: dict[str, int] = {}
    for keys in TOKEN_SOURCES.values():
        for key in keys:
            column = batch.column_series(key)
            if column is None:
                continue
            for item in _token_reasons(column):
                found[item.reason] = found.get(item.reason, 0) + item.count
    return [InvalidCount(FIELD_TOKENS, reason, count) for reason, count in found.items()]


def _token_reasons(column: pl.Series) -> list[InvalidCount]:
    if column.dtype.is_integer():
        negative = int((column < 0).sum())
        return [InvalidCount(FIELD_TOKENS, "negative", negative)] if negative else []
    if column.dtype == pl.String:
        values = column.str.strip_chars().cast(pl.Float64, strict=False)
    elif column.dtype.is_float():
        values = column.cast(pl.Float64)
    else:
        values = pl.Series([None] * len(column), dtype=pl.Float64)
    frame = pl.DataFrame({"present": column.is_not_null(), "value": values})
    value = pl.col("value")
    reason = (
        pl.when(pl.col("present") & value.is_null())
        .then(pl.lit("not_a_number"))
        .when(value.is_nan())
        .then(pl.lit("nan"))
        .when(value.is_infinite())
        .then(pl.lit("infinite"))
        .when(value < 0)
        .then(pl.lit("negative"))
        .when(value >= float(INT64_MAX))
        .then(pl.lit("out_of_range"))
    )
    return _counts(FIELD_TOKENS, frame.select(reason).to_series())


def _sdk_costs(sent: dict[str, pl.Series], rows: int) -> tuple[CostCheck, list[InvalidCount]]:
    """The first usable SDK cost per span, and every value ignored (counted per key sent)."""
    usable: list[pl.Series] = []
    ignored: list[pl.Series] = []
    invalid: list[InvalidCount] = []
    for column in sent.values():
        costs, reasons = clean_costs(column, rows)
        usable.append(costs.rename(f"usable{len(usable)}"))
        ignored.append(reasons.is_not_null().rename(f"ignored{len(ignored)}"))
        invalid += _counts(FIELD_COST, reasons)
    if list(sent) == [COST]:
        text = sent[COST].dtype == pl.String
        return CostCheck(usable[0], ignored[0], text), invalid
    frame = pl.DataFrame(usable)
    amount = frame.select(pl.coalesce(pl.all()).alias(COST)).to_series()
    own = frame.get_column("usable0") if COST in sent else pl.Series([None] * rows, dtype=pl.Float64)
    own_text = COST in sent and sent[COST].dtype == pl.String
    # Written back where the amount is not already genops.cost.total as a number.
    rewrite = amount.is_not_null() & (own.is_null() | own_text)
    nothing_usable = amount.is_null() & pl.DataFrame(ignored).select(pl.any_horizontal(pl.all())).to_series()
    return CostCheck(amount, nothing_usable, bool(rewrite.any()), rewrite), invalid


def check_batch(batch: TelemetryBatch) -> list[InvalidCount]:
    """Replaces the batch's start, end and cost columns by their clean ones (once per batch), so
    every reader after it (native or polars) sees only values it can compute with. Returns what
    was ignored."""
    done = batch.derived.get(_CHECKED)
    if isinstance(done, list):
        return done
    found: list[InvalidCount] = []
    rows = len(batch)
    start = batch.column_series(START_TIME)
    if start is not None:
        end = batch.column_series(END_TIME) if batch.has_values(END_TIME) else None
        clean_start, clean_end, times = clean_times(start, end)
        found += times
        if times:
            batch.set_column(START_TIME, clean_start)
            if clean_end is not None:
                batch.set_column(END_TIME, clean_end)
    sent = {key: column for key in SDK_COST_KEYS if (column := batch.column_series(key)) is not None}
    if sent:
        check, invalid = _sdk_costs(sent, rows)
        found += invalid
        if invalid or check.was_text:
            batch.set_column(COST, check.usable)
        batch.derived[SDK_COSTS] = check
    found += invalid_tokens(batch)
    batch.derived[_CHECKED] = found
    return found
