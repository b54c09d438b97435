"""The policy stage: attribution, budgets, policy verdicts and the product metrics, per batch.

Runs last (cost → redaction → policy), so it sees `genops.cost.*` written by the cost stage and
`genops.redaction.count` written by redaction, as frame columns.

A batch runs in one Rust call (processor/stages/policy/native.py), whatever number of checks the
policy file holds: span batches, log records that are GenAI calls of their own (log_charges.py),
and budgets keyed on span attributes (their subjects resolved against the store's caps first:
budget_subjects.py). The polars queries the native plan was written against are its differential
oracle (tests/oracle/policy.py), never run by the product.
"""

from __future__ import annotations

import dataclasses
import time

import blake3
import polars as pl
import pyarrow as pa
import structlog
from prometheus_client import CollectorRegistry

from processor.config import PolicyConfig
from processor.core.attribution import Attribution
from processor.core.batch_columns import arrow_series
from processor.core.contract import ENGINE_NATIVE, BatchChanges
from processor.core.decode import LOGS, TRACES, TelemetryBatch, WantedKeys
from processor.core.genai_attributes import GENAI_KEYS
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.core.span_values import InvalidValueMetrics, check_batch
from processor.stages.cost import cache_metrics
from processor.stages.cost.cache_metrics import CacheMetrics
from processor.stages.policy import awu, budgets, log_charges, seed_metrics
from processor.stages.policy import rules as policies
from processor.stages.policy.budget_api import BudgetStatusReader
from processor.stages.policy.budget_forecast import FORECAST_TAG, forecast_column, now_utc
from processor.stages.policy.budget_state import BudgetStore
from processor.stages.policy.budget_store_guard import open_store
from processor.stages.policy.ledger import LedgerPlan, LedgerSettings
from processor.stages.policy.metrics import GovernanceMetrics, parse_labels
from processor.stages.policy.native import NativeExtras, NativePolicy
from processor.stages.policy.policy_file import Budget, PolicyFile, PolicySource, load_policy_file
from processor.stages.policy.reconcile_metrics import DriftGauge
from processor.stages.policy.reservation_store import StoreSettings, open_reservations
from processor.stages.policy.reservations import Reconciliation, reconciliation_counter

log = structlog.get_logger(__name__)

COST_KEYS = ("genops.cost.total", "genops.cost.model", "genops.cost.provider", "genops.cost.status")
# OTel semconv: set on a GenAI span when the operation ended in an error.
ERROR_TYPE = "error.type"
# batch.derived key of the request's fingerprint.
FINGERPRINT = "policy.fingerprint"


