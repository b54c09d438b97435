"""The GenOps seed metrics (issue 21 item 4) beyond the product metrics of metrics.py:

- `genops_evaluation_score{evaluation_type, evaluator}` (histogram): evaluation results, from the
  spec's §7.3 `genops.eval.metric` / `genops.eval.score` on a span or log record, the OTel GenAI
  `gen_ai.evaluation.result` event (`gen_ai.evaluation.name` / `gen_ai.evaluation.score.value`) as
  a log record or a span event, and the spec's `genops.evaluation.complete` span event. The
  evaluator is `genops.eval.evaluator` where set (not in either convention), else the reporting
  service (`service.name` of the resource), else "unknown".
- `genops_cost_by_operation_usd{operation_type}`: USD of the AWUs per `genops.operation.type`
  (a Gauge that only goes up, as `genops_cost_total_usd`, summed over worker processes).
- `genops_policy_checks{policy_name, policy_type, outcome}` (counter; outcome compliant or
  violated): per check, the GenAI spans it passed or failed; the Prometheus rules turn it into
  `genops_policy_compliance_rate_ratio` (a ratio cannot be summed over workers and pods; counts can).

Computed per batch column-wise; a batch without evaluation attributes costs a schema lookup.
Labels pass the outbound redaction (processor/core/outbound.py) and the per-label cap.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import polars as pl
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from processor.core import genops_semconv as gs
from processor.core.decode import RESOURCE_PREFIX, TRACES, TelemetryBatch, WantedKeys, any_value_scalar
from processor.core.genai_attributes import EVALUATION_NAME, EVALUATION_RESULT_EVENT, EVALUATION_SCORE_VALUE

# (type, score) attribute pairs, first found wins.
_EVALUATION_SOURCES = ((gs.EVAL_METRIC, gs.EVAL_SCORE), (EVALUATION_NAME, EVALUATION_SCORE_VALUE))
_EVALUATION_EVENTS = (EVALUATION_RESULT_EVENT, gs.EVENT_EVALUATION_COMPLETE)
# Span events are walked only when the request bytes hold this (in both event names): one substring
# scan, itself skipped when the native scan found no span events at all.
_EVENT_NAMES_PART = b".evaluation."
assert all(_EVENT_NAMES_PART in name.encode() for name in _EVALUATION_EVENTS)
SERVICE_NAME = "service.name"
# Scores are mostly 0-1 (judges, similarity), sometimes 1-5 or 1-10 scales.
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0)
UNKNOWN = "unknown"
OTHER = "other"
COMPLIANT = "compliant"
VIOLATED = "violated"
# Request fingerprints remembered so a retried request does not score its evaluations twice.
_RECENT_REQUESTS = 4096
MAX_CHILDREN = 10_000


def wanted_keys() -> WantedKeys:
    keys = frozenset(key for pair in _EVALUATION_SOURCES for key in pair) | {gs.EVAL_EVALUATOR}
    return WantedKeys(item=keys, resource=frozenset({SERVICE_NAME}))


class SeedMetrics:
    def __init__(self, registry: CollectorRegistry, cap) -> None:
        # `cap`: the product metrics' LabelCap (its outbound redaction and per-label limit).
        self.cap = cap
        self.evaluation_score = Histogram(
            "genops_evaluation_score",
            "Evaluation scores of GenAI outputs (genops.eval.*, gen_ai.evaluation.result).",
            ["evaluation_type", "evaluator"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.cost_by_operation = Gauge(
            "genops_cost_by_operation_usd",
            "Priced GenAI spend in USD per genops.operation.type (only increases).",
            ["operation_type"],
            registry=registry,
            multiprocess_mode="sum",
        )
        self.policy_checks = Counter(
            "genops_policy_checks",
            "GenAI spans each policy check passed (compliant) or failed (violated).",
            ["policy_name", "policy_type", "outcome"],
            registry=registry,
        )
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        # metric.labels(...) remembered (it validates and locks on every call).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, values: tuple[str, ...]) -> Any:
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child

    def _labels(self, label: str, key: str, values: Sequence[str | None]) -> list[str]:
        """Label values standing for attribute `key`: redacted, capped in length and in number."""
        publish = self.cap.outbound.label
        shown = [UNKNOWN if value is None else publish(key, value) for value in values]
        refused = self.cap.refused(label, set(shown))
        return [OTHER if value in refused else value for value in shown] if refused else shown

    def record_policy_checks(self, evaluated: int, checks: Iterable[tuple[str, str, int]]) -> None:
        """`checks`: (published policy name, policy type, spans violating it) of `evaluated` spans."""
        for name, kind, violated in checks:
            if violated:
                self._child(self.policy_checks, (name, kind, VIOLATED)).inc(violated)
            if evaluated - violated > 0:
                self._child(self.policy_checks, (name, kind, COMPLIANT)).inc(evaluated - violated)

    def record_operation_costs(self, operation_types: list[str | None], costs: list[float | None]) -> None:
        """Per decided AWU: its genops.operation.type and genops.accounting.actual (None: no cost).
        (Python lists: the AWU step has them already, and a few hundred rows into a few types is
        cheaper summed here than through a polars or Arrow group-by.)"""
        sums: dict[str | None, float] = {}
        for kind, cost in zip(operation_types, costs, strict=True):
            if cost is not None:
                sums[kind] = sums.get(kind, 0.0) + cost
        if not sums:
            return
        labels = self._labels("operation_type", gs.OPERATION_TYPE, list(sums))
        for label, spent in zip(labels, sums.values(), strict=True):
            self._child(self.cost_by_operation, (label,)).inc(spent)

    def record_evaluations(self, batch: TelemetryBatch, fingerprint: Callable[[TelemetryBatch], str]) -> None:
        found = _attribute_scores(batch)
        if batch.signal == TRACES and _may_have_evaluation_events(batch):
            found += _event_scores(batch)
        if not found or self._seen(fingerprint(batch)):
            return
        types = self._labels("evaluation_type", gs.EVAL_METRIC, [kind for kind, _, _ in found])
        evaluators = self._labels("evaluator", gs.EVAL_EVALUATOR, [who for _, who, _ in found])
        for kind, who, (_, _, score) in zip(types, evaluators, found, strict=True):
            self._child(self.evaluation_score, (kind, who)).observe(score)

    def _seen(self, fingerprint: str) -> bool:
        with self._lock:
            if fingerprint in self._recent:
                return True
            self._recent[fingerprint] = None
            if len(self._recent) > _RECENT_REQUESTS:
                self._recent.popitem(last=False)
            return False


Score = tuple[str | None, str | None, float]


def _attribute_scores(batch: TelemetryBatch) -> list[Score]:
    """(type, evaluator, score) of the items carrying an evaluation as attributes."""
    pairs = [(kind, score) for kind, score in _EVALUATION_SOURCES if batch.has_values(score) and batch.has_values(kind)]
    if not pairs:  # the common case: no frame is built
        return []
    frame = batch.frame
    schema = frame.schema
    kind = pl.coalesce([_text(schema, k) for k, _ in pairs])
    score = pl.coalesce([_number(schema, s) for _, s in pairs])
    evaluator = pl.coalesce(_text(schema, gs.EVAL_EVALUATOR), _text(schema, RESOURCE_PREFIX + SERVICE_NAME))
    rows = (
        frame.lazy()
        .select(kind.alias("kind"), evaluator.alias("evaluator"), score.alias("score"))
        .filter(pl.col("kind").is_not_null() & pl.col("score").is_finite())
        .collect()
    )
    return list(rows.iter_rows())


def _may_have_evaluation_events(batch: TelemetryBatch) -> bool:
    # (The native scan gives the event rows for free; the Python path would walk the request for them.)
    known = batch._event_rows
    if known is not None and not known:
        return False
    return bool(batch.raw) and _EVENT_NAMES_PART in batch.raw


def _event_scores(batch: TelemetryBatch) -> list[Score]:
    """(type, evaluator, score) of the evaluation span events."""
    services = batch.column_series(RESOURCE_PREFIX + SERVICE_NAME)
    found: list[Score] = []
    for row, event in batch.events:
        if event.name not in _EVALUATION_EVENTS:
            continue
        values = {kv.key: any_value_scalar(kv.value) for kv in event.attributes}
        for kind_key, score_key in _EVALUATION_SOURCES:
            kind, score = values.get(kind_key), values.get(score_key)
            if isinstance(kind, str) and _finite(score):
                who = values.get(gs.EVAL_EVALUATOR)
                if not isinstance(who, str):
                    who = services[row] if services is not None and services.dtype == pl.String else None
                found.append((kind, who, float(score)))  # type: ignore[arg-type]
                break
    return found


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(schema: pl.Schema, key: str) -> pl.Expr:
    if schema.get(key) != pl.String:
        return pl.lit(None, dtype=pl.String)
    return pl.col(key)


def _number(schema: pl.Schema, key: str) -> pl.Expr:
    dtype = schema.get(key)
    if dtype is None or dtype in (pl.Null, pl.Binary, pl.Boolean):
        return pl.lit(None, dtype=pl.Float64)
    column = pl.col(key)
    if dtype == pl.String:
        column = column.str.strip_chars()
    return column.cast(pl.Float64, strict=False)
