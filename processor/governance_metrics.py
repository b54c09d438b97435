"""The product metrics: spend, tokens, operations, latency, policy verdicts and budget levels.

Updated once per batch from grouped sums, not once per span. Label values are capped per label
(beyond `max_values` distinct values they become "other") so a customer id or a model name
typo cannot blow up Prometheus' series count.

`genops_cost_total_usd` is a Gauge that only ever goes up: prometheus_client appends `_total`
to every Counter name, so a Counter could not be exposed under this exact name. In multiprocess
mode it is summed over the worker processes, like a counter.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from processor.attribution import DIMENSIONS

LABEL_CHOICES = (*DIMENSIONS, "model", "provider")
OTHER = "other"
UNKNOWN = "unknown"
# Most label combinations of the per-operation metrics kept as separate series.
MAX_SERIES = 10_000
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


def parse_labels(allow: str, deny: str) -> tuple[str, ...]:
    allowed = [name.strip() for name in allow.split(",") if name.strip()]
    denied = {name.strip() for name in deny.split(",") if name.strip()}
    unknown = sorted((set(allowed) | denied) - set(LABEL_CHOICES))
    if unknown:
        raise ValueError(f"unknown metrics label {unknown[0]!r} (known: {', '.join(LABEL_CHOICES)})")
    return tuple(name for name in LABEL_CHOICES if name in allowed and name not in denied)


class LabelCap:
    """Keeps at most `max_values` distinct values per label; later newcomers map to "other"."""

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def apply(self, label: str, values: pl.Series) -> pl.Series:
        values = values.cast(pl.String).fill_null(UNKNOWN)
        with self._lock:
            seen = self._seen.setdefault(label, set())
            for value in values.unique().sort().to_list():
                if value not in seen and len(seen) < self.max_values:
                    seen.add(value)
            mapping = {value: value for value in seen}
        return values.replace_strict(mapping, default=OTHER, return_dtype=pl.String)


@dataclass(frozen=True)
class _OperationSeries:
    cost: Gauge
    tokens_input: Counter
    tokens_output: Counter
    tokens: Counter
    operations: Counter
    errors: Counter
    latency: Histogram


class GovernanceMetrics:
    def __init__(self, registry: CollectorRegistry, labels: Sequence[str], max_values: int) -> None:
        self.labels = tuple(labels)
        self.cap = LabelCap(max_values)
        names = list(self.labels)
        self.cost = Gauge(
            "genops_cost_total_usd",
            "Priced GenAI spend in USD (only increases).",
            names,
            registry=registry,
            multiprocess_mode="sum",
        )
        self.tokens_input = Counter("genops_tokens_input", "Input tokens of GenAI calls.", names, registry=registry)
        self.tokens_output = Counter("genops_tokens_output", "Output tokens of GenAI calls.", names, registry=registry)
        self.tokens = Counter("genops_tokens", "Input plus output tokens of GenAI calls.", names, registry=registry)
        self.operations = Counter("genops_operations", "GenAI operations (spans).", names, registry=registry)
        self.errors = Counter(
            "genops_operation_errors",
            "GenAI operations that ended in an error (error.type set).",
            names,
            registry=registry,
        )
        self.latency = Histogram(
            "genops_operation_latency_seconds",
            "Duration of GenAI operations (span end minus start).",
            names,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.violations = Counter(
            "genops_policy_violations",
            "Policy and budget violations, per policy.",
            ["policy", "reason_code", "mode"],
            registry=registry,
        )
        self.evaluations = Counter(
            "genops_policy_evaluations", "GenAI spans evaluated, per verdict.", ["result"], registry=registry
        )
        self.utilization = Gauge(
            "genops_budget_utilization_ratio",
            "Consumed / limit of the current budget window, as last seen.",
            ["budget", "subject"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.remaining = Gauge(
            "genops_budget_remaining_usd",
            "USD left in the current budget window (0 when exceeded), as last seen.",
            ["budget", "subject"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.exceeded = Counter(
            "genops_budget_exceeded",
            "Spans charged to a budget window already past its limit.",
            ["budget", "mode"],
            registry=registry,
        )
        self._upper_bounds = pl.Series([*LATENCY_BUCKETS, float("inf")], dtype=pl.Float64)
        # Label combination -> its children of the per-operation metrics. prometheus_client's
        # labels() validates and locks on every call (~20 µs); a batch touches hundreds of combinations.
        self._series: dict[tuple, _OperationSeries] = {}
        self._series_lock = threading.Lock()

    def _operation_series(self, values: tuple) -> _OperationSeries:
        series = self._series.get(values)
        if series is None:
            with self._series_lock:
                if len(self._series) >= MAX_SERIES and values not in self._series:
                    # The per-label caps still allow a large cross product; past this many
                    # combinations new ones are folded into one "other" series.
                    values = (OTHER,) * len(values)
                series = self._series.get(values)
                if series is None:
                    metrics = (
                        self.cost,
                        self.tokens_input,
                        self.tokens_output,
                        self.tokens,
                        self.operations,
                        self.errors,
                        self.latency,
                    )
                    series = _OperationSeries(*(self._child(metric, list(values)) for metric in metrics))
                    self._series[values] = series
        return series

    def capped(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` with each label column mapped through the cardinality cap."""
        return frame.with_columns(self.cap.apply(name, frame[name]).alias(name) for name in self.labels)

    def record_operations(self, ops: pl.DataFrame) -> None:
        """`ops`: one row per GenAI span, label columns, cost, tokens_input/output, error, latency."""
        if ops.height == 0:
            return
        ops = self.capped(ops)
        keys = list(self.labels)
        sums = (
            ops.group_by(keys or pl.lit(0).alias("_all"))
            .agg(
                pl.col("cost").sum(),
                pl.col("tokens_input").sum(),
                pl.col("tokens_output").sum(),
                pl.len().alias("count"),
                pl.col("error").sum().alias("errors"),
            )
            .select(*keys, "cost", "tokens_input", "tokens_output", "count", "errors")
        )
        for *values, cost, tokens_in, tokens_out, count, errors in sums.iter_rows():
            series = self._operation_series(tuple(values))
            series.cost.inc(cost or 0.0)
            series.tokens_input.inc(tokens_in or 0)
            series.tokens_output.inc(tokens_out or 0)
            series.tokens.inc((tokens_in or 0) + (tokens_out or 0))
            series.operations.inc(count)
            if errors:
                series.errors.inc(errors)
        self._observe_latency(ops.filter(pl.col("latency").is_not_null() & (pl.col("latency") >= 0)))

    def _observe_latency(self, ops: pl.DataFrame) -> None:
        if ops.height == 0:
            return
        bucket = self._upper_bounds.search_sorted(ops["latency"].cast(pl.Float64), side="left")
        keys = list(self.labels)
        grouped = (
            ops.with_columns(bucket.cast(pl.Int64).alias("bucket"))
            .group_by([*keys, "bucket"])
            .agg(pl.len().alias("count"), pl.col("latency").sum().alias("sum"))
        )
        for *values, index, count, total in grouped.select(*keys, "bucket", "count", "sum").iter_rows():
            child = self._operation_series(tuple(values)).latency
            # Bulk update of one bucket; prometheus_client has no batch observe. Its internals have
            # been stable for years, but fall back to per-value observe if they ever change.
            if hasattr(child, "_buckets") and hasattr(child, "_sum"):
                child._buckets[index].inc(count)
                child._sum.inc(total)
            else:
                for _ in range(count):
                    child.observe(total / count)

    def record_verdicts(self, results: pl.Series, violations: Sequence[tuple[str, str, str, int]]) -> None:
        for result, count in results.drop_nulls().value_counts().iter_rows():
            self.evaluations.labels(result=result).inc(count)
        for policy, reason_code, mode, count in violations:
            if count:
                self.violations.labels(policy=policy, reason_code=reason_code, mode=mode).inc(count)

    def record_budgets(self, charges: pl.DataFrame) -> None:
        """`charges`: budgets.BudgetOutcome.charges."""
        if charges.height == 0:
            return
        latest = charges.group_by("name", "subject", maintain_order=True).agg(
            pl.col("consumed").last(), pl.col("limit").last()
        )
        latest = latest.with_columns(self.cap.apply("budget_subject", latest["subject"]).alias("subject"))
        for name, subject, consumed, limit in latest.iter_rows():
            self.utilization.labels(budget=name, subject=subject).set(consumed / limit)
            self.remaining.labels(budget=name, subject=subject).set(max(limit - consumed, 0.0))
        over = charges.filter("exceeded").group_by("name", "mode").len()
        for name, mode, count in over.iter_rows():
            self.exceeded.labels(budget=name, mode=mode).inc(count)

    def _child(self, metric, values: list) -> object:
        return metric.labels(*values) if self.labels else metric