class PolicyStage:
    name = "policy"
    # GenAI calls reported only as log records are charged too (processor/stages/policy/log_charges.py: a record
    # naming a span is that span's call, charged once, by the span).
    signals = frozenset({TRACES, LOGS})

    def __init__(
        self,
        source: PolicySource,
        store: BudgetStore,
        attribution: Attribution,
        metrics: GovernanceMetrics,
        outbound: OutboundRedaction = NO_REDACTION,
        invalid: InvalidValueMetrics | None = None,
        ledger: LedgerPlan | None = None,
        budget_attributes: frozenset[str] = frozenset(),
        cache: CacheMetrics | None = None,
        drift: DriftGauge | None = None,
        reconciliation: Reconciliation | None = None,
        spec_attribution_check: bool = True,
    ) -> None:
        self.cache = cache
        self.drift = drift
        self.source = source
        # Span attributes budgets key on (budget_policy_file.Budget.attribute), decoded.
        self.budget_attributes = budget_attributes
        self._outbound = outbound
        # Reserved spans (processor/stages/policy/reservations.py), reconciled after the batch's charge.
        self.reconciliation = reconciliation
        self.spec_attribution_check = spec_attribution_check
        self.store = store
        self.ledger = ledger
        self.attribution = attribution
        self.metrics = metrics
        self._invalid = invalid or InvalidValueMetrics.of(CollectorRegistry())
        # For the budget status API (HTTP and gRPC) in the process that runs this stage.
        self.budget_status = BudgetStatusReader(source, store, outbound)
        if reconciliation is not None:
            reconciliation.pair(self.budget_status)
        self._plan: _Plan | None = None

    def close(self) -> None:
        if self.drift is not None:
            self.drift.close()
        self.source.close()
        self.store.close()
        if self.reconciliation is not None:
            self.reconciliation.store.close()
        self.metrics.close()

    def wanted_keys(self) -> WantedKeys:
        ledger = self.ledger.wanted_keys() if self.ledger is not None else ()
        cache = cache_metrics.WANTED if self.cache is not None else ()
        own = WantedKeys(item=frozenset((*COST_KEYS, *ledger, *cache, policies.PII_COUNT, ERROR_TYPE)))
        attributes = WantedKeys(item=self.budget_attributes, resource=self.budget_attributes)
        return WantedKeys.union(
            (GENAI_KEYS, self.attribution.wanted_keys(), own, awu.wanted_keys(), attributes, seed_metrics.wanted_keys())
        )

    def prepare(self, batch: TelemetryBatch) -> None:
        """Reads ahead what does not come from the redaction stage (all but its PII count) and
        fingerprints the request, while the redaction stage's thread runs."""
        if batch.signal == LOGS:
            return  # rare and small: all done at its turn
        fingerprint(batch)
        check_batch(batch)
        plan = self._plan_for(self.source.current())
        if plan.native is not None:
            plan.native.prepare(batch)

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        if batch.signal == LOGS:
            return self._process_logs(batch)
        self.metrics.seed.record_evaluations(batch, fingerprint)
        self.metrics.begin_batch()
        # A bad cost or time is ignored for its own span: both paths below read clean columns.
        check_batch(batch)
        self._invalid.record(batch)
        plan = self._plan_for(self.source.current())
        # The ledger's charge goes into the batch's one store call (retried batches charge it once).
        store = self.store if self.ledger is None else self.ledger.charging(self.store, batch, time.time_ns())
        watched = None if self.cache is None else self.cache.watching(store)
        store = store if watched is None else watched
        changes, extras = self._process(batch, plan, store)
        if self.cache is not None and watched is not None and not watched.repeated:
            try:
                self.cache.record(batch)
            except Exception as exc:
                # The batch's tags stand; only the cache metrics miss it.
                log.error("cache metrics failed", error=type(exc).__name__, exc_info=True)
        # Cost per operation type from the AWU columns, unless a retried batch (counted once).
        costs = self.metrics.seed.record_operation_costs if self.metrics.batch_counted() else None
        changes = awu.add_awu_changes(batch, changes, self.attribution, costs, extras.awu)
        if self.reconciliation is not None:
            changes = self.reconciliation.add_changes(batch, changes)
        return _with_forecast(changes, plan.budget_names, extras.forecast)

    def _process_logs(self, batch: TelemetryBatch) -> BatchChanges:
        """The records that are GenAI calls naming no span, charged as spans are (no ledger, no
        span events: see processor/stages/policy/log_charges.py)."""
        self.metrics.seed.record_evaluations(batch, fingerprint)
        if not log_charges.reports_usage(batch):
            return BatchChanges()
        log_charges.mark_records(batch)
        check_batch(batch)
        self._invalid.record(batch)
        plan = self._plan_for(self.source.current())
        # The AWU columns are the spans' (log records get none); the forecast tag is computed here.
        changes, _ = self._process(batch, plan, self.store)
        return _with_forecast(dataclasses.replace(changes, events=[]), plan.budget_names)

    def _process(self, batch: TelemetryBatch, plan: _Plan, store: BudgetStore) -> tuple[BatchChanges, NativeExtras]:
        """The batch's changes by the native plan (tests/oracle/policy.py runs the polars queries
        here), and what the plan computed of the AWU columns and forecast tag (the rest is
        computed after, from the changes)."""
        changes, extras = plan.native.process(batch, store, self.metrics, fingerprint)
        return changes.with_engine(ENGINE_NATIVE), extras

    def _plan_for(self, policy: PolicyFile) -> _Plan:
        plan = self._plan
        if plan is None or plan.source is not policy:
            plan = self._plan = self._new_plan(policy)
        return plan

    def _new_plan(self, policy: PolicyFile) -> _Plan:
        return _Plan(policy, self.attribution, self.metrics.labels, self.spec_attribution_check, self._outbound)


def _rule_column(index: int) -> str:
    """The name of rule `index`'s violation flag (what its check reads in the polars oracle)."""
    return f"_rule{index}"


class _Plan:
    """One policy file's checks and native plan: built once, not per batch."""

    def __init__(
        self,
        source: PolicyFile,
        attribution: Attribution,
        labels: tuple[str, ...] = (),
        spec_attribution_check: bool = True,
        outbound: OutboundRedaction = NO_REDACTION,
    ) -> None:
        self.source = source
        policy = self.policy = policies.with_spec_checks(source, spec_attribution_check)
        self.attribution = attribution
        self.budget_names = {b.name: b for b in policy.budgets}
        rule_checks = policies.rule_checks(policy.rules, _rule_column)
        budget_checks = [
            policies.Check(
                f"budget:{b.name}",
                policies.REASON_CODES["budget"],
                b.mode,
                pl.col(budgets.column(i, "exceeded")).fill_null(False),
            )
            for i, b in enumerate(policy.budgets)
        ]
        # (check, column whose sum is its violation count in the polars oracle).
        self.counted = [(c, _rule_column(i)) for i, c in enumerate(rule_checks)] + [
            (c, budgets.column(i, "exceeded")) for i, c in enumerate(budget_checks)
        ]
        self.checks = [*rule_checks, *budget_checks]
        # The whole stage in one native call, attribute budgets and log records included.
        self.native = NativePolicy(policy, attribution, labels, self.checks, [c for c, _ in self.counted], outbound)


