"""Prompt-cache metrics (issue 22 item 4): what cache reads saved, and cache writes never read.

- `genops_cost_cache_savings_usd{team,model}`: the sum of `genops.cost.cache_savings` (written by
  the cost stage, processor/stages/cost/cache_savings.py).
- `genops_cost_cache_write_unread_usd{model}`: what cache writes cost that no later span of the
  same conversation (`gen_ai.conversation.id`) and model read from the cache before the cache
  expired: 5 minutes after the write (Anthropic's and OpenAI's default), 1 hour for a span that
  counts 1-hour writes (`genops.tokens.cache_write_1h`), plus a minute for spans still on their
  way. A write is counted once it has expired unread. Spans without a conversation id say
  nothing about reuse and are not counted: the metric is a floor of the waste, not all of it.

Both are Gauges that only increase (as `genops_cost_total_usd`: a Counter would be renamed
`..._usd_total`), labels redacted and capped as the other genops_* labels (LabelCap). A batch the
Collector retries is not counted again. The unread writes are followed per process: with
`server.workers` above 1, or several pods, a conversation whose spans reach other processes may
show a write as unread that another process saw read (route a conversation's traces to one
sidecar, e.g. the Collector's loadbalancing exporter by trace id, to avoid it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import polars as pl
import structlog
from prometheus_client import CollectorRegistry, Gauge

from processor.core.attribution import DIMENSIONS, Attribution, text
from processor.core.decode import START_TIME, TelemetryBatch
from processor.core.genai_attributes import TOKENS_CACHE_READ, normalized
from processor.stages.cost.cache_savings import CACHE_SAVINGS
from processor.stages.policy.budget_state import Applied, BudgetStore
from processor.stages.policy.metrics import LabelCap

log = structlog.get_logger(__name__)

SAVINGS_METRIC = "genops_cost_cache_savings_usd"
UNREAD_METRIC = "genops_cost_cache_write_unread_usd"
CONVERSATION = "gen_ai.conversation.id"
COST_CACHE_WRITE = "genops.cost.cache_write"
COST_MODEL = "genops.cost.model"
CACHE_WRITE_1H = "genops.tokens.cache_write_1h"
WANTED = (CONVERSATION, CACHE_WRITE_1H)
NS = 1_000_000_000
CACHE_TTL_SECONDS = 300
CACHE_TTL_1H_SECONDS = 3600
# Spans arrive after they end (SDK and Collector batching): a read may be seen a little late.
GRACE_SECONDS = 60
# Conversations with an unread write followed at once (the oldest are dropped past it).
MAX_FOLLOWED = 100_000


@dataclass
class _Unread:
    model: str
    usd: float
    expires_ns: int


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry, cap: LabelCap, attribution: Attribution) -> None:
        self.cap = cap
        self.attribution = attribution
        self.savings = Gauge(
            SAVINGS_METRIC,
            "USD saved by prompt-cache reads: cached input at the input price minus its cache read price"
            " (only increases).",
            ["team", "model"],
            registry=registry,
            multiprocess_mode="sum",
        )
        self.unread = Gauge(
            UNREAD_METRIC,
            "USD of prompt-cache writes no later span of the conversation read before the cache expired"
            " (only increases).",
            ["model"],
            registry=registry,
            multiprocess_mode="sum",
        )
        # (conversation, model) -> the unread writes, oldest first.
        self._followed: OrderedDict[tuple[str, str], _Unread] = OrderedDict()
        self._lock = threading.Lock()

    def watching(self, store: BudgetStore) -> RetryAware:
        return RetryAware(store)

    def record(self, batch: TelemetryBatch, now_ns: int | None = None) -> None:
        """Adds the batch's savings and follows its cache writes (call once per batch, not for a retry)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        schema = dict(batch.frame.schema)
        has_savings = schema.get(CACHE_SAVINGS, pl.Null) != pl.Null
        has_writes = schema.get(COST_CACHE_WRITE, pl.Null) != pl.Null
        if has_savings:
            self._record_savings(batch, schema)
        if has_writes or self._followed:
            with self._lock:
                self._follow(batch, schema, now_ns, has_writes)

    def _record_savings(self, batch: TelemetryBatch, schema: dict) -> None:
        team = self.attribution.columns(schema)[DIMENSIONS.index("team")]
        sums = (
            batch.frame.lazy()
            .select(
                team.alias("team"),
                text(schema, COST_MODEL).alias("model"),
                _amount(schema, CACHE_SAVINGS).alias("usd"),
            )
            .filter(pl.col("usd") > 0)
            .group_by("team", "model", maintain_order=True)
            .agg(pl.col("usd").sum())
            .collect()
        )
        if sums.height == 0:
            return
        teams = self.cap.map("team", sums.get_column("team").to_list())
        models = self.cap.map("model", sums.get_column("model").to_list())
        for team_value, model, usd in zip(teams, models, sums.get_column("usd").to_list(), strict=True):
            self.savings.labels(team_value, model).inc(usd)

    def _follow(self, batch: TelemetryBatch, schema: dict, now_ns: int, has_writes: bool) -> None:
        if CONVERSATION in schema and schema[CONVERSATION] != pl.Null:
            genai = normalized(batch)
            reads = genai.get_column(TOKENS_CACHE_READ) if TOKENS_CACHE_READ in genai.columns else None
            spans = batch.frame.select(
                text(schema, CONVERSATION).alias("conversation"),
                text(schema, COST_MODEL).alias("model"),
                _amount(schema, COST_CACHE_WRITE).alias("write") if has_writes else pl.lit(None, dtype=pl.Float64),
                _amount(schema, CACHE_WRITE_1H).alias("long") if CACHE_WRITE_1H in schema else pl.lit(None),
                pl.col(START_TIME).cast(pl.Int64).alias("start"),
                (pl.lit(reads).cast(pl.Int64, strict=False) if reads is not None else pl.lit(None, dtype=pl.Int64))
                .fill_null(0)
                .alias("read"),
            ).filter(pl.col("conversation").is_not_null() & pl.col("model").is_not_null())
            for conversation, model, write, long, start, read in spans.sort("start").iter_rows():
                key = (conversation, model)
                if read > 0:
                    self._followed.pop(key, None)  # the writes before it were read
                if write:
                    ttl = CACHE_TTL_1H_SECONDS if long else CACHE_TTL_SECONDS
                    held = self._followed.pop(key, None)
                    usd = write + (held.usd if held is not None else 0.0)
                    self._followed[key] = _Unread(model, usd, (start or now_ns) + ttl * NS)
        self._sweep(now_ns)

    def _sweep(self, now_ns: int) -> None:
        """Counts the writes that expired unread (oldest first; stops at the first still live)."""
        unread: dict[str, float] = {}
        while self._followed:
            key, held = next(iter(self._followed.items()))
            expired = held.expires_ns + GRACE_SECONDS * NS < now_ns
            if not expired and len(self._followed) <= MAX_FOLLOWED:
                break
            del self._followed[key]
            if expired:
                unread[held.model] = unread.get(held.model, 0.0) + held.usd
        if unread:
            models = self.cap.map("model", list(unread))
            for model, usd in zip(models, unread.values(), strict=True):
                self.unread.labels(model).inc(usd)


