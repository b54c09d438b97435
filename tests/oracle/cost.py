"""The cost stage's polars query: the differential oracle of the native cost path
(processor/cost_native.py, processor/native/src/cost.rs), moved here from processor/cost.py when
the native path became the stage's one engine (issue 19).

`OracleCostStage` is a CostStage whose batches are priced by that query instead (the same table,
counters, billing dimensions and SDK cost handling, which stay the stage's own).
"""

from __future__ import annotations

import polars as pl

from processor import genai_attributes as ga
from processor.cost import (
    _ESTIMATED,
    _ESTIMATED_KEY,
    _KEY,
    _PAIR_KEY,
    _PRICED,
    _START,
    _TODO,
    _TOTAL,
    _UNKNOWN,
    _UNPRICED,
    _WORK,
    _WORK_SDK_PRICED,
    COST_CURRENCY,
    COST_PROVIDER,
    COST_STATUS,
    COST_TOTAL,
    COST_VERSION,
    ESTIMATED,
    PRICED,
    PRICED_PROVIDERS,
    UNPRICED,
    WRITTEN,
    CostStage,
    KnownPairs,
    _first_and_last,
    _run,
    price_steps,
)
from processor.decode import START_TIME, TelemetryBatch
from processor.pipeline import ENGINE_POLARS, BatchChanges
from processor.pricing_table import ANY_PROVIDER, PriceSlots, PricingTable


class OracleCostStage(CostStage):
    """The cost stage with each batch priced by the polars query."""

    _oracle_known: KnownPairs | None = None

    def _priced_changes(self, batch: TelemetryBatch, table: PricingTable) -> BatchChanges:
        # One query per batch (two the first time a batch brings pairs the table has not seen):
        # normalize, map spans to price groups, pick the price rows, compute and shape the columns.
        self._refresh_age()
        known = self._oracle_known
        if known is None or known.table is not table:
            known = self._oracle_known = KnownPairs.of(table, estimate_near=self._estimate_near)
        # Spans that all start on one day (nearly every batch) need no date checks: see slots_for.
        first, last = _first_and_last(batch.column_array(START_TIME))
        slots = table.slots_for(first, last)
        out = ga.collect(_run(self._work(batch), self._steps(known, slots)))
        if out.get_column(_UNKNOWN).any():
            known = self._oracle_known = known.adding(out.get_column(_KEY).drop_nulls().unique().to_list())
            work = out.select(*ga.COLUMNS, _START, _TODO, _KEY).lazy()
            out = ga.collect(_run(work, self._steps(known, slots)))
        if "genai" not in batch.derived:
            batch.derived["genai"] = pl.DataFrame([out.get_column(c) for c in ga.COLUMNS])
        if out.get_column(_KEY).null_count() == out.height:  # nothing to price: not even an unpriced status
            return BatchChanges(engine=ENGINE_POLARS)
        self._count(out, known)
        batch.derived[PRICED_PROVIDERS] = set(out.get_column(COST_PROVIDER).drop_nulls().unique().to_list())
        return BatchChanges(set_attributes={name: out.get_column(name) for name in WRITTEN}, engine=ENGINE_POLARS)

    def _steps(self, known: KnownPairs, slots: PriceSlots) -> list[list[pl.Expr]]:
        cached = known.queries.get(id(slots))
        if cached is not None and cached[0] is slots:
            return cached[1]
        steps = [*price_steps(known, slots), self._written(known.table.version)]
        if len(known.queries) >= 16:
            known.queries.clear()
        known.queries[id(slots)] = (slots, steps)
        return steps

    def _work(self, batch: TelemetryBatch) -> pl.LazyFrame:
        """The normalized columns plus _START, _TODO (priceable and not priced by the SDK) and _KEY."""
        frame = batch.frame
        respect_sdk = not self.config.override_sdk_costs and COST_TOTAL in frame.columns
        extra = _WORK_SDK_PRICED if respect_sdk else _WORK
        cached = batch.derived.get("genai")
        if cached is None:
            work = ga.normalize_lazy(frame, extra)
        else:
            carry = [frame[START_TIME], *([frame[COST_TOTAL]] if respect_sdk else [])]
            work = cached.hstack(carry).lazy().select(*ga.COLUMNS, *extra)  # type: ignore[attr-defined]
        return work.with_columns(pl.when(pl.col(_TODO)).then(_PAIR_KEY).alias(_KEY))

    @staticmethod
    def _written(version: str) -> list[pl.Expr]:
        """What the stage writes that the cost steps have not (their columns are null when unpriced)."""
        priced = pl.col(_PRICED)
        estimated = priced & pl.col(_ESTIMATED)
        # A provider-agnostic ("*") entry priced it: report the provider the span named.
        provider = (
            pl.when(pl.col("entry_provider") == ANY_PROVIDER)
            .then(pl.coalesce(ga.PROVIDER, pl.lit(ANY_PROVIDER)))
            .otherwise(pl.col("entry_provider"))
        )
        return [
            _TOTAL.alias(COST_TOTAL),
            pl.when(priced).then(pl.lit("USD")).alias(COST_CURRENCY),
            provider.alias(COST_PROVIDER),
            pl.when(priced).then(pl.lit(version)).alias(COST_VERSION),
            pl.when(estimated)
            .then(pl.lit(ESTIMATED))
            .when(priced)
            .then(pl.lit(PRICED))
            .when(pl.col(_TODO))
            .then(pl.lit(UNPRICED))
            .alias(COST_STATUS),
            pl.when(pl.col(_TODO) & ~priced).then(pl.col(_KEY)).alias(_UNPRICED),
            pl.when(estimated).then(pl.col(_KEY)).alias(_ESTIMATED_KEY),
        ]

    def _count(self, out: pl.DataFrame, known: KnownPairs) -> None:
        providers = out.get_column(COST_PROVIDER)
        estimated = out.get_column(_ESTIMATED_KEY)
        if estimated.null_count() != estimated.len():
            # Estimated spans are counted by model, never as priced.
            providers = providers.filter(out.get_column(COST_STATUS) == PRICED)
            for key, count in estimated.value_counts().iter_rows():
                if key is not None:
                    self.metrics.estimated.labels(*self._label(*known.pairs[key])).inc(count)
        self._count_priced(providers.value_counts().iter_rows())
        unpriced = out.get_column(_UNPRICED)
        if unpriced.null_count() == unpriced.len():
            return
        for key, count in unpriced.value_counts().iter_rows():
            if key is not None:
                self.metrics.unpriced.labels(*self._label(*known.pairs[key])).inc(count)
