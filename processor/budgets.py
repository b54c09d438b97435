"""Charge a batch's spend to budget windows and find the exact spans that cross a threshold.

Each priced span is charged to every budget it falls under, in the window holding its start time
(in the budget's timezone). The batch total per window is added to the store in one atomic step;
the store answers with the total after the batch, so the amount before it is known even when
other pods charge the same window concurrently. A running sum in span order then gives each
span's consumed amount, and a threshold is crossed on the span where that running amount first
reaches it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from processor.budget_policy_file import PERIOD_LABEL, Budget
from processor.budget_state import BudgetStore
from processor.decode import ROW, START_TIME
from processor.pipeline import SpanEventToAdd

COST = "genops.cost.total"
END_TIME = "_end_time_unix_nano"
EVENT_THRESHOLD = "genops.budget.threshold_crossed"
EVENT_EXCEEDED = "genops.budget.exceeded"
# Old windows are kept a while after they close so late spans and the status API still see them.
KEEP_CLOSED_WINDOW_SECONDS = 7 * 86400

TAGS = {
    "name": "genops.budget.name",
    "period": "genops.budget.period",
    "limit": "genops.budget.limit",
    "consumed": "genops.budget.consumed",
    "remaining": "genops.budget.remaining",
    "utilization": "genops.budget.utilization",
    "exceeded": "genops.budget.exceeded",
}

CHARGE_SCHEMA = {
    ROW: pl.UInt32,
    "budget": pl.UInt32,
    "name": pl.String,
    "period": pl.String,
    "mode": pl.String,
    "subject": pl.String,
    "label": pl.String,
    "cost": pl.Float64,
    "limit": pl.Float64,
    "warn_from": pl.Float64,
    "thresholds": pl.List(pl.Float64),
    "start": pl.Int64,
    "event_time": pl.Int64,
}


@dataclass
class BudgetOutcome:
    # One row per (span, budget) charged: running consumed, utilization, exceeded, warned, mode.
    charges: pl.DataFrame
    # One row per charged span: the tags of its most used budget.
    tags: pl.DataFrame
    events: list[SpanEventToAdd] = field(default_factory=list)
    # The batch was applied before (a retry): same figures, but nothing was added.
    repeated: bool = False


def evaluate(budgets: Sequence[Budget], spans: pl.DataFrame, store: BudgetStore, fingerprint: str) -> BudgetOutcome:
    """`spans`: _row, the cost column, one column per attribution dimension, start/end times.

    The store is called even when nothing is charged, to record the fingerprint: `repeated` then
    tells the caller this batch was seen before (a retry), so its spend is not counted twice.
    """
    charges = _charges(budgets, spans)
    if charges.height == 0:
        applied = store.apply(fingerprint, {}, {})
        return BudgetOutcome(charges, pl.DataFrame(), repeated=applied.repeated)
    charges = charges.with_columns(pl.concat_str("name", "subject", "label", separator="|").alias("key"))
    windows = charges.group_by("key", maintain_order=True).agg(
        pl.col("cost").sum().alias("increment"), pl.col("budget").first(), pl.col("start").first()
    )
    now = int(time.time())
    # A late span's window may have closed long ago: keep it from now on, not from its end.
    expires = {
        key: max(int(budgets[index].window(_at(start))[2].timestamp()), now) + KEEP_CLOSED_WINDOW_SECONDS
        for key, index, start in windows.select("key", "budget", "start").iter_rows()
    }
    increments = dict(zip(windows["key"].to_list(), windows["increment"].to_list(), strict=True))
    applied = store.apply(fingerprint, increments, expires)
    before = windows.select(
        "key",
        (pl.col("key").replace_strict(applied.totals, return_dtype=pl.Float64) - pl.col("increment")).alias("before"),
    )
    running = pl.col("before") + pl.col("cost").cum_sum().over("key")
    charges = (
        charges.join(before, on="key", how="left", maintain_order="left")
        .with_columns(running.alias("consumed"))
        .with_columns(
            (pl.col("consumed") - pl.col("cost")).alias("previous"),
            (pl.col("consumed") / pl.col("limit")).alias("utilization"),
            (pl.col("consumed") > pl.col("limit")).alias("exceeded"),
        )
        .with_columns((pl.col("utilization") >= pl.col("warn_from")).alias("warned"))
    )
    return BudgetOutcome(charges, _tags(charges), _crossings(charges), applied.repeated)


def _charges(budgets: Sequence[Budget], spans: pl.DataFrame) -> pl.DataFrame:
    priced = spans.filter(pl.col(COST).is_not_null() & (pl.col(COST) > 0))
    if not budgets or priced.height == 0:
        return pl.DataFrame(schema=CHARGE_SCHEMA)
    now_ns = time.time_ns()
    # A span without a start time (0) is charged to the window it arrives in.
    start = pl.when(pl.col(START_TIME) > 0).then(pl.col(START_TIME).cast(pl.Int64)).otherwise(pl.lit(now_ns))
    end = pl.col(END_TIME).cast(pl.Int64) if END_TIME in spans.columns else pl.lit(None, dtype=pl.Int64)
    parts = []
    for index, budget in enumerate(budgets):
        subject = pl.lit("*") if budget.dimension is None else pl.col(budget.dimension)
        applies = subject.is_not_null()
        if budget.value is not None:
            applies &= subject == budget.value
        local = pl.from_epoch(start, "ns").dt.replace_time_zone("UTC").dt.convert_time_zone(budget.timezone)
        parts.append(
            priced.filter(applies).select(
                pl.col(ROW).cast(pl.UInt32),
                pl.lit(index, dtype=pl.UInt32).alias("budget"),
                pl.lit(budget.name).alias("name"),
                pl.lit(budget.period).alias("period"),
                pl.lit(budget.mode).alias("mode"),
                subject.cast(pl.String).alias("subject"),
                local.dt.strftime(PERIOD_LABEL[budget.period]).alias("label"),
                pl.col(COST).alias("cost"),
                pl.lit(budget.limit_usd, dtype=pl.Float64).alias("limit"),
                pl.lit(min(budget.warn_at, default=1.0), dtype=pl.Float64).alias("warn_from"),
                pl.lit(list(budget.thresholds()), dtype=pl.List(pl.Float64)).alias("thresholds"),
                start.alias("start"),
                pl.coalesce(end, start).alias("event_time"),
            )
        )
    return pl.concat(parts)


def _at(start_ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(start_ns / 1e9, tz=dt.UTC)


def _tags(charges: pl.DataFrame) -> pl.DataFrame:
    """Per span, the budget closest to (or furthest past) its limit: the one a reader cares about."""
    top = charges.sort([ROW, "utilization"], descending=[False, True]).unique(ROW, keep="first", maintain_order=True)
    return top.select(
        ROW,
        pl.col("name").alias(TAGS["name"]),
        pl.col("period").alias(TAGS["period"]),
        pl.col("limit").alias(TAGS["limit"]),
        pl.col("consumed").round(9).alias(TAGS["consumed"]),
        (pl.col("limit") - pl.col("consumed")).clip(lower_bound=0).round(9).alias(TAGS["remaining"]),
        pl.col("utilization").round(6).alias(TAGS["utilization"]),
        pl.col("exceeded").alias(TAGS["exceeded"]),
    )


def _crossings(charges: pl.DataFrame) -> list[SpanEventToAdd]:
    level = pl.col("thresholds") * pl.col("limit")
    # Warn levels are crossed on reaching them; the limit itself only when spend goes past it.
    crossed = (
        pl.when(pl.col("thresholds") < 1.0)
        .then((pl.col("previous") < level) & (pl.col("consumed") >= level))
        .otherwise((pl.col("previous") <= level) & (pl.col("consumed") > level))
    )
    rows = charges.explode("thresholds").filter(crossed)
    return [
        SpanEventToAdd(
            row=row,
            name=EVENT_EXCEEDED if threshold >= 1.0 else EVENT_THRESHOLD,
            time_unix_nano=event_time,
            attributes={
                TAGS["name"]: name,
                "genops.budget.subject": subject,
                "genops.budget.window": label,
                "genops.budget.threshold": threshold,
                TAGS["limit"]: limit,
                TAGS["consumed"]: round(consumed, 9),
                "genops.budget.mode": mode,
            },
        )
        for row, name, subject, label, threshold, limit, consumed, mode, event_time in rows.select(
            ROW, "name", "subject", "label", "thresholds", "limit", "consumed", "mode", "event_time"
        ).iter_rows()
    ]