def _amount(schema: dict, key: str) -> pl.Expr:
    dtype = schema.get(key, pl.Null)
    if dtype in (pl.Null, pl.Binary) or not (dtype.is_numeric() or dtype == pl.String):
        return pl.lit(None, dtype=pl.Float64)
    column = pl.col(key).cast(pl.Float64, strict=False)
    return pl.when(column.is_finite() & (column >= 0)).then(column)


class RetryAware:
    """The batch's store: remembers whether its `apply` found the batch applied before (a retry)."""

    def __init__(self, store: BudgetStore) -> None:
        self._store = store
        self.repeated = False

    def apply(self, fingerprint: str, increments: dict[str, float], expires_at: dict[str, int]) -> Applied:
        applied = self._store.apply(fingerprint, increments, expires_at)
        self.repeated = applied.repeated
        return applied

    def read(self, keys: list[str]) -> dict[str, float]:
        return self._store.read(keys)

    def scan(self, prefix: str) -> dict[str, float]:
        return self._store.scan(prefix)

    def admit(self, family: str, members: list[str], cap: int, expires_at: int) -> set[str]:
        admit = getattr(self._store, "admit", None)
        if admit is None:
            raise TypeError("the store keeps no cardinality caps")
        return admit(family, members, cap, expires_at)

    def close(self) -> None:
        self._store.close()
