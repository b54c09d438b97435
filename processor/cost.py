"""The cost stage: USD cost of GenAI spans from their token counts and a pricing table.

Cost is a join, not a loop over spans: the distinct (provider, model) pairs of a batch are
resolved against the table (cached per table), joined to the table's price rows, the right row
picked per span by start date and prompt size (tiers), and the cost computed with polars.
With the native extension built, the same query runs in one Rust call per batch
(processor/cost_native.py); the polars query below stays the fallback and its reference.

Billing rules (tokens as normalized by genai_attributes, where input includes cached tokens and
output includes reasoning tokens):
- input       = (input - cache_read - cache_write) * input price
- cache_read  = cache_read * cache_read price (default: input price)
- cache_write = cache_write * cache_write price (default: input price)
- reasoning   = reasoning * reasoning price (default: output price)
- output      = (output - reasoning) * output price; reasoning is billed once, in its own part
- total       = the five parts + the per-request fee
Tiers ("cliff" pricing, as Gemini and Claude long context bill): when the prompt (all input tokens)
exceeds a tier's size, that tier's prices apply to every token of the request.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from processor import billing_dimensions
from processor import genai_attributes as ga
from processor.config import CostConfig
from processor.cost_native import NativeCost, native_cost_available
from processor.decode import LOGS, START_TIME, TRACES, TelemetryBatch, WantedKeys
from processor.outbound import NO_REDACTION, OutboundRedaction
from processor.pipeline import ENGINE_NATIVE, ENGINE_POLARS, BatchChanges
from processor.pricing_table import (
    ANY_PROVIDER,
    INT64_MAX,
    INT64_MIN,
    PriceSlots,
    PricingTable,
    default_table_path,
    load_table,
    priced_match,
)
from processor.reload import ReloadMetrics, Watcher
from processor.span_values import SDK_COST_KEYS, SDK_COSTS, CostCheck, InvalidValueMetrics, check_batch

log = structlog.get_logger(__name__)

COST_TOTAL = "genops.cost.total"
COST_PARTS = ("input", "output", "cache_read", "cache_write", "reasoning")
COST_CURRENCY = "genops.cost.currency"
COST_PROVIDER = "genops.cost.provider"
COST_MODEL = "genops.cost.model"
COST_VERSION = "genops.cost.pricing_version"
COST_STATUS = "genops.cost.status"
PRICED = "priced"
UNPRICED = "unpriced"
# An SDK cost that is not a finite amount at or above zero, on a span the table could not price.
INVALID_SDK_COST = "invalid_sdk_cost"
# Priced with the prices of a family the model is only near (processor/model_versions.py).
ESTIMATED = "estimated"
# Ours, on a span that came with an SDK cost, and the SDK's minus ours.
COST_COMPUTED = "genops.cost.computed_total"
COST_SDK_DIFFERENCE = "genops.cost.sdk_difference"
# Unpriced-span metric labels: beyond this many distinct (provider, model) pairs, new ones are
# counted as "other" so a client sending random model names cannot blow up the metric series.
MAX_UNPRICED_LABELS = 200
MAX_LABEL_LENGTH = 64
MILLION = 1_000_000.0
# What the stage writes, in this order.
WRITTEN = (
    COST_TOTAL,
    *(f"genops.cost.{part}" for part in COST_PARTS),
    COST_CURRENCY,
    COST_PROVIDER,
    COST_MODEL,
    COST_VERSION,
    COST_STATUS,
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
# Known (provider, model) pairs are kept per table up to this many; past it the set restarts from
# the batch at hand, so a client sending random model names costs time, never unbounded memory.
MAX_KNOWN_PAIRS = 4096
# batch.derived key: the providers (as written to genops.cost.provider) that priced spans of the batch.
PRICED_PROVIDERS = "cost.priced_providers"


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


@dataclass
class CostMetrics:
    unpriced: Counter
    priced: Counter
    estimated: Counter
    table_info: Gauge
    table_age: Gauge
    reload: ReloadMetrics

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CostMetrics:
        return cls(
            unpriced=Counter(
                "genops_cost_unpriced_spans",
                "GenAI spans with token counts whose model has no price in the table.",
                ["provider", "model"],
                registry=registry,
            ),
            priced=Counter("genops_cost_priced_spans", "GenAI spans priced.", ["provider"], registry=registry),
            estimated=Counter(
                "genops_cost_estimated_spans",
                "GenAI spans whose model is only near a priced family, priced with the family's prices.",
                ["provider", "model"],
                registry=registry,
            ),
            table_info=Gauge(
                "genops_pricing_table_info",
                "The pricing table in use (value 1), by version and model count.",
                ["version", "models"],
                registry=registry,
                multiprocess_mode="livemax",
            ),
            table_age=Gauge(
                "genops_pricing_table_age_seconds",
                "Seconds since the newest as_of date of the pricing table in use (when its prices were "
                "last checked); updated on every load and batch.",
                registry=registry,
                multiprocess_mode="livemax",
            ),
            reload=ReloadMetrics("genops_pricing", "pricing table", registry),
        )


class CostStage:
    name = "cost"
    # GenAI events sent as logs (gen_ai.client.inference.operation.details) carry model and usage
    # as spans do: any log record with token counts is priced like a span, by its time.
    signals = frozenset({TRACES, LOGS})

    def __init__(
        self,
        config: CostConfig,
        registry: CollectorRegistry,
        watch: bool = True,
        outbound: OutboundRedaction = NO_REDACTION,
    ) -> None:
        self.config = config
        self.outbound = outbound
        self.metrics = CostMetrics.create(registry)
        self._invalid = InvalidValueMetrics.of(registry)
        self._table: PricingTable | None = None
        self._checked_at: float | None = None
        self._known: KnownPairs | None = None
        self._priced: dict[str, Counter] = {}
        self._labels: set[tuple[str, str]] = set()
        self._labels_lock = threading.Lock()
        # The native path (cost_native.py) when the extension has it; the polars query otherwise.
        self._estimate_near = config.near_matches != "unpriced"
        self._native = NativeCost(WRITTEN, MAX_KNOWN_PAIRS, self._estimate_near) if native_cost_available() else None
        path = config.pricing_file or default_table_path()
        # Loads (and validates) now: a broken table raises here, so serve refuses to start.
        self.watcher = Watcher(
            path, load_table, self._use, config.reload_interval_seconds, self.metrics.reload, name="pricing"
        )
        if watch:
            self.watcher.start()

    @property
    def table(self) -> PricingTable:
        assert self._table is not None
        return self._table

    def _use(self, table: PricingTable) -> None:
        previous = self._table
        self._table = table  # one reference swap: a batch in flight keeps the table it started with
        if previous is not None:
            self.metrics.table_info.remove(previous.version, str(previous.model_count))
        self.metrics.table_info.labels(table.version, str(table.model_count)).set(1)
        self._checked_at = _midnight(table.checked_on)
        self._refresh_age()
        log.info("pricing table in use", version=table.version, models=table.model_count, path=str(self.watcher_path))

    @property
    def watcher_path(self) -> str:
        return self.config.pricing_file or str(default_table_path())

    def close(self) -> None:
        self.watcher.stop()

    def wanted_keys(self) -> WantedKeys:
        return WantedKeys(item=ga.GENAI_KEYS.item | {*SDK_COST_KEYS, *billing_dimensions.SOURCES})

    def _refresh_age(self) -> None:
        if self._checked_at is not None:
            self.metrics.table_age.set(max(time.time() - self._checked_at, 0.0))

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        # Bad SDK costs and times are taken out of the batch's columns first: such a span is
        # priced from its tokens (or left unpriced), and the others never see them.
        if batch.signal == LOGS:
            if not any(batch.column_type(key) is not None for keys in ga.TOKEN_SOURCES.values() for key in keys):
                return BatchChanges()  # no record reports usage: nothing to price
            _with_record_times(batch)
        check_batch(batch)
        self._invalid.record(batch)
        table = self.table
        priced = self._priced_changes(batch, table)
        providers = batch.derived.get(PRICED_PROVIDERS)
        priced = billing_dimensions.apply_dimensions(
            batch, priced, table, self._group_of(table), providers if isinstance(providers, set) else None
        )
        sdk = batch.derived.get(SDK_COSTS)
        ours = None if self.config.override_sdk_costs else self._ours_beside_sdk(batch, table, sdk)
        return _with_sdk_costs(priced, sdk, ours)

    def _ours_beside_sdk(self, batch: TelemetryBatch, table: PricingTable, sdk: object) -> pl.Series | None:
        """Our cost of the spans whose SDK cost stands (null elsewhere): computed apart from the
        batch query, which leaves them out, and not counted in the priced/unpriced metrics."""
        genai = batch.derived.get("genai")
        if not isinstance(sdk, CostCheck) or not isinstance(genai, pl.DataFrame):
            return None
        rows = sdk.usable.is_not_null().arg_true()
        if rows.is_empty():
            return None
        starts = batch.column_series(START_TIME)
        start = pl.Series([None] * len(rows), dtype=pl.Int64) if starts is None else starts.gather(rows)
        found = cost_frame(genai[rows], start, table)
        total = found.get_column("cost_total")
        if not self._estimate_near:
            total = found.select(pl.when(~pl.col("estimated")).then(pl.col("cost_total"))).to_series()
        ours = pl.Series(COST_COMPUTED, [None] * sdk.usable.len(), dtype=pl.Float64)
        return ours.scatter(rows, total)

    def _group_of(self, table: PricingTable) -> Callable[[str | None, str | None], int | None]:
        def group_of(provider: str | None, model: str | None) -> int | None:
            found = priced_match(table, provider, model, estimate_near=self._estimate_near)
            return None if found is None else found.group

        return group_of

    def _priced_changes(self, batch: TelemetryBatch, table: PricingTable) -> BatchChanges:
        # One query per batch (two the first time a batch brings pairs the table has not seen):
        # normalize, map spans to price groups, pick the price rows, compute and shape the columns.
        self._refresh_age()
        known = self._known
        if known is None or known.table is not table:
            known = self._known = KnownPairs.of(table, estimate_near=self._estimate_near)
        # Spans that all start on one day (nearly every batch) need no date checks: see slots_for.
        first, last = _first_and_last(batch.column_array(START_TIME))
        slots = table.slots_for(first, last)
        if self._native is not None and native_cost_available():
            done = self._process_native(batch, table, slots)
            if done is not None:
                return done.with_engine(ENGINE_NATIVE)
        out = ga.collect(_run(self._work(batch), self._steps(known, slots)))
        if out.get_column(_UNKNOWN).any():
            known = self._known = known.adding(out.get_column(_KEY).drop_nulls().unique().to_list())
            work = out.select(*ga.COLUMNS, _START, _TODO, _KEY).lazy()
            out = ga.collect(_run(work, self._steps(known, slots)))
        if "genai" not in batch.derived:
            batch.derived["genai"] = pl.DataFrame([out.get_column(c) for c in ga.COLUMNS])
        if out.get_column(_KEY).null_count() == out.height:  # nothing to price: not even an unpriced status
            return BatchChanges(engine=ENGINE_POLARS)
        self._count(out, known)
        batch.derived[PRICED_PROVIDERS] = set(out.get_column(COST_PROVIDER).drop_nulls().unique().to_list())
        return BatchChanges(set_attributes={name: out.get_column(name) for name in WRITTEN}, engine=ENGINE_POLARS)

    def _process_native(self, batch: TelemetryBatch, table: PricingTable, slots: PriceSlots) -> BatchChanges | None:
        """The batch through the native path (cost_native.py); None when that path does not take it."""
        assert self._native is not None
        costs = self._native.run(
            batch,
            batch.derived.get("genai"),  # type: ignore[arg-type]
            table,
            slots,
            sdk_column=None if self.config.override_sdk_costs else COST_TOTAL,
        )
        if costs is None:
            return None
        if "genai" not in batch.derived:
            batch.derived["genai"] = costs.genai
        if costs.written is None:  # nothing to price: not even an unpriced status
            return BatchChanges()
        self._count_priced(costs.priced)
        batch.derived[PRICED_PROVIDERS] = {provider for provider, _ in costs.priced}
        for provider, model, count in costs.unpriced:
            self.metrics.unpriced.labels(*self._label(provider, model)).inc(count)
        for provider, model, count in costs.estimated:
            self.metrics.estimated.labels(*self._label(provider, model)).inc(count)
        return BatchChanges(set_attributes=costs.written, arrow=costs.written_arrow)

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

    def _count_priced(self, counts: Iterable[tuple[str | None, int]]) -> None:
        for provider, count in counts:
            if provider is not None:
                counter = self._priced.get(provider)
                if counter is None:  # labels() takes a lock and builds a key: once per provider
                    if len(self._priced) >= MAX_UNPRICED_LABELS:
                        self._priced.clear()
                    published = self.outbound.label(ga.GENOPS_PROVIDER, provider)[:MAX_LABEL_LENGTH]
                    counter = self._priced[provider] = self.metrics.priced.labels(provider=published)
                counter.inc(count)

    def _label(self, provider: str | None, model: str | None) -> tuple[str, str]:
        # The span's own provider and model, so redacted as those attributes are (an API key sent
        # as the model name is masked in the trace and must not come out as a label).
        label = (
            self.outbound.label(ga.GENOPS_PROVIDER, provider or "unknown")[:MAX_LABEL_LENGTH],
            self.outbound.label(ga.GENOPS_MODEL, model or "unknown")[:MAX_LABEL_LENGTH],
        )
        with self._labels_lock:
            if label in self._labels:
                return label
            if len(self._labels) < MAX_UNPRICED_LABELS:
                self._labels.add(label)
                return label
        return ("other", "other")


def _with_sdk_costs(changes: BatchChanges, sdk: object, ours_beside: pl.Series | None) -> BatchChanges:
    """The stage's changes and the SDK's costs together.

    A span with a usable SDK cost keeps it as genops.cost.total unless `override_sdk_costs` (then
    the stage priced it and ours is the total); either way, where we price it too, ours is written
    as genops.cost.computed_total and the SDK's minus ours as genops.cost.sdk_difference, so price
    drift shows. `ours_beside`: ours for the spans whose SDK cost stands (None: overriding, or
    none). An SDK cost that came as text or under another key is written as the number in
    genops.cost.total; a span whose SDK cost was unusable and that the table could not price gets
    the `invalid_sdk_cost` status."""
    if not isinstance(sdk, CostCheck):
        return changes
    has_sdk = sdk.usable.is_not_null()
    if not has_sdk.any() and not sdk.ignored.any():
        return changes
    written = dict(changes.set_attributes)
    arrow = dict(changes.arrow)
    rows = sdk.usable.len()
    rewrite = sdk.rewrite if sdk.rewrite is not None else pl.Series([sdk.was_text] * rows, dtype=pl.Boolean)
    total = written.get(COST_TOTAL, pl.Series(COST_TOTAL, [None] * rows, dtype=pl.Float64))
    status = written.get(COST_STATUS, pl.Series(COST_STATUS, [None] * rows, dtype=pl.String))
    ours = total if ours_beside is None else ours_beside
    frame = pl.DataFrame(
        {
            "total": total,
            "ours": ours,
            "status": status,
            "sdk": sdk.usable,
            "has": has_sdk,
            "ignored": sdk.ignored,
            "rewrite": rewrite,
        }
    )
    both = pl.col("has") & pl.col("ours").is_not_null()
    # Ours where we priced it (always, overriding), else the SDK's number where it needs writing.
    new_total = pl.coalesce("total", pl.when(pl.col("rewrite")).then(pl.col("sdk")))
    out = frame.select(
        new_total.alias(COST_TOTAL),
        pl.when(pl.col("ignored") & new_total.is_null())
        .then(pl.lit(INVALID_SDK_COST))
        .otherwise("status")
        .alias(COST_STATUS),
        pl.when(both).then("ours").alias(COST_COMPUTED),
        pl.when(both).then(pl.col("sdk") - pl.col("ours")).alias(COST_SDK_DIFFERENCE),
    )
    for name in (COST_TOTAL, COST_STATUS, COST_COMPUTED, COST_SDK_DIFFERENCE):
        column = out.get_column(name)
        arrow.pop(name, None)  # the Series is the value now: the writer converts it
        if column.null_count() < rows:
            written[name] = column
        else:
            written.pop(name, None)
    return BatchChanges(
        set_attributes=written,
        rewrites=changes.rewrites,
        events=changes.events,
        event_columns=changes.event_columns,
        arrow=arrow,
    )


def _with_record_times(batch: TelemetryBatch) -> None:
    """A log batch's record times (the observed time when a record has none) as the start times
    spans are priced by."""
    if batch.column_array(START_TIME) is not None:
        return
    times = [record.time_unix_nano or record.observed_time_unix_nano for record in batch.items]
    batch.set_column(START_TIME, pl.Series(START_TIME, times, dtype=pl.UInt64))


def _midnight(day: dt.date | None) -> float | None:
    """The day's start, UTC, in Unix seconds."""
    return None if day is None else dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()


def _first_and_last(starts: pa.Array | None) -> tuple[int | None, int | None]:
    """The earliest and latest span start; (None, None) when a start is missing."""
    if starts is None or starts.null_count or not len(starts):
        return None, None
    found = pc.min_max(starts)
    return found["min"].as_py(), found["max"].as_py()


def build_cost_stage(
    config: CostConfig,
    registry: CollectorRegistry,
    *,
    watch: bool = True,
    outbound: OutboundRedaction = NO_REDACTION,
) -> CostStage:
    """The cost stage, its pricing table loaded and validated (PricingError if it is broken).

    watch=False skips the reload thread (validate-config only needs the table checked).
    """
    return CostStage(config, registry, watch=watch, outbound=outbound)