def _with_forecast(changes: BatchChanges, listed: dict[str, Budget], native: pa.Array | None = None) -> BatchChanges:
    """`changes` plus genops.budget.forecast beside the budget tags (both paths write those),
    the `native` kernel's column when it computed one."""
    tags = changes.set_attributes
    if budgets.TAGS["name"] not in tags:
        return changes
    if native is not None:
        changes.arrow[FORECAST_TAG] = native
        return dataclasses.replace(changes, set_attributes={**tags, FORECAST_TAG: arrow_series(FORECAST_TAG, native)})
    forecast = forecast_column(
        tags[budgets.TAGS["name"]],
        tags[budgets.TAGS["consumed"]],
        tags[budgets.TAGS["limit"]],
        listed,
        now_utc(),
    )
    return dataclasses.replace(changes, set_attributes={**tags, FORECAST_TAG: forecast})


def fingerprint(batch: TelemetryBatch) -> str:
    """Identifies an export request, so the Collector retrying it is recognised.

    Hashes the request as received (earlier stages never mutate it; their changes are applied
    after every stage ran), so the same bytes always give the same fingerprint. BLAKE3, 128 bits:
    a cryptographic hash (a sender cannot make its batch pass for another one already charged)
    that is ~4x cheaper than BLAKE2b on a ~650 kB request, where it was a tenth of the pipeline.
    """
    done = batch.derived.get(FINGERPRINT)
    if done is None:
        raw = batch.raw or batch.request.SerializeToString()
        done = batch.derived[FINGERPRINT] = blake3.blake3(raw).hexdigest(length=16)
    return done  # type: ignore[return-value]


def build_policy_stage(
    config: PolicyConfig, registry: CollectorRegistry, outbound: OutboundRedaction = NO_REDACTION
) -> PolicyStage:
    """The policy/budget stage; `stage.budget_status` serves the budget status API. `outbound`
    redacts the metric labels and answers it makes from span values."""
    labels = parse_labels(config.metrics_labels, config.metrics_label_deny)
    attribution = Attribution.from_config(config.attribution_fallbacks)
    ledger = (
        LedgerPlan(LedgerSettings.from_config(config.ledger), attribution, outbound, registry)
        if config.ledger.enabled
        else None
    )
    source = PolicySource(config.policy_file, config.reload_interval_seconds, registry)
    metrics = GovernanceMetrics(registry, labels, config.metrics_max_label_values, outbound)
    store = open_store(config.state_backend, config.state_path, config.redis_url, registry)
    reservations = open_reservations(config.state_backend, config.state_path, config.redis_url, store)
    return PolicyStage(
        source=source,
        store=store,
        attribution=attribution,
        metrics=metrics,
        outbound=outbound,
        invalid=InvalidValueMetrics.of(registry),
        ledger=ledger,
        budget_attributes=source.readable(configured_attributes(config)),
        cache=CacheMetrics(registry, metrics.cap, attribution),
        # What `genops-sidecar reconcile` recorded last (the memory store has no such runs).
        drift=DriftGauge(store, registry) if config.state_backend != "memory" else None,
        reconciliation=Reconciliation(
            reservations,
            reconciliation_counter(registry),
            StoreSettings(config.state_backend, config.state_path, config.redis_url),
            store,
        ),
        spec_attribution_check=config.spec_attribution_check,
    )


def configured_attributes(config: PolicyConfig) -> frozenset[str]:
    return frozenset(key.strip() for key in config.budget_attributes.split(",") if key.strip())


def check_policy_config(config: PolicyConfig) -> None:
    """For `validate-config`: raises ValueError naming the first problem, without opening the store."""
    labels = parse_labels(config.metrics_labels, config.metrics_label_deny)
    attribution = Attribution.from_config(config.attribution_fallbacks)
    LedgerSettings.from_config(config.ledger)
    if config.policy_file:
        # The native plan too, as serve builds it: what it refuses is refused here, not at run time.
        _Plan(load_policy_file(config.policy_file), attribution, labels, config.spec_attribution_check)
