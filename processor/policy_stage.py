"""The policy stage: attribution, budgets, policy verdicts and the product metrics, per batch.

Runs last (cost → redaction → policy), so it sees `genops.cost.*` written by the cost stage and
`genops.redaction.count` written by redaction, as frame columns.

A batch runs in one Rust call (processor/policy_native.py), the stage's one engine, whatever the
policy file holds. The polars queries it was written against are the differential oracle in
tests/oracle/policy.py, which tests/test_policy_native.py checks the native path against.
"""

from __future__ import annotations

import dataclasses
import time

import blake3
from prometheus_client import CollectorRegistry

from processor import awu, budgets, policies
from processor.attribution import Attribution
from processor.budget_api import BudgetStatusReader
from processor.budget_forecast import FORECAST_TAG, forecast_column, now_utc
from processor.budget_policy_file import Budget, PolicyFile, PolicySource, load_policy_file
from processor.budget_state import BudgetStore, open_store
from processor.config import PolicyConfig
from processor.decode import (
    TRACES,
    TelemetryBatch,
    WantedKeys,
)
from processor.genai_attributes import GENAI_KEYS
from processor.governance_metrics import GovernanceMetrics, parse_labels
from processor.ledger import LedgerPlan, LedgerSettings
from processor.outbound import NO_REDACTION, OutboundRedaction
from processor.pipeline import ENGINE_NATIVE, BatchChanges
from processor.policy_native import NativePolicy
from processor.span_values import InvalidValueMetrics, check_batch

COST_KEYS = ("genops.cost.total", "genops.cost.model", "genops.cost.provider", "genops.cost.status")
# OTel semconv: set on a GenAI span when the operation ended in an error.
ERROR_TYPE = "error.type"
# batch.derived key of the request's fingerprint.
FINGERPRINT = "policy.fingerprint"


class PolicyStage:
    name = "policy"
    signals = frozenset({TRACES})

    def __init__(
        self,
        source: PolicySource,
        store: BudgetStore,
        attribution: Attribution,
        metrics: GovernanceMetrics,
        outbound: OutboundRedaction = NO_REDACTION,
        invalid: InvalidValueMetrics | None = None,
        ledger: LedgerPlan | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.ledger = ledger
        self.attribution = attribution
        self.metrics = metrics
        self._invalid = invalid or InvalidValueMetrics.of(CollectorRegistry())
        # For the budget status API (HTTP and gRPC) in the process that runs this stage.
        self.budget_status = BudgetStatusReader(source, store, outbound)
        self._plan: _Plan | None = None

    def close(self) -> None:
        self.source.close()
        self.store.close()
        self.metrics.close()

    def wanted_keys(self) -> WantedKeys:
        ledger = self.ledger.wanted_keys() if self.ledger is not None else ()
        own = WantedKeys(item=frozenset((*COST_KEYS, *ledger, policies.PII_COUNT, ERROR_TYPE)))
        return WantedKeys.union((GENAI_KEYS, self.attribution.wanted_keys(), own, awu.wanted_keys()))

    def prepare(self, batch: TelemetryBatch) -> None:
        """Reads ahead what does not come from the redaction stage (all but its PII count) and
        fingerprints the request, while the redaction stage's thread runs."""
        fingerprint(batch)
        check_batch(batch)
        self._plan_for(self.source.current()).native.prepare(batch)

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        # A bad cost or time is ignored for its own span: both paths below read clean columns.
        check_batch(batch)
        self._invalid.record(batch)
        plan = self._plan_for(self.source.current())
        # The ledger's charge goes into the batch's one store call (retried batches charge it once).
        store = self.store if self.ledger is None else self.ledger.charging(self.store, batch, time.time_ns())
        changes = self._process(batch, plan, store)
        return _with_forecast(awu.add_awu_changes(batch, changes, self.attribution), plan.budget_names)

    def _process(self, batch: TelemetryBatch, plan: _Plan, store: BudgetStore) -> BatchChanges:
        """The batch's changes, by the native plan (the one engine; tests/oracle/policy.py holds
        the polars reference it is tested against)."""
        return plan.native.process(batch, store, self.metrics, fingerprint).with_engine(ENGINE_NATIVE)

    def _plan_for(self, policy: PolicyFile) -> _Plan:
        plan = self._plan
        if plan is None or plan.source is not policy:
            plan = self._plan = _Plan(policy, self.attribution, self.metrics.labels)
        return plan


class _Plan:
    """One policy file's checks and native plan: built once, not per batch."""

    def __init__(self, source: PolicyFile, attribution: Attribution, labels: tuple[str, ...] = ()) -> None:
        self.source = source
        policy = self.policy = policies.with_spec_checks(source)
        self.budget_names = {b.name: b for b in policy.budgets}
        checks, counted = policy_checks(policy)
        self.native = NativePolicy(policy, attribution, labels, checks, counted)


def policy_checks(policy: PolicyFile) -> tuple[list[policies.Check], list[policies.Check]]:
    """(every check of `policy`: its rules', then its budgets'; the checks the metrics count).
    `policy` already has the spec's checks (`policies.with_spec_checks`)."""
    budget_plan = budgets.BudgetPlan(policy.budgets)
    rule_checks = policies.rule_checks(policy.rules, rule_column)
    budget_checks = [
        policies.Check(f"budget:{b.name}", policies.REASON_CODES["budget"], b.mode, budget_plan.exceeded(i))
        for i, b in enumerate(policy.budgets)
    ]
    checks = [*rule_checks, *budget_checks]
    return checks, checks


def rule_column(index: int) -> str:
    """The column of rule `index`'s flag (read by the checks' expressions; only the polars
    oracle under tests/oracle/ evaluates them)."""
    return f"_rule{index}"


def _with_forecast(changes: BatchChanges, listed: dict[str, Budget]) -> BatchChanges:
    """`changes` plus genops.budget.forecast beside the budget tags (both paths write those)."""
    tags = changes.set_attributes
    if budgets.TAGS["name"] not in tags:
        return changes
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
    return PolicyStage(
        source=PolicySource(config.policy_file, config.reload_interval_seconds, registry),
        store=open_store(config.state_backend, config.state_path, config.redis_url, registry),
        attribution=attribution,
        metrics=GovernanceMetrics(registry, labels, config.metrics_max_label_values, outbound),
        outbound=outbound,
        invalid=InvalidValueMetrics.of(registry),
        ledger=ledger,
    )


def check_policy_config(config: PolicyConfig) -> None:
    """For `validate-config`: raises ValueError naming the first problem, without opening the store."""
    labels = parse_labels(config.metrics_labels, config.metrics_label_deny)
    attribution = Attribution.from_config(config.attribution_fallbacks)
    LedgerSettings.from_config(config.ledger)
    if config.policy_file:
        # The native plan too, as serve builds it: what it refuses is refused here, not at run time.
        _Plan(load_policy_file(config.policy_file), attribution, labels)
