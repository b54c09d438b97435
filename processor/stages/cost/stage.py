"""The cost stage: USD cost of GenAI spans from their token counts and a pricing table.

Cost is a join, not a loop over spans: the distinct (provider, model) pairs of a batch are
resolved against the table (cached per table), joined to the table's price rows, the right row
picked per span by start date and prompt size (tiers), and the cost computed: in one Rust call
per batch (processor/stages/cost/native.py), the stage's one engine. The polars query it was written
against is the differential oracle in tests/oracle/cost.py (with the known pairs, the price
steps and `cost_frame`).

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
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from processor.config import CostConfig
from processor.core import genai_attributes as ga
from processor.core.contract import ENGINE_NATIVE, BatchChanges
from processor.core.decode import LOGS, START_TIME, TRACES, TelemetryBatch, WantedKeys
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.core.span_values import SDK_COST_KEYS, SDK_COSTS, CostCheck, InvalidValueMetrics, check_batch
from processor.files.reload import ReloadMetrics, Watcher
from processor.stages.cost import billing_dimensions, request_fallback
from processor.stages.cost.cache_savings import COST_CACHE_READ, KernelSavings, with_cache_savings
from processor.stages.cost.native import NativeCost
from processor.stages.cost.pricing_table import (
    PriceSlots,
    PricingTable,
    default_table_path,
    load_table,
    priced_match,
)

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
# Priced with the prices of a family the model is only near (processor/stages/cost/model_versions.py).
ESTIMATED = "estimated"
# Ours, on a span that came with an SDK cost, and the SDK's minus ours.
COST_COMPUTED = "genops.cost.computed_total"
COST_SDK_DIFFERENCE = "genops.cost.sdk_difference"
_STATUSES = request_fallback.Statuses(COST_STATUS, UNPRICED, ESTIMATED)
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


# Known (provider, model) pairs are kept per table up to this many; past it the set restarts from
# the batch at hand, so a client sending random model names costs time, never unbounded memory.
MAX_KNOWN_PAIRS = 4096
# batch.derived key: the providers (as written to genops.cost.provider) that priced spans of the batch.
PRICED_PROVIDERS = "cost.priced_providers"
# batch.derived key: the native kernel's cache savings of the batch (cache_savings.KernelSavings).
KERNEL_SAVINGS = "cost.kernel_savings"


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
        self._priced: dict[str, Counter] = {}
        self._labels: set[tuple[str, str]] = set()
        self._labels_lock = threading.Lock()
        # The stage's one engine (cost_native.py).
        self._estimate_near = config.near_matches != "unpriced"
        self._native = NativeCost(WRITTEN, MAX_KNOWN_PAIRS, self._estimate_near)
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
        kernel_cache_read = priced.set_attributes.get(COST_CACHE_READ)
        providers = batch.derived.get(PRICED_PROVIDERS)
        priced = billing_dimensions.apply_dimensions(
            batch, priced, table, self._group_of(table), providers if isinstance(providers, set) else None
        )
        kernel = batch.derived.get(KERNEL_SAVINGS)
        kernel = kernel if isinstance(kernel, KernelSavings) else None
        priced = with_cache_savings(batch, priced, table, self._group_of(table), kernel, kernel_cache_read)
        sdk = batch.derived.get(SDK_COSTS)
        ours = None if self.config.override_sdk_costs else self._ours_beside_sdk(batch, table, sdk)
        return _with_sdk_costs(priced, sdk, ours)

    def _ours_beside_sdk(self, batch: TelemetryBatch, table: PricingTable, sdk: object) -> pl.Series | None:
        """Our cost of the spans whose SDK cost stands (null elsewhere): computed apart from the
        batch's pricing, which leaves them out, and not counted in the priced/unpriced metrics."""
        genai = batch.derived.get("genai")
        if not isinstance(sdk, CostCheck) or not isinstance(genai, pl.DataFrame):
            return None
        rows = sdk.usable.is_not_null().arg_true()
        if rows.is_empty():
            return None
        first, last = _first_and_last(batch.column_array(START_TIME))
        costs = self._native.run(batch, genai, table, table.slots_for(first, last), sdk_column=None)
        if costs is None:
            raise ValueError("cost stage: a batch or price rows the native engine cannot read")
        ours = pl.Series(COST_COMPUTED, [None] * sdk.usable.len(), dtype=pl.Float64)
        if costs.written is None:
            return ours
        return ours.scatter(rows, costs.written[COST_TOTAL].gather(rows))

    def _group_of(self, table: PricingTable) -> Callable[[str | None, str | None], int | None]:
        def group_of(provider: str | None, model: str | None) -> int | None:
            found = priced_match(table, provider, model, estimate_near=self._estimate_near)
            return None if found is None else found.group

        return group_of

    def _priced_changes(self, batch: TelemetryBatch, table: PricingTable) -> BatchChanges:
        # One native call per batch (cost_native.py, the stage's one engine; the polars query it
        # was written against is the differential oracle in tests/oracle/cost.py).
        self._refresh_age()
        # Spans that all start on one day (nearly every batch) need no date checks: see slots_for.
        first, last = _first_and_last(batch.column_array(START_TIME))
        return self._process_native(batch, table, table.slots_for(first, last)).with_engine(ENGINE_NATIVE)

    def _process_native(self, batch: TelemetryBatch, table: PricingTable, slots: PriceSlots) -> BatchChanges:
        """The batch through the native path (cost_native.py); raises for a batch it cannot read."""
        costs = self._native.run(
            batch,
            batch.derived.get("genai"),  # type: ignore[arg-type]
            table,
            slots,
            sdk_column=None if self.config.override_sdk_costs else COST_TOTAL,
        )
        if self._estimate_near:
            # An unknown response model priced by its request model's entry, as an estimate
            # (request_fallback.py): a second pass, only for batches with such spans.
            sdk_column = None if self.config.override_sdk_costs else COST_TOTAL
            costs = request_fallback.with_native_fallback(
                self._native, batch, table, slots, costs, sdk_column, _STATUSES
            )
        if costs is None:
            # A genai frame of other types from an earlier stage, or price rows with a null price:
            # neither is made by the decoder or the table loader, so this is a stage error.
            raise ValueError("cost stage: a batch or price rows the native engine cannot read")
        if "genai" not in batch.derived:
            batch.derived["genai"] = costs.genai
        batch.derived[KERNEL_SAVINGS] = costs.savings
        if costs.written is None:  # nothing to price: not even an unpriced status
            return BatchChanges()
        self._count_priced(costs.priced)
        batch.derived[PRICED_PROVIDERS] = {provider for provider, _ in costs.priced}
        for provider, model, count in costs.unpriced:
            self.metrics.unpriced.labels(*self._label(provider, model)).inc(count)
        for provider, model, count in costs.estimated:
            self.metrics.estimated.labels(*self._label(provider, model)).inc(count)
        return BatchChanges(set_attributes=costs.written, arrow=costs.written_arrow)

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
