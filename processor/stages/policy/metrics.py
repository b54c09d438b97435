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
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from processor.core.attribution import DIMENSIONS
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.stages.policy.budget_forecast import FORECAST_METRIC
from processor.stages.policy.operation_totals import operation_totals
from processor.stages.policy.rules import REASON_CODES
from processor.stages.policy.seed_metrics import SeedMetrics

LABEL_CHOICES = (*DIMENSIONS, "model", "provider")
OTHER = "other"
UNKNOWN = "unknown"
# Most label combinations of the per-operation metrics kept as separate series.
MAX_SERIES = 10_000
# A check's policy_type label from its reason code (one code per check type).
POLICY_TYPES = {code: kind for kind, code in REASON_CODES.items()}
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


def parse_labels(allow: str, deny: str) -> tuple[str, ...]:
    allowed = [name.strip() for name in allow.split(",") if name.strip()]
    denied = {name.strip() for name in deny.split(",") if name.strip()}
    unknown = sorted((set(allowed) | denied) - set(LABEL_CHOICES))
    if unknown:
        raise ValueError(f"unknown metrics label {unknown[0]!r} (known: {', '.join(LABEL_CHOICES)})")
    return tuple(name for name in LABEL_CHOICES if name in allowed and name not in denied)


class LabelCap:
    """Keeps at most `max_values` distinct values per label; later newcomers map to "other".

    Label values are made from span values before redaction: each is published as the redaction
    rules leave a `genops.<label>` attribute (an email as team masked as it is in the trace) and cut
    to `LABEL_MAX_BYTES` (see processor/core/outbound.py), before it is counted against the cap.
    """

    def __init__(self, max_values: int, outbound: OutboundRedaction = NO_REDACTION) -> None:
        self.max_values = max_values
        self.outbound = outbound
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def published(self, label: str, values: list[str]) -> list[str]:
        """`values` as label values may show them (redacted, capped in length)."""
        key = "genops." + label
        publish = self.outbound.label
        return [publish(key, value) for value in values]

    def refused(self, label: str, values: set[str]) -> set[str]:
        """Admits `values` (smallest first) while there is room; returns those mapped to "other"."""
        seen = self._seen.get(label)
        if seen is not None and values <= seen:  # the common case: nothing new
            return set()
        with self._lock:
            seen = self._seen.setdefault(label, set())
            for value in sorted(values - seen):
                if len(seen) >= self.max_values:
                    break
                seen.add(value)
            return values - seen

    def map(self, label: str, values: list[str | None]) -> list[str]:
        """`values` published, with null as "unknown" and values beyond the cap as "other"."""
        filled = self.published(label, [UNKNOWN if value is None else value for value in values])
        refused = self.refused(label, set(filled))
        return [OTHER if value in refused else value for value in filled] if refused else filled


@dataclass(frozen=True)
class _OperationSeries:
    # What `inc` is called on: the children's value holders (see `_incrementer`).
    cost: Any
    tokens_input: Any
    tokens_output: Any
    tokens: Any
    operations: Any
    errors: Any
    latency: Histogram
    # The histogram's bucket and sum value holders, or None to fall back to `observe`.
    latency_buckets: list | None
    latency_sum: Any
    # The series' key in `GovernanceMetrics._totals`, or None: its values are not of a kind the
    # store holds (no native extension in multiprocess mode) and are changed through `inc`.
    total: Any = None


def _incrementer(child: Any) -> Any:
    """The value holder behind a Counter or non-"mostrecent" Gauge child: its `inc` skips the
    metric's per-call checks (~1 µs each; a batch makes thousands of increments). prometheus_client
    keeps it in `_value` for every value class (in-process and multiprocess); if that ever
    changes, the child itself is used."""
    value = getattr(child, "_value", None)
    return value if callable(getattr(value, "inc", None)) else child


class GovernanceMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        labels: Sequence[str],
        max_values: int,
        outbound: OutboundRedaction = NO_REDACTION,
    ) -> None:
        self.labels = tuple(labels)
        self.cap = LabelCap(max_values, outbound)
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
        self.forecast = Gauge(
            FORECAST_METRIC,
            "Seconds until the budget window's limit at its rate so far; +Inf: not within this window.",
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
        # Label combination -> its children of the per-operation metrics. prometheus_client's
        # labels() validates and locks on every call (~20 µs); a batch touches hundreds of combinations.
        self._series: dict[tuple, _OperationSeries] = {}
        # Where the in-process series keep their totals, and label combination -> a series' key
        # there (combinations folded into "other" included): what the loop over a batch's sums reads.
        self._totals = operation_totals(len(self.labels))
        self._direct: dict[tuple, Any] = {}
        self._series_lock = threading.Lock()
        self._update_lock = threading.Lock()
        # The children of the per-verdict, per-policy and per-budget metrics, likewise.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.seed = SeedMetrics(registry, self.cap)
        # Whether the batch this thread is on was counted (record_verdicts: not a retried batch).
        self._batch = threading.local()

    def begin_batch(self) -> None:
        self._batch.counted = False

    def batch_counted(self) -> bool:
        """Whether `record_verdicts` ran since `begin_batch` on this thread: the batch is counted
        (a retried one is not, on either path)."""
        return getattr(self._batch, "counted", False)

    def close(self) -> None:
        """Writes out what the totals store still holds back (multiprocess mode)."""
        self._totals.close()

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
                    children = [self._child(metric, list(values)) for metric in metrics]
                    latency = children[-1]
                    # Bulk update of the histogram's buckets; prometheus_client has no batch observe.
                    # Its internals have been stable for years, but fall back to observe if they change.
                    bulk = hasattr(latency, "_buckets") and hasattr(latency, "_sum")
                    holders = [_incrementer(child) for child in children[:-1]]
                    buckets = list(latency._buckets) if bulk else None
                    kind = self._totals.value_class
                    direct = bulk and all(type(value) is kind for value in (*holders, *(buckets or ()), latency._sum))
                    total = None
                    if direct:
                        total = self._totals.register(children)
                        # (The native store puts its own value holders in the children.)
                        holders = [_incrementer(child) for child in children[:-1]]
                        buckets = list(latency._buckets)
                    cost, tokens_input, tokens_output, tokens, operations, errors = holders
                    series = _OperationSeries(
                        cost=cost,
                        tokens_input=tokens_input,
                        tokens_output=tokens_output,
                        tokens=tokens,
                        operations=operations,
                        errors=errors,
                        latency=latency,
                        latency_buckets=buckets,
                        latency_sum=latency._sum if bulk else None,
                        total=total,
                    )
                    self._series[values] = series
        return series

    def operation_labels(self, distinct: list[list[str | None]]) -> list[list[str]]:
        """Per label (in `self.labels` order), its distinct values in a batch as series labels:
        null as "unknown", values past the cap as "other" (as the polars oracle's
        tests/oracle/policy_metrics.py labels its groups). Label combinations that become equal
        are one series (summed together)."""
        return [self.cap.map(name, values) for name, values in zip(self.labels, distinct, strict=True)]

    def record_operation_groups(self, groups: Any) -> None:
        """The per-operation metrics of a batch: `groups` (OperationGroups, see
        processor/native/src/stages/policy.rs) adds itself to the series already in the native totals
        (see processor/stages/policy/operation_totals.py), and leaves the others, per series: (labels from
        `operation_labels`, cost, tokens input, tokens output, operations, errors,
        [(bucket index, latencies in it)] or None, latency sum, latencies)."""
        with self._update_lock:
            self._add_groups(groups.add_to(self._totals.native))

    def _add_groups(self, rows: Any) -> None:
        """Adds per-series sums, under `_update_lock`: (labels, cost, tokens input, tokens output,
        operations, errors, [(latency bucket index, latencies in it)] or None, latency sum, latencies)."""
        direct = self._direct
        known = direct.get
        add = self._totals.add
        for values, spent, tokens_in, tokens_out, count, errors, buckets_hit, latency_total, latencies in rows:
            spent, tokens_in, tokens_out = spent or 0.0, tokens_in or 0, tokens_out or 0
            total = known(values)
            if total is None:
                series = self._operation_series(values)
                total = series.total
                if total is not None and len(direct) < MAX_SERIES:
                    direct[values] = total
                    self._totals.alias(values, total)
            if total is not None:
                add(
                    total,
                    spent,
                    tokens_in,
                    tokens_out,
                    tokens_in + tokens_out,
                    count,
                    errors or 0,
                    buckets_hit,
                    latency_total,
                )
                continue
            series.cost.inc(spent)
            series.tokens_input.inc(tokens_in)
            series.tokens_output.inc(tokens_out)
            series.tokens.inc(tokens_in + tokens_out)
            series.operations.inc(count)
            if errors:
                series.errors.inc(errors)
            if not buckets_hit:
                continue
            if series.latency_buckets is None:
                for latency in latencies:
                    series.latency.observe(latency)
                continue
            for bucket, hits in buckets_hit:
                series.latency_buckets[bucket].inc(hits)
            series.latency_sum.inc(latency_total)

    def record_verdicts(self, results: dict[str, int], violations: Sequence[tuple[str, str, str, int]]) -> None:
        """`results`: verdict -> evaluated spans; `violations`: (policy, reason code, mode, spans),
        every check of the policy (also those no span violated)."""
        self._batch.counted = True
        for result, count in results.items():
            if count:
                self._labelled(self.evaluations, (result,)).inc(count)
        checks = []
        for policy, reason_code, mode, count in violations:
            (policy,) = self.cap.published("policy", [policy])
            checks.append((policy, POLICY_TYPES.get(reason_code, reason_code), count))
            if count:
                self._labelled(self.violations, (policy, reason_code, mode)).inc(count)
        self.seed.record_policy_checks(sum(results.values()), checks)

    def record_budgets(
        self,
        levels: Sequence[tuple[str, str, float, float]],
        exceeded: Sequence[tuple[str, str, int]],
        forecasts: Sequence[float] = (),
    ) -> None:
        """`levels`: (budget, subject, consumed, limit) as last charged; `exceeded`: (budget, mode,
        spans); `forecasts`: per level, seconds to its exhaustion (processor/stages/policy/budget_forecast.py)."""
        subjects = self.cap.map("budget_subject", [subject for _, subject, _, _ in levels])
        names = self.cap.published("budget", [name for name, _, _, _ in levels])
        for (_, _, consumed, limit), subject, name in zip(levels, subjects, names, strict=True):
            self._labelled(self.utilization, (name, subject)).set(consumed / limit)
            self._labelled(self.remaining, (name, subject)).set(max(limit - consumed, 0.0))
        for subject, name, seconds in zip(subjects, names, forecasts, strict=False):
            self._labelled(self.forecast, (name, subject)).set(seconds)
        for name, mode, count in exceeded:
            (name,) = self.cap.published("budget", [name])
            self._labelled(self.exceeded, (name, mode)).inc(count)

    def _labelled(self, metric: Any, values: tuple[str, ...]) -> Any:
        """metric.labels(*values), remembered: labels() validates and locks on every call."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= MAX_SERIES:
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child

    def _child(self, metric, values: list) -> Any:
        return metric.labels(*values) if self.labels else metric
