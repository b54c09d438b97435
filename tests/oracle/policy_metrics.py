"""The per-operation metrics of a batch summed by polars: the differential oracle of the native
plan's operation groups (processor/native/src/stages/policy.rs `OperationGroups`), which
tests/oracle/policy.py records into the stage's GovernanceMetrics."""

from __future__ import annotations

import bisect
import collections

import polars as pl

from processor.stages.policy.budgets import ENGINE, OPTIMIZATIONS
from processor.stages.policy.metrics import LATENCY_BUCKETS, OTHER, UNKNOWN, GovernanceMetrics

# The aggregations of `operation_sums`, per cost column name (built once).
_SUMS_OF: dict[str, list[pl.Expr]] = {}


def operation_sums(
    metrics: GovernanceMetrics, spans: pl.LazyFrame, cost: str, renamed: dict[str, dict[str, str]] | None = None
) -> pl.LazyFrame:
    """Per label combination, sums over `spans` (the evaluated spans).

    `spans`: label columns, `cost`, tokens_input/output, error, latency. With `renamed` None
    the label values are grouped as they are (null is a group of its own: `record_operations`
    reads it as "unknown"), which is what a batch mostly needs and costs a fraction of
    preparing the keys. Otherwise null is "unknown" and the values in `renamed` take the label
    they are published as (redacted, or "other" past the cap) before grouping.
    """
    if renamed is None:
        return spans.group_by(_label_columns(metrics)).agg(_sums(cost))
    keys = []
    for name in metrics.labels:
        key = pl.col(name).cast(pl.String).fill_null(UNKNOWN)
        if renamed.get(name):
            key = key.replace(renamed[name])
        keys.append(key.alias(name))
    return spans.group_by(keys or _label_columns(metrics)).agg(_sums(cost))


def _label_columns(metrics: GovernanceMetrics) -> list[pl.Expr]:
    return [pl.col(name) for name in metrics.labels] or [pl.lit(0).alias("_all")]


def _sums(cost: str) -> list[pl.Expr]:
    found = _SUMS_OF.get(cost)
    if found is not None:
        return found
    latency = pl.col("latency")
    found = _SUMS_OF[cost] = [
        pl.col(cost).sum().alias("_cost"),
        pl.col("tokens_input").sum(),
        pl.col("tokens_output").sum(),
        pl.len().alias("_count"),
        pl.col("error").sum().alias("_errors"),
        # (A null latency compares as null: filtered out too.)
        latency.filter(latency >= 0).alias("_latency"),
    ]
    return found


def record_operations(metrics: GovernanceMetrics, sums: pl.DataFrame, spans: pl.LazyFrame, cost: str) -> None:
    """`sums`: `operation_sums(spans, cost)` of one batch."""
    if sums.height == 0:
        return
    labels = []
    # A value "unknown" beside unlabelled spans: grouped apart, they must be one series.
    merged = False
    for name in metrics.labels:
        column = sums.get_column(name)
        values = column.to_list()
        if column.null_count():
            merged = merged or UNKNOWN in values
            values = [UNKNOWN if value is None else value for value in values]
        labels.append(values)
    renamed = {}
    for name, values in zip(metrics.labels, labels, strict=True):
        published = dict(zip(values, metrics.cap.published(name, values), strict=True))
        refused = metrics.cap.refused(name, set(published.values()))
        final = {value: OTHER if label in refused else label for value, label in published.items()}
        renamed[name] = {value: label for value, label in final.items() if value != label}
    if any(renamed.values()) or merged:
        # Some values are published otherwise ("other", redacted, or "unknown"): their spans are
        # summed together, as one series.
        sums = operation_sums(metrics, spans, cost, renamed).collect(engine=ENGINE, optimizations=OPTIMIZATIONS)
        labels = [sums.get_column(name).to_list() for name in metrics.labels]
    columns = [
        sums.get_column(name).to_list()
        for name in ("_cost", "tokens_input", "tokens_output", "_count", "_errors", "_latency")
    ]
    keys = zip(*labels, strict=True) if labels else [()] * sums.height
    bucket, bounds = bisect.bisect_left, LATENCY_BUCKETS
    rows = []
    for values, spent, tokens_in, tokens_out, count, errors, latencies in zip(keys, *columns, strict=True):
        hits = None
        if latencies:
            # The bucket whose upper bound is the first >= the value, as observe() picks it.
            hits = sorted(collections.Counter(bucket(bounds, latency) for latency in latencies).items())
        rows.append((values, spent, tokens_in, tokens_out, count, errors, hits, sum(latencies or ()), latencies))
    with metrics._update_lock:
        metrics._add_groups(rows)
