"""The policy stage's polars queries: the differential oracle of its native plan.

The product runs every batch on the native plan (processor/stages/policy/native.py); this subclass
runs every batch (spans, log-only calls, attribute budgets) through the polars queries the plan was
written against, so tests compare the two engines span for span (tests/stages/policy/test_policy_native.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import polars as pl

from processor.core.attribution import DIMENSIONS, Attribution, text
from processor.core.contract import ENGINE_POLARS, BatchChanges
from processor.core.decode import RESOURCE_PREFIX, ROW, START_TIME, STATUS_CODE, TelemetryBatch
from processor.core.genai_attributes import MODEL, PROVIDER, TOKENS_INPUT, TOKENS_OUTPUT, normalized
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.stages.policy import budgets, log_charges
from processor.stages.policy import rules as policies
from processor.stages.policy.budget_forecast import level_forecasts, now_utc
from processor.stages.policy.budget_state import BudgetStore
from processor.stages.policy.budget_subjects import number
from processor.stages.policy.native import NO_EXTRAS, NativeExtras
from processor.stages.policy.policy_file import PolicyFile, budget_attributes
from processor.stages.policy.stage import COST_KEYS, ERROR_TYPE, PolicyStage, _Plan, fingerprint
from processor.stages.policy.store_caps import OVERFLOW, StoreCap
from tests.oracle import policy_budgets, policy_metrics, policy_rules


class OraclePolicyStage(PolicyStage):
    """The policy stage with every batch run by the polars queries."""

    def _process(self, batch: TelemetryBatch, plan: _Plan, store: BudgetStore) -> tuple[BatchChanges, NativeExtras]:
        # Nor the native AWU columns and forecast: awu.py and budget_forecast.py compute them.
        assert isinstance(plan, OraclePlan)
        return self._process_polars(batch, plan, store).with_engine(ENGINE_POLARS), NO_EXTRAS

    def _new_plan(self, policy: PolicyFile) -> OraclePlan:
        return OraclePlan(policy, self.attribution, self.metrics.labels, self.spec_attribution_check, self._outbound)

    def _process_polars(self, batch: TelemetryBatch, plan: _Plan, store: BudgetStore) -> BatchChanges:
        frame = batch.frame
        genai = [column.alias(GENAI_PREFIX + column.name) for column in normalized(batch).get_columns()]
        query = (
            frame.hstack(genai).lazy().with_columns(pl.lit(time.time_ns(), dtype=pl.Int64).alias(policy_budgets.NOW))
        )
        head, evaluated, *layers = plan.span_layers(frame.schema)
        # Only GenAI spans are evaluated (~40% of a batch): the rest are left out until the
        # output columns are laid back over the whole batch.
        # (A column, not its name: polars resolves a name against the whole frame schema.)
        evaluated_spans = query.select(head).with_columns(evaluated).filter(pl.col(EVALUATED))
        spans = _layered(evaluated_spans, layers).collect(engine=budgets.ENGINE, optimizations=budgets.OPTIMIZATIONS)
        if spans.height == 0:
            return BatchChanges()
        if plan.caps:
            spans = plan.budgets.capped(spans, self._subjects(plan, store))
        windows = plan.budgets.windows(spans)
        applied = store.apply(fingerprint(batch), windows.increments, windows.expires_at)
        charging = _layered(
            spans.lazy().with_columns(plan.budgets.consumed_columns(windows, applied.totals)),
            plan.charge_layers(windows.charged),
        )
        if applied.repeated:
            # A retried batch: same tags and events as the first time, but counted once.
            charged = charging.collect(engine=budgets.ENGINE, optimizations=budgets.OPTIMIZATIONS)
        else:
            charged, sums = pl.collect_all(
                [charging, policy_metrics.operation_sums(self.metrics, spans.lazy(), budgets.COST)],
                engine=budgets.ENGINE,
                optimizations=budgets.OPTIMIZATIONS,
            )
        # Laid back over the batch (null for the spans not evaluated): just the output columns (the
        # events and metrics read the evaluated spans). A gather by row index, cheaper in polars
        # than a join on the row position; indexing a frame by a Series plans no query.
        outputs = plan.outputs(windows.charged)
        laid = charged[outputs][_gather_index(spans, frame.height)]
        changes = {name: laid.get_column(name) for name in outputs}
        events = plan.budgets.events(charged) if windows.charged else []
        if applied.repeated:
            return BatchChanges(set_attributes=changes, events=events)
        policy_metrics.record_operations(self.metrics, sums, spans.lazy(), budgets.COST)
        results = Counter(charged.get_column(policies.RESULT).to_list())
        results.pop(None, None)
        self.metrics.record_verdicts(
            results,
            [(c.name, c.reason_code, c.mode, int(charged.get_column(column).sum())) for c, column in plan.counted],
        )
        if windows.charged:
            levels = plan.budgets.levels(charged)
            forecasts = level_forecasts(plan.budget_names, levels, now_utc())
            self.metrics.record_budgets(levels, plan.budgets.exceeded_counts(charged), forecasts)
        return BatchChanges(set_attributes=changes, events=events)

    def _subjects(self, plan: _Plan, store: BudgetStore) -> Callable[[int, str, set[str], int], dict[str, str]]:
        """How policy_budgets.BudgetPlan.capped maps an attribute budget's subjects: redacted as the
        attribute is, then admitted to the window's max_subjects in the store, else OVERFLOW."""

        def resolve(index: int, label: str, subjects: set[str], expires_at: int) -> dict[str, str]:
            budget = plan.policy.budgets[index]
            published = {s: self._outbound.label(budget.attribute or "", s) for s in subjects}
            family = f"budget|{budget.name}|{label}"
            admitted = plan.caps[index].admitted(store, family, set(published.values()), expires_at)
            return {s: p if p in admitted else OVERFLOW for s, p in published.items()}

        return resolve


