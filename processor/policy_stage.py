"""The policy stage: attribution, budgets, policy verdicts and the product metrics, per batch.

Runs last (cost → redaction → policy), so it sees `genops.cost.*` written by the cost stage and
`genops.redaction.count` written by redaction, as frame columns.
"""

from __future__ import annotations

import hashlib

import polars as pl
from prometheus_client import CollectorRegistry

from processor import budgets, policies
from processor.attribution import Attribution
from processor.budget_api import BudgetStatusReader
from processor.budget_policy_file import PolicySource, load_policy_file
from processor.budget_state import BudgetStore, open_store
from processor.config import PolicyConfig
from processor.decode import ROW, START_TIME, STATUS_CODE, TRACES, TelemetryBatch, WantedKeys
from processor.genai_attributes import GENAI_KEYS, TOKENS_INPUT, TOKENS_OUTPUT, normalized
from processor.governance_metrics import GovernanceMetrics, parse_labels
from processor.pipeline import BatchChanges

COST_KEYS = ("genops.cost.total", "genops.cost.model", "genops.cost.provider", "genops.cost.status")
# OTel semconv: set on a GenAI span when the operation ended in an error.
ERROR_TYPE = "error.type"


class PolicyStage:
    name = "policy"
    signals = frozenset({TRACES})

    def __init__(
        self, source: PolicySource, store: BudgetStore, attribution: Attribution, metrics: GovernanceMetrics
    ) -> None:
        self.source = source
        self.store = store
        self.attribution = attribution
        self.metrics = metrics
        # For the budget status API (HTTP and gRPC) in the process that runs this stage.
        self.budget_status = BudgetStatusReader(source, store)

    def close(self) -> None:
        self.source.close()
        self.store.close()

    def wanted_keys(self) -> WantedKeys:
        own = WantedKeys(item=frozenset((*COST_KEYS, policies.PII_COUNT, ERROR_TYPE)))
        return WantedKeys.union((GENAI_KEYS, self.attribution.wanted_keys(), own))

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        policy = self.source.current()
        spans = self._spans(batch)
        evaluated = spans["evaluated"]
        if not evaluated.any():
            return BatchChanges()
        outcome = budgets.evaluate(policy.budgets, spans.filter("evaluated"), self.store, fingerprint(batch))
        charges = outcome.charges
        checks = policies.rule_checks(policy.rules, spans)
        for index, budget in enumerate(policy.budgets):
            over = _rows(charges, (pl.col("budget") == index) & pl.col("exceeded"))
            checks.append(
                policies.Check(f"budget:{budget.name}", "budget_exceeded", budget.mode, spans[ROW].is_in(over))
            )
        warned_rows = _rows(charges, pl.col("warned") & (pl.col("mode") != "audit_only"))
        verdict = policies.verdict(checks, spans[ROW].is_in(warned_rows), evaluated)

        changes: dict[str, pl.Series] = {name: verdict[name] for name in verdict.columns}
        if charges.height:
            tags = spans.select(ROW).join(outcome.tags, on=ROW, how="left", maintain_order="left")
            changes.update({name: tags[name] for name in budgets.TAGS.values()})

        if outcome.repeated:
            # A retried batch: same tags and events as the first time, but counted once.
            return BatchChanges(set_attributes=changes, events=outcome.events)
        self.metrics.record_operations(spans.filter("evaluated").rename({budgets.COST: "cost"}))
        self.metrics.record_verdicts(
            verdict[policies.RESULT],
            [(c.name, c.reason_code, c.mode, int((c.violated & evaluated).sum())) for c in checks],
        )
        self.metrics.record_budgets(charges)
        return BatchChanges(set_attributes=changes, events=outcome.events)

    def _spans(self, batch: TelemetryBatch) -> pl.DataFrame:
        """One row per span: dimensions, model, provider, tokens, cost, PII count, error, latency."""
        frame = batch.frame
        genai = normalized(batch)
        dims = self.attribution.columns(frame)
        schema = dict(frame.schema)
        cost = _number(schema, "genops.cost.total", pl.Float64)
        end = budgets.END_TIME
        latency = (
            pl.when((pl.col(end) >= pl.col(START_TIME)) & (pl.col(START_TIME) > 0))
            .then((pl.col(end).cast(pl.Int64) - pl.col(START_TIME).cast(pl.Int64)) / 1e9)
            .alias("latency")
            if end in frame.columns
            else pl.lit(None, dtype=pl.Float64).alias("latency")
        )
        times = frame.select(ROW, START_TIME, *([end] if end in frame.columns else []), latency)
        extra = frame.select(
            cost.alias(budgets.COST),
            _text(schema, "genops.cost.model").alias("cost_model"),
            _text(schema, "genops.cost.provider").alias("cost_provider"),
            _text(schema, "genops.cost.status").alias("cost_status"),
            _number(schema, policies.PII_COUNT, pl.Int64).alias(policies.PII_COUNT),
            _error(schema).alias("error"),
        )
        spans = pl.concat([times, dims, genai, extra], how="horizontal")
        return spans.with_columns(
            pl.coalesce("genai_model", "cost_model").alias("model"),
            pl.coalesce("genai_provider", "cost_provider").alias("provider"),
        ).with_columns(
            pl.any_horizontal(
                pl.col("model").is_not_null(),
                pl.col(budgets.COST).is_not_null(),
                pl.col(TOKENS_INPUT).is_not_null(),
                pl.col(TOKENS_OUTPUT).is_not_null(),
                pl.col("cost_status").is_not_null(),
            ).alias("evaluated")
        )


