"""Burn-rate projection of a budget window: when its limit is reached at the window's rate so far.

The rate is the window's consumed amount over the time since the window opened; the projection
is the remaining amount at that rate. A window that would not reach its limit before it closes
(the budget starts over then) projects +Inf, as does one with nothing spent; one at or past its
limit projects 0.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping, Sequence

import polars as pl

from processor.stages.policy.policy_file import Budget

FORECAST_METRIC = "genops_budget_forecast_exhaustion_seconds"
FORECAST_TAG = "genops.budget.forecast"
# A window opened less than this long ago gives no rate worth projecting from.
MIN_ELAPSED_SECONDS = 1.0


def now_utc() -> dt.datetime:
    """The clock the budget charges use (time.time_ns), as an aware UTC time."""
    return dt.datetime.fromtimestamp(time.time_ns() / 1e9, dt.UTC)


def exhaustion_seconds(consumed: float, limit: float, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> float:
    if consumed >= limit:
        return 0.0
    if consumed <= 0.0 or not math.isfinite(consumed):
        return math.inf
    elapsed = max((now - start).total_seconds(), MIN_ELAPSED_SECONDS)
    seconds = (limit - consumed) * elapsed / consumed
    return seconds if seconds <= (end - now).total_seconds() else math.inf


def level_forecasts(
    budgets: Mapping[str, Budget], levels: Sequence[tuple[str, str, float, float]], now: dt.datetime
) -> list[float]:
    """Per (budget, subject, consumed, limit) level, seconds to exhaustion in the current window."""
    out = []
    # A budget has a level per subject, all in the one window holding `now`.
    windows: dict[str, tuple[dt.datetime, dt.datetime]] = {}
    for name, _, consumed, limit in levels:
        budget = budgets.get(name)
        if budget is None:
            out.append(math.inf)
            continue
        window = windows.get(name)
        if window is None:
            _, start, end = budget.window(now)
            window = windows[name] = (start, end)
        out.append(exhaustion_seconds(consumed, limit, *window, now))
    return out


def forecast_time(seconds: float, now: dt.datetime) -> str | None:
    """The span tag: when the budget runs out (ISO 8601, UTC), None when not in this window."""
    if not math.isfinite(seconds):
        return None
    return (now + dt.timedelta(seconds=seconds)).astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def forecast_column(
    names: pl.Series, consumed: pl.Series, limits: pl.Series, budgets: Mapping[str, Budget], now: dt.datetime
) -> pl.Series:
    """Per span, FORECAST_TAG of the budget its tags name (the one closest to its limit), from
    the consumed amount after the span: `exhaustion_seconds` as a time, null where it is +Inf."""
    elapsed, left = _windows(names, budgets, now)
    found = _forecast_rows(names, consumed, limits, elapsed, left, now)
    if found is not None:
        return found
    return _forecast_query(names, consumed, limits, elapsed, left, now)


def _windows(
    names: pl.Series, budgets: Mapping[str, Budget], now: dt.datetime
) -> tuple[dict[str, float], dict[str, float]]:
    """Per budget named: seconds since its window opened (at least MIN_ELAPSED_SECONDS), seconds left."""
    elapsed: dict[str, float] = {}
    left: dict[str, float] = {}
    for name in names.drop_nulls().unique().to_list():
        budget = budgets.get(name)
        if budget is not None:
            elapsed[name], left[name] = window_times(budget, now)
    return elapsed, left


def window_times(budget: Budget, now: dt.datetime) -> tuple[float, float]:
    """(seconds since `budget`'s window holding `now` opened, at least MIN_ELAPSED_SECONDS; seconds left in it)."""
    _, start, end = budget.window(now)
    return max((now - start).total_seconds(), MIN_ELAPSED_SECONDS), (end - now).total_seconds()


def _forecast_rows(
    names: pl.Series,
    consumed: pl.Series,
    limits: pl.Series,
    elapsed: dict[str, float],
    left: dict[str, float],
    now: dt.datetime,
) -> pl.Series | None:
    """`_forecast_query`'s column computed row by row, the same float operations in the same
    order: planning that query cost more than this loop over a batch's ~400 tagged spans. None
    for values it leaves to the query (non-finite amounts, whose comparisons polars orders
    differently from Python)."""
    if names.dtype != pl.String or consumed.dtype != pl.Float64 or limits.dtype != pl.Float64:
        return None
    now_ns = int(now.timestamp() * 1e9)
    # Forecasts repeat to the second across spans of a budget.
    texts: dict[int, str] = {}
    out: list[str | None] = []
    for name, c, limit in zip(names.to_list(), consumed.to_list(), limits.to_list(), strict=True):
        window_left = left.get(name) if name is not None else None
        if window_left is None or c is None or limit is None:
            out.append(None)
            continue
        if not (math.isfinite(c) and math.isfinite(limit)):
            return None
        if c >= limit:
            seconds = 0.0
        elif c > 0:
            seconds = (limit - c) * elapsed[name] / c
        else:
            out.append(None)
            continue
        if not seconds <= window_left:
            out.append(None)
            continue
        # As the query: nanoseconds truncated toward zero, then the time floored to its second.
        second = (now_ns + int(seconds * 1e9)) // 1_000_000_000
        text = texts.get(second)
        if text is None:
            text = texts[second] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        out.append(text)
    return pl.Series(FORECAST_TAG, out, dtype=pl.String)


def _forecast_query(
    names: pl.Series,
    consumed: pl.Series,
    limits: pl.Series,
    elapsed: dict[str, float],
    left: dict[str, float],
    now: dt.datetime,
) -> pl.Series:
    frame = pl.DataFrame([names.alias("n"), consumed.alias("c"), limits.alias("l")])
    c, limit = pl.col("c"), pl.col("l")
    window_elapsed = pl.col("n").replace_strict(elapsed, default=None, return_dtype=pl.Float64)
    window_left = pl.col("n").replace_strict(left, default=None, return_dtype=pl.Float64)
    at_rate = pl.when(c >= limit).then(pl.lit(0.0)).when(c > 0).then((limit - c) * window_elapsed / c)
    # Past the window's end the window resets first: no exhaustion to forecast.
    seconds = pl.when(at_rate <= window_left).then(at_rate)
    now_ns = int(now.timestamp() * 1e9)
    at = pl.from_epoch(pl.lit(now_ns, dtype=pl.Int64) + (seconds * 1e9).cast(pl.Int64), "ns")
    return frame.select(at.dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias(FORECAST_TAG)).to_series()