EVALUATED = "evaluated"
POSITION = "_position"
# The batch's normalised GenAI columns join the frame under this prefix (no attribute clash).
GENAI_PREFIX = "_genai:"
# Span frame schemas remembered with their expressions; batches mostly repeat a few shapes.
_MAX_SCHEMAS = 64


def _gather_index(spans: pl.DataFrame, rows: int) -> pl.Series:
    """Per batch row, the index of its row in `spans` (the evaluated spans), or null."""
    # In Python: a list of a thousand is built faster than polars answers three calls.
    index: list[int | None] = [None] * rows
    for at, position in enumerate(spans.get_column(POSITION).to_list()):
        index[position] = at
    return pl.Series(index, dtype=pl.UInt32)


def _layered(query: pl.LazyFrame, layers: list[list[pl.Expr]]) -> pl.LazyFrame:
    for layer in layers:
        query = query.with_columns(layer)
    return query


def _merged(*parts: list[list[pl.Expr]]) -> list[list[pl.Expr]]:
    """Layer i of the result holds layer i of each part (parts whose layers are independent)."""
    depth = max(len(part) for part in parts)
    return [[expr for part in parts if i < len(part) for expr in part[i]] for i in range(depth)]


def _rule_column(index: int) -> str:
    return f"_rule{index}"