def _error(schema: dict[str, pl.DataType]) -> pl.Expr:
    failed = _text(schema, ERROR_TYPE).is_not_null()
    if STATUS_CODE in schema:  # 2 = STATUS_CODE_ERROR
        failed |= pl.col(STATUS_CODE).cast(pl.Int64, strict=False).fill_null(0) == 2
    return failed


def _rows(charges: pl.DataFrame, condition: pl.Expr) -> list[int]:
    return charges.filter(condition)[ROW].to_list() if charges.height else []


def fingerprint(batch: TelemetryBatch) -> str:
    """Identifies an export request, so the Collector retrying it is recognised.

    Hashes the request as received (earlier stages never mutate it; their changes are applied
    after every stage ran), so the same bytes always give the same fingerprint.
    """
    raw = batch.raw or batch.request.SerializeToString()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _text(schema: dict[str, pl.DataType], key: str) -> pl.Expr:
    if schema.get(key, pl.Null) in (pl.Null, pl.Binary):
        return pl.lit(None, dtype=pl.String)
    value = pl.col(key).cast(pl.String, strict=False).str.strip_chars()
    return pl.when(value == "").then(None).otherwise(value)


def _number(schema: dict[str, pl.DataType], key: str, dtype: pl.DataType) -> pl.Expr:
    if schema.get(key, pl.Null) in (pl.Null, pl.Binary):
        return pl.lit(None, dtype=dtype)
    column = pl.col(key)
    if schema[key] == pl.String:
        column = column.str.strip_chars().cast(pl.Float64, strict=False)
    return column.cast(dtype, strict=False)


def build_policy_stage(config: PolicyConfig, registry: CollectorRegistry) -> PolicyStage:
    """The policy/budget stage; `stage.budget_status` serves the budget status API."""
    labels = parse_labels(config.metrics_labels, config.metrics_label_deny)
    return PolicyStage(
        source=PolicySource(config.policy_file, config.reload_interval_seconds, registry),
        store=open_store(config.state_backend, config.state_path, config.redis_url),
        attribution=Attribution.from_config(config.attribution_fallbacks),
        metrics=GovernanceMetrics(registry, labels, config.metrics_max_label_values),
    )


def check_policy_config(config: PolicyConfig) -> None:
    """For `validate-config`: raises ValueError naming the first problem, without opening the store."""
    parse_labels(config.metrics_labels, config.metrics_label_deny)
    Attribution.from_config(config.attribution_fallbacks)
    if config.policy_file:
        load_policy_file(config.policy_file)
