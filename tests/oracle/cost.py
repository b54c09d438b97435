"""The cost stage's polars query: the differential oracle of the native cost path
(processor/stages/cost/native.py, processor/native/src/stages/cost.rs), moved here from
processor/stages/cost/stage.py when
the native path became the stage's one engine (issue 19).

`OracleCostStage` is a CostStage whose batches are priced by that query instead (the same table,
counters, billing dimensions and SDK cost handling, which stay the stage's own).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from processor.core import genai_attributes as ga
from processor.core.contract import ENGINE_POLARS, BatchChanges
from processor.core.decode import START_TIME, TelemetryBatch
from processor.core.span_values import CostCheck
from processor.stages.cost import request_fallback
from processor.stages.cost.pricing_table import (
    ANY_PROVIDER,
    INT64_MAX,
    INT64_MIN,
    PriceSlots,
    PricingTable,
    priced_match,
)
from processor.stages.cost.stage import (
    COST_COMPUTED,
    COST_CURRENCY,
    COST_MODEL,
    COST_PARTS,
    COST_PROVIDER,
    COST_STATUS,
    COST_TOTAL,
    COST_VERSION,
    ESTIMATED,
    MAX_KNOWN_PAIRS,
    MILLION,
    PRICED,
    PRICED_PROVIDERS,
    UNPRICED,
    WRITTEN,
    CostStage,
    _first_and_last,
)

# Internal columns of the cost query (the normalized GenAI columns come first, then these).
_START = "_cost_start"
_TODO = "_cost_todo"
_KEY = "_cost_pair"
_GROUP = "_cost_group"
_ROW = "_cost_row"
_START_LO = "_cost_start_lo"
_PROMPT = "_cost_prompt"
_PRICED = "_cost_priced"
_PRICES = "_cost_prices"
_AT = "_cost_at"
_START_HI = "_cost_start_hi"
_UNKNOWN = "_cost_unknown"
_UNPRICED = "_cost_unpriced"
_ESTIMATED = "_cost_estimated"
_ESTIMATED_KEY = "_cost_estimated_pair"


def pair_key(provider: pl.Expr, model: pl.Expr) -> pl.Expr:
    """One string per (provider, model), nulls included, that pair_of reads back: the provider is
    length-prefixed, so no choice of names can make two pairs share a key."""
    provider_part = pl.coalesce(
        pl.concat_str(provider.str.len_chars().cast(pl.String), pl.lit(":"), provider), pl.lit("~")
    )
    model_part = pl.coalesce(pl.concat_str(pl.lit("="), model), pl.lit("~"))
    return pl.concat_str(provider_part, model_part)


_PAIR_KEY = pair_key(pl.col(ga.PROVIDER), pl.col(ga.MODEL))


def pair_of(key: str) -> tuple[str | None, str | None]:
    if key.startswith("~"):
        provider, rest = None, key[1:]
    else:
        length, _, rest = key.partition(":")
        provider, rest = rest[: int(length)], rest[int(length) :]
    return provider, (None if rest == "~" else rest[1:])


@dataclass(frozen=True)
class KnownPairs:
    """The (provider, model) pairs already resolved against one table, sorted by key, so a batch maps
    its spans to price groups with a binary search and a gather (no join, no Python per span).
    Immutable: a batch adding pairs swaps in a new one, so concurrent batches never see it change."""

    table: PricingTable
    keys: pl.Series  # String, sorted
    groups: pl.Series  # UInt32, the price group of each key (null: no entry matches)
    estimated: pl.Series  # Boolean, per key: the group is a family the model is only near
    pairs: dict[str, tuple[str | None, str | None]]
    estimate_near: bool
    # The stage's query steps for these pairs, per slots (built once: building costs as much as running).
    queries: dict[int, tuple[PriceSlots, list[list[pl.Expr]]]] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, table: PricingTable, keys: Iterable[str] = (), estimate_near: bool = True) -> KnownPairs:
        ordered = pl.Series(_KEY, sorted(set(keys)), dtype=pl.String).sort()
        pairs = {key: pair_of(key) for key in ordered.to_list()}
        matches = [priced_match(table, *pair, estimate_near=estimate_near) for pair in pairs.values()]
        groups = pl.Series(_GROUP, [None if m is None else m.group for m in matches], dtype=pl.UInt32)
        estimated = pl.Series(_ESTIMATED, [m is not None and m.near for m in matches], dtype=pl.Boolean)
        return cls(table, ordered, groups, estimated, pairs, estimate_near)

    def adding(self, keys: list[str]) -> KnownPairs:
        """These pairs (a batch's) known too; past MAX_KNOWN_PAIRS, only these."""
        if len(self.pairs.keys() | set(keys)) > MAX_KNOWN_PAIRS:
            return KnownPairs.of(self.table, keys, self.estimate_near)
        return KnownPairs.of(self.table, [*self.pairs, *keys], self.estimate_near)

    def steps(self) -> list[list[pl.Expr]]:
        """_GROUP per span (null when unpriced), _ESTIMATED (its group is a family the model is only
        near) and _UNKNOWN (a span whose pair is not known yet)."""
        key = pl.col(_KEY)
        if self.keys.is_empty():
            return [
                [
                    pl.lit(None, dtype=pl.UInt32).alias(_GROUP),
                    pl.lit(False).alias(_ESTIMATED),
                    key.is_not_null().alias(_UNKNOWN),
                ]
            ]
        at = pl.col(_AT)
        known = pl.lit(self.keys).gather(at) == key
        return [
            [pl.lit(self.keys).search_sorted(key).clip(upper_bound=self.keys.len() - 1).alias(_AT)],
            [
                pl.when(known).then(pl.lit(self.groups).gather(at)).alias(_GROUP),
                (known & pl.lit(self.estimated).gather(at)).fill_null(False).alias(_ESTIMATED),
                (key.is_not_null() & ~known).alias(_UNKNOWN),
            ],
        ]


def _priceable() -> pl.Expr:
    return pl.any_horizontal(pl.col(c).is_not_null() for c in ga.TOKEN_COLUMNS)


def _work_columns(todo: pl.Expr) -> list[pl.Expr]:
    return [pl.col(START_TIME).cast(pl.Int64, strict=False).alias(_START), todo.alias(_TODO)]


# _START and _TODO: spans with token counts, less those the SDK priced unless told to override
# (ours for those is computed apart, uncounted: see _ours_beside_sdk).
_WORK = _work_columns(_priceable())
_WORK_SDK_PRICED = _work_columns(_priceable() & pl.col(COST_TOTAL).is_null())


def _cost_steps(slots: PriceSlots) -> list[list[pl.Expr]]:
    """_PRICED, the genops.cost.<part> columns, entry_provider and genops.cost.model of the price row
    _ROW (nulls when none), in steps so that no expression nests another's (see row_steps)."""
    row = pl.col(_ROW)
    fetch = [
        pl.lit(slots.prices).gather(row).alias(_PRICES),
        row.is_not_null().alias(_PRICED),
        pl.col(ga.TOKENS_INPUT).fill_null(0).alias("_cost_input"),
        pl.col(ga.TOKENS_CACHE_READ).fill_null(0).alias("_cost_cache_read"),
        pl.col(ga.TOKENS_CACHE_WRITE).fill_null(0).alias("_cost_cache_write"),
        pl.col(ga.TOKENS_REASONING).fill_null(0).alias("_cost_reasoning"),
        pl.coalesce(ga.TOKENS_OUTPUT, ga.TOKENS_REASONING, pl.lit(0)).alias("_cost_output"),
    ]

    def price(name: str) -> pl.Expr:
        return pl.col(_PRICES).struct.field(f"p_{name}")

    cache_read, cache_write = pl.col("_cost_cache_read"), pl.col("_cost_cache_write")
    reasoning = pl.col("_cost_reasoning")
    uncached = (pl.col("_cost_input") - cache_read - cache_write).clip(lower_bound=0)
    output = (pl.col("_cost_output") - reasoning).clip(lower_bound=0)
    parts = [
        (uncached * price("input") / MILLION).alias(_part("input")),
        (cache_read * price("cache_read") / MILLION).alias(_part("cache_read")),
        (cache_write * price("cache_write") / MILLION).alias(_part("cache_write")),
        (reasoning * price("reasoning") / MILLION).alias(_part("reasoning")),
        (output * price("output") / MILLION).alias(_part("output")),
        price("request").alias("_cost_p_request"),
        pl.col(_PRICES).struct.field("entry_provider").alias("entry_provider"),
        pl.col(_PRICES).struct.field("entry_model").alias(COST_MODEL),
    ]
    return [fetch, parts]


def _part(name: str) -> str:
    return f"genops.cost.{name}"


# The parts and the per-request fee, once the parts are computed (sum_horizontal skips nulls).
_TOTAL = pl.when(pl.col(_PRICED)).then(pl.sum_horizontal(*map(_part, COST_PARTS), "_cost_p_request"))


def price_steps(known: KnownPairs, slots: PriceSlots) -> list[list[pl.Expr]]:
    """Steps adding _GROUP, _UNKNOWN, _ROW and the cost columns to the columns normalize makes plus
    _START and _KEY."""
    start = pl.col(_START)
    *before, last = known.steps()
    last = [*last, pl.col(ga.TOKENS_INPUT).fill_null(0).alias(_PROMPT)]
    if slots.dated:
        last += [start.fill_null(INT64_MIN).alias(_START_LO), start.fill_null(INT64_MAX).alias(_START_HI)]
    return [*before, last, *slots.row_steps(_GROUP, _START_LO, _START_HI, _PROMPT, _ROW), *_cost_steps(slots)]


def _run(query: pl.LazyFrame, steps: list[list[pl.Expr]]) -> pl.LazyFrame:
    for step in steps:
        query = query.with_columns(step)
    return query


def cost_frame(normalized: pl.DataFrame, start_ns: pl.Series, table: PricingTable) -> pl.DataFrame:
    """Per row of `normalized` (genai_attributes.normalize output): the cost parts, or nulls.

    Returns columns priceable (Boolean: the row has token counts), priced (Boolean: a price was
    found), estimated (Boolean: that price is a near family's), cost_<part>, cost_total (Float64),
    entry_provider, entry_model (String); same rows, same order.
    """
    work = normalized.lazy().with_columns(
        start_ns.cast(pl.Int64, strict=False).alias(_START),
        _priceable().alias("priceable"),
    )
    work = work.with_columns(
        pl.when(pl.col("priceable")).then(pair_key(pl.col(ga.PROVIDER), pl.col(ga.MODEL))).alias(_KEY)
    )
    keys = ga.collect(work.select(pl.col(_KEY).drop_nulls().unique())).to_series().to_list()
    return ga.collect(
        _run(work, price_steps(KnownPairs.of(table, keys), table.slots)).select(
            "priceable",
            "entry_provider",
            pl.col(COST_MODEL).alias("entry_model"),
            *(
                pl.col(_part(p)).alias(f"cost_{p}")
                for p in ("input", "cache_read", "cache_write", "reasoning", "output")
            ),
            _TOTAL.alias("cost_total"),
            pl.col(_PRICED).alias("priced"),
            (pl.col(_PRICED) & pl.col(_ESTIMATED)).alias("estimated"),
        )
    )


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
        if self._estimate_near:
            out = self._with_request_fallback(batch, out, slots)
        self._count(out, known)
        batch.derived[PRICED_PROVIDERS] = set(out.get_column(COST_PROVIDER).drop_nulls().unique().to_list())
        return BatchChanges(set_attributes={name: out.get_column(name) for name in WRITTEN}, engine=ENGINE_POLARS)

    def _with_request_fallback(self, batch: TelemetryBatch, out: pl.DataFrame, slots: PriceSlots) -> pl.DataFrame:
        """`out` with the spans request_fallback.plan picks priced by their request model in a
        second query (counted as estimated by their own pair, never as unpriced)."""
        table = self.table
        genai = out.select(ga.COLUMNS)
        fallback = request_fallback.plan(
            table, genai, out.get_column(COST_STATUS), request_fallback.request_models(batch)
        )
        if fallback is None:
            return out
        # The fallback's spans alone, with their request model: as the native engine's second pass.
        work = (
            request_fallback.repriced_genai(genai, fallback)
            .hstack([out.get_column(_START)[fallback.rows]])
            .lazy()
            .with_columns(pl.lit(True).alias(_TODO))
            .with_columns(_PAIR_KEY.alias(_KEY))
        )
        known = self._oracle_known
        assert known is not None
        second = ga.collect(_run(work, self._steps(known, slots)))
        if second.get_column(_UNKNOWN).any():
            known = self._oracle_known = known.adding(second.get_column(_KEY).drop_nulls().unique().to_list())
            second = ga.collect(_run(work, self._steps(known, slots)))
        kept = request_fallback.repriced(fallback, second.get_column(COST_STATUS), UNPRICED)
        if not kept:
            return out
        first = {name: out.get_column(name) for name in WRITTEN}
        again = {name: second.get_column(name) for name in WRITTEN}
        written = request_fallback.merged(first, again, fallback, kept, COST_STATUS, ESTIMATED)
        rows = pl.Series([False] * out.height).scatter([fallback.spans[i].row for i in kept], True)
        return out.with_columns(
            *written.values(),
            pl.when(~rows).then(pl.col(_UNPRICED)).alias(_UNPRICED),
            pl.when(rows).then(pl.col(_KEY)).otherwise(pl.col(_ESTIMATED_KEY)).alias(_ESTIMATED_KEY),
        )

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

    def _ours_beside_sdk(self, batch: TelemetryBatch, table: PricingTable, sdk: object) -> pl.Series | None:
        """Our cost of the spans whose SDK cost stands (null elsewhere): computed apart from the
        batch query, which leaves them out, and not counted in the priced/unpriced metrics."""
        genai = batch.derived.get("genai")
        if not isinstance(sdk, CostCheck) or not isinstance(genai, pl.DataFrame):
            return None
        rows = sdk.usable.is_not_null().arg_true()
        if rows.is_empty():
            return None
        # Over the whole batch, then those rows, as the stage prices them: polars divides by a
        # million element by element in a one-row frame and by its reciprocal otherwise, so a
        # frame of the SDK rows alone would differ in the last bit when there is one.
        starts = batch.column_series(START_TIME)
        start = pl.Series([None] * genai.height, dtype=pl.Int64) if starts is None else starts
        found = cost_frame(genai, start, table)
        total = found.get_column("cost_total")
        if not self._estimate_near:
            total = found.select(pl.when(~pl.col("estimated")).then(pl.col("cost_total"))).to_series()
        ours = pl.Series(COST_COMPUTED, [None] * sdk.usable.len(), dtype=pl.Float64)
        return ours.scatter(rows, total.gather(rows))