class OraclePlan(_Plan):
    """One policy file's expressions: built once, not per batch (building them costs as much as
    running them on a 1k-span batch)."""

    def __init__(
        self,
        source: PolicyFile,
        attribution: Attribution,
        labels: tuple[str, ...] = (),
        spec_attribution_check: bool = True,
        outbound: OutboundRedaction = NO_REDACTION,
    ) -> None:
        super().__init__(source, attribution, labels, spec_attribution_check, outbound)
        policy = self.policy
        self.budgets = policy_budgets.BudgetPlan(policy.budgets)
        checks = self.checks
        # Attribute budgets' subjects, capped in the store.
        self.caps = {
            i: StoreCap(b.max_subjects, f"budget {b.name} max_subjects")
            for i, b in enumerate(policy.budgets)
            if b.attribute is not None
        }
        warned, evaluated = self.budgets.warned(), pl.col(EVALUATED)
        if policy_rules.VerdictTable.fits(checks):
            table = policy_rules.VerdictTable(checks)
            # The verdicts are computed over the evaluated spans only.
            verdict = [[table.code(warned, None).alias("_verdict")], table.columns("_verdict")]
        else:
            verdict = [policy_rules.verdict(checks, warned, evaluated)]
        charge = self.budgets.charge_columns()
        # Tags only when some span was charged (which takes a budget).
        tags = self.budgets.tag_columns() if policy.budgets else []
        self._charge_layers = {True: [*charge, *_merged(verdict, tags)], False: [*charge, *verdict]}
        self._outputs = {
            True: [policies.VIOLATIONS, policies.RESULT, policies.REASON_CODE, *budgets.TAGS.values()],
            False: [policies.VIOLATIONS, policies.RESULT, policies.REASON_CODE],
        }
        self._span_layers: dict[tuple, list[list[pl.Expr]]] = {}
        # The frame columns whose presence and type shape the span expressions.
        # (Deduplicated: two dimensions may fall back to one key.)
        sources = list(dict.fromkeys(key for dim in DIMENSIONS for key in attribution.sources(dim)))
        self._attributes = sorted(budget_attributes(policy))
        sources += [key for key in self._attributes if key not in sources]
        self._read_keys = (
            *sources,
            *(RESOURCE_PREFIX + key for key in sources),
            *COST_KEYS,
            policies.PII_COUNT,
            ERROR_TYPE,
            STATUS_CODE,
            budgets.END_TIME,
            log_charges.IN_SPAN,
        )

    def span_layers(self, schema: pl.Schema) -> list[list[pl.Expr]]:
        key = tuple((name, schema.get(name)) for name in self._read_keys)
        layers = self._span_layers.get(key)
        if layers is None:
            if len(self._span_layers) >= _MAX_SCHEMAS:
                self._span_layers.clear()
            layers = self._span_layers[key] = self._build_span_layers(dict(schema))
        return layers

    def _build_span_layers(self, schema: dict[str, pl.DataType]) -> list[list[pl.Expr]]:
        """Per span: dimensions, model, provider, tokens, cost, PII count, error, latency, whether
        it is a GenAI span (evaluated), the rule checks and the budget charges."""
        end = budgets.END_TIME
        has_end = end in schema
        latency = (
            pl.when((pl.col(end) >= pl.col(START_TIME)) & (pl.col(START_TIME) > 0))
            .then((pl.col(end).cast(pl.Int64) - pl.col(START_TIME).cast(pl.Int64)) / 1e9)
            .alias("latency")
            if has_end
            else pl.lit(None, dtype=pl.Float64).alias("latency")
        )
        genai = {name: pl.col(GENAI_PREFIX + name) for name in (MODEL, PROVIDER, TOKENS_INPUT, TOKENS_OUTPUT)}
        # What tells a GenAI span, plus the raw columns the rest is computed from after the filter.
        # (Null and binary columns read as null: not worth carrying.)
        raw = [
            name
            for name in self._read_keys
            if name in schema
            and name not in (*COST_KEYS, START_TIME)
            and (name in (STATUS_CODE, budgets.END_TIME) or schema[name] not in (pl.Null, pl.Binary))
        ]
        head = [
            pl.col(ROW),
            pl.int_range(pl.len(), dtype=pl.UInt32).alias(POSITION),
            *(pl.col(name) for name in (START_TIME, policy_budgets.NOW, *raw)),
            number(schema, budgets.COST, pl.Float64).alias(budgets.COST),
            # Named apart from the raw columns (an attribution fallback key may be "model"), until
            # the raw columns are read.
            pl.coalesce(genai[MODEL], text(schema, "genops.cost.model")).alias("_model"),
            pl.coalesce(genai[PROVIDER], text(schema, "genops.cost.provider")).alias("_provider"),
            genai[TOKENS_INPUT].alias("_tokens_input"),
            genai[TOKENS_OUTPUT].alias("_tokens_output"),
            text(schema, "genops.cost.status").alias("_cost_status"),
        ]
        cost = pl.col(budgets.COST)
        evaluated = pl.any_horizontal(
            pl.col("_model").is_not_null(),
            cost.is_not_null(),
            pl.col("_tokens_input").is_not_null(),
            pl.col("_tokens_output").is_not_null(),
            pl.col("_cost_status").is_not_null(),
        )
        if log_charges.IN_SPAN in schema:  # a log record naming a span: the span is charged
            evaluated &= pl.col(log_charges.IN_SPAN).not_()
        rest = [
            *(pl.col("_" + name).alias(name) for name in ("model", "provider", TOKENS_INPUT, TOKENS_OUTPUT)),
            latency,
            *self.attribution.columns(schema),
            *(
                pl.coalesce(text(schema, key), text(schema, RESOURCE_PREFIX + key)).alias(
                    policy_budgets.attribute_column(key)
                )
                for key in self._attributes
            ),
            number(schema, policies.PII_COUNT, pl.Int64).alias(policies.PII_COUNT),
            _error(schema).alias("error"),
            *policy_budgets.start_columns(has_end),
        ]
        flags = [
            (cost.is_not_null() & (cost > 0)).alias(policy_budgets.PRICED),
            *(policy_rules.rule_check(rule).alias(_rule_column(i)) for i, rule in enumerate(self.policy.rules)),
        ]
        # The first layer is selected from the batch frame, the second tells the spans kept, the
        # others are added to those.
        return [head, [evaluated.alias(EVALUATED)], rest, flags, *self.budgets.span_columns()]

    def charge_layers(self, charged: bool) -> list[list[pl.Expr]]:
        return self._charge_layers[charged]

    def outputs(self, charged: bool) -> list[str]:
        return self._outputs[charged]


def _error(schema: dict[str, pl.DataType]) -> pl.Expr:
    failed = text(schema, ERROR_TYPE).is_not_null()
    if STATUS_CODE in schema:  # 2 = STATUS_CODE_ERROR
        failed |= pl.col(STATUS_CODE).cast(pl.Int64, strict=False).fill_null(0) == 2
    return failed


def oracle_of(stage: PolicyStage) -> OraclePolicyStage:
    """`stage` itself, built as it was (same settings; its store and metrics are the caller's
    business), with its class switched to the oracle."""
    stage.__class__ = OraclePolicyStage
    stage._plan = None
    return stage  # type: ignore[return-value]
