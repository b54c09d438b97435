"""The cost stage: USD cost of GenAI spans from their token counts and a pricing table.

Cost is a join, not a loop over spans: the distinct (provider, model) pairs of a batch are
resolved against the table (cached per table), joined to the table's price rows, the right row
picked per span by start date and prompt size (tiers), and the cost computed with polars.

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

import threading
from dataclasses import dataclass

import polars as pl
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from processor import genai_attributes as ga
from processor.config import CostConfig
from processor.decode import START_TIME, TRACES, TelemetryBatch, WantedKeys
from processor.pipeline import BatchChanges
from processor.pricing_table import ANY_PROVIDER, PricingTable, default_table_path, load_table
from processor.reload import ReloadMetrics, Watcher

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
# Unpriced-span metric labels: beyond this many distinct (provider, model) pairs, new ones are
# counted as "other" so a client sending random model names cannot blow up the metric series.
MAX_UNPRICED_LABELS = 200
MAX_LABEL_LENGTH = 64
MILLION = 1_000_000.0


def cost_frame(normalized: pl.DataFrame, start_ns: pl.Series, table: PricingTable) -> pl.DataFrame:
    """Per row of `normalized` (genai_attributes.normalize output): the cost parts, or nulls.

    Returns columns priceable (Boolean: the row has token counts), priced (Boolean), cost_<part>,
    cost_total (Float64), entry_provider, entry_model (String); same rows, same order.
    """
    rows = normalized.with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_i"),
        start_ns.cast(pl.Int64, strict=False).alias("_start"),
        pl.any_horizontal(pl.col(c).is_not_null() for c in ga.TOKEN_COLUMNS).alias("priceable"),
    )
    pairs = rows.filter(pl.col("priceable")).select(ga.PROVIDER, ga.MODEL).unique()
    resolved = pairs.with_columns(
        pl.Series(
            "group",
            [table.resolve(p, m) for p, m in pairs.iter_rows()],  # one call per distinct pair, cached
            dtype=pl.UInt32,
        )
    )
    tokens = rows.filter(pl.col("priceable")).join(resolved, on=[ga.PROVIDER, ga.MODEL], how="left", nulls_equal=True)
    matched = (
        tokens.filter(pl.col("group").is_not_null())
        .join(table.price_rows, on="group", how="inner")
        .filter(
            (pl.col("from_ns").is_null() | (pl.col("_start") >= pl.col("from_ns")))
            & (pl.col("to_ns").is_null() | (pl.col("_start") < pl.col("to_ns")))
            & (pl.col(ga.TOKENS_INPUT).fill_null(0) > pl.col("threshold"))
        )
        .sort("_i", "threshold")
        .unique(subset="_i", keep="last", maintain_order=True)
    )
    cache_read = pl.col(ga.TOKENS_CACHE_READ).fill_null(0)
    cache_write = pl.col(ga.TOKENS_CACHE_WRITE).fill_null(0)
    reasoning = pl.col(ga.TOKENS_REASONING).fill_null(0)
    output = pl.coalesce(ga.TOKENS_OUTPUT, ga.TOKENS_REASONING, pl.lit(0))
    uncached = (pl.col(ga.TOKENS_INPUT).fill_null(0) - cache_read - cache_write).clip(lower_bound=0)
    costs = matched.select(
        "_i",
        "entry_provider",
        "entry_model",
        (uncached * pl.col("p_input") / MILLION).alias("cost_input"),
        (cache_read * pl.col("p_cache_read") / MILLION).alias("cost_cache_read"),
        (cache_write * pl.col("p_cache_write") / MILLION).alias("cost_cache_write"),
        (reasoning * pl.col("p_reasoning") / MILLION).alias("cost_reasoning"),
        ((output - reasoning).clip(lower_bound=0) * pl.col("p_output") / MILLION).alias("cost_output"),
        pl.col("p_request").alias("cost_request"),
    ).with_columns(
        pl.sum_horizontal(f"cost_{part}" for part in (*COST_PARTS, "request")).alias("cost_total"),
        pl.lit(True).alias("priced"),
    )
    return (
        rows.select("_i", "priceable")
        .join(costs, on="_i", how="left", maintain_order="left")
        .with_columns(pl.col("priced").fill_null(False))
        .drop("_i", "cost_request")
    )


@dataclass
class CostMetrics:
    unpriced: Counter
    priced: Counter
    table_info: Gauge
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
            table_info=Gauge(
                "genops_pricing_table_info",
                "The pricing table in use (value 1), by version and model count.",
                ["version", "models"],
                registry=registry,
                multiprocess_mode="livemax",
            ),
            reload=ReloadMetrics("genops_pricing", "pricing table", registry),
        )


class CostStage:
    name = "cost"
    signals = frozenset({TRACES})

    def __init__(self, config: CostConfig, registry: CollectorRegistry, watch: bool = True) -> None:
        self.config = config
        self.metrics = CostMetrics.create(registry)
        self._table: PricingTable | None = None
        self._labels: set[tuple[str, str]] = set()
        self._labels_lock = threading.Lock()
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
        log.info("pricing table in use", version=table.version, models=table.model_count, path=str(self.watcher_path))

    @property
    def watcher_path(self) -> str:
        return self.config.pricing_file or str(default_table_path())

    def close(self) -> None:
        self.watcher.stop()

    def wanted_keys(self) -> WantedKeys:
        return WantedKeys(item=ga.GENAI_KEYS.item | {COST_TOTAL})

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        table = self.table
        frame = batch.frame
        normalized = ga.normalized(batch)
        costs = cost_frame(normalized, frame[START_TIME], table)
        todo = costs["priceable"]
        if not self.config.override_sdk_costs and COST_TOTAL in frame.columns:
            todo = todo & frame[COST_TOTAL].is_null()
        result = pl.concat(
            [pl.DataFrame({"todo": todo}), costs.drop("priceable"), normalized.select(ga.PROVIDER, ga.MODEL)],
            how="horizontal",
        )
        if not result["todo"].any():
            return BatchChanges()
        # A provider-agnostic ("*") entry priced it: report the provider the span named.
        result = result.with_columns(
            pl.when(pl.col("entry_provider") == ANY_PROVIDER)
            .then(pl.coalesce(ga.PROVIDER, pl.lit(ANY_PROVIDER)))
            .otherwise(pl.col("entry_provider"))
            .alias("entry_provider")
        )
        self._count(result)
        priced = pl.col("todo") & pl.col("priced")

        def when_priced(expr: pl.Expr) -> pl.Expr:
            return pl.when(priced).then(expr)

        written = result.select(
            when_priced(pl.col("cost_total")).alias(COST_TOTAL),
            *(when_priced(pl.col(f"cost_{part}")).alias(f"genops.cost.{part}") for part in COST_PARTS),
            when_priced(pl.lit("USD")).alias(COST_CURRENCY),
            when_priced(pl.col("entry_provider")).alias(COST_PROVIDER),
            when_priced(pl.col("entry_model")).alias(COST_MODEL),
            when_priced(pl.lit(table.version)).alias(COST_VERSION),
            pl.when(priced).then(pl.lit(PRICED)).when(pl.col("todo")).then(pl.lit(UNPRICED)).alias(COST_STATUS),
        )
        return BatchChanges(set_attributes={name: written[name] for name in written.columns})

    def _count(self, result: pl.DataFrame) -> None:
        todo = result.filter(pl.col("todo"))
        for (provider,), group in todo.filter(pl.col("priced")).group_by("entry_provider"):
            self.metrics.priced.labels(provider=provider or "").inc(group.height)
        unpriced = todo.filter(~pl.col("priced")).group_by(ga.PROVIDER, ga.MODEL).len()
        for provider, model, count in unpriced.iter_rows():
            self.metrics.unpriced.labels(*self._label(provider, model)).inc(count)

    def _label(self, provider: str | None, model: str | None) -> tuple[str, str]:
        label = ((provider or "unknown")[:MAX_LABEL_LENGTH], (model or "unknown")[:MAX_LABEL_LENGTH])
        with self._labels_lock:
            if label in self._labels:
                return label
            if len(self._labels) < MAX_UNPRICED_LABELS:
                self._labels.add(label)
                return label
        return ("other", "other")


def build_cost_stage(config: CostConfig, registry: CollectorRegistry, *, watch: bool = True) -> CostStage:
    """The cost stage, its pricing table loaded and validated (PricingError if it is broken).

    watch=False skips the reload thread (validate-config only needs the table checked).
    """
    return CostStage(config, registry, watch=watch)
