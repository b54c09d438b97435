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
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from prometheus_client import CollectorRegistry, Gauge

from processor.core.attribution import Attribution, text
from processor.core.decode import RESOURCE_PREFIX, START_TIME, TelemetryBatch
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
# What polars' strip_chars() trims (Rust's char::is_whitespace, Unicode White_Space): not Python's
# str.strip() set, which also trims U+001C..U+001F.
WHITESPACE = "".join(
    ("\t\n\x0b\x0c\r \x85\xa0\u1680", *map(chr, range(0x2000, 0x200B)), "\u2028\u2029\u202f\u205f\u3000")
)
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
        # Column by column, never batch.frame: building the whole frame costs more than all of this.
        has_writes = batch.has_values(COST_CACHE_WRITE)
        if batch.has_values(CACHE_SAVINGS):
            self._record_savings(batch)
        if has_writes or self._followed:
            with self._lock:
                self._follow(batch, now_ns, has_writes)

    def _record_savings(self, batch: TelemetryBatch) -> None:
        sums = savings_by_team_and_model(batch, self.attribution)
        if not sums:
            return
        teams = self.cap.map("team", [team for team, _ in sums])
        models = self.cap.map("model", [model for _, model in sums])
        for team_value, model, total in zip(teams, models, sums.values(), strict=True):
            self.savings.labels(team_value, model).inc(total)

    def _follow(self, batch: TelemetryBatch, now_ns: int, has_writes: bool) -> None:
        if batch.has_values(CONVERSATION) and self._may_change(batch, has_writes):
            schema = dict(batch.frame.schema)
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

    def _may_change(self, batch: TelemetryBatch, has_writes: bool) -> bool:
        """Whether a span of the batch writes to the cache, or reads while writes are followed:
        else the per-span query would leave the followed writes as they are."""
        if has_writes and _positive(batch.column_array(COST_CACHE_WRITE)) is not None:
            return True
        if not self._followed:
            return False
        genai = normalized(batch)
        if TOKENS_CACHE_READ not in genai.columns:
            return False
        return bool((genai.get_column(TOKENS_CACHE_READ).cast(pl.Int64, strict=False) > 0).any())

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


def savings_by_team_and_model(
    batch: TelemetryBatch, attribution: Attribution
) -> dict[tuple[str | None, str | None], float]:
    """Per (team, model), in order of first appearance, the sum of the spans' savings above zero
    (tests/oracle/cache_metrics.py is the polars group_by it replaced)."""
    found = _positive(batch.column_array(CACHE_SAVINGS))
    if found is None:
        return {}
    rows, amounts = found
    team_sources = [name for key in attribution.sources("team") for name in (key, RESOURCE_PREFIX + key)]
    keys = zip(_texts_at(batch, team_sources, rows), _texts_at(batch, [COST_MODEL], rows), strict=True)
    # Added one after the other in row order. polars' group_by, which this replaced, adds a
    # group's floats in an order that varies from run to run (even on one thread): the last bit
    # of the old sums was never reproducible, these are.
    sums: dict[tuple[str | None, str | None], float] = {}
    for key, amount in zip(keys, amounts, strict=True):
        held = sums.get(key)
        sums[key] = amount if held is None else held + amount
    return sums


def _positive(array: pa.Array | None) -> tuple[pa.Array, list[float]] | None:
    """The rows whose amount (as _amount reads it) is above zero, and those amounts; None when
    there is none. pyarrow compute, not polars Series methods: each of those is a query."""
    if array is None or pa.types.is_binary(array.type) or pa.types.is_binary_view(array.type):
        return None
    if not pa.types.is_floating(array.type):
        series = pl.Series(array)
        if not (series.dtype.is_numeric() or series.dtype == pl.String):
            return None
        array = series.cast(pl.Float64, strict=False).to_arrow()
    rows = pc.indices_nonzero(pc.and_(pc.is_finite(array), pc.greater(array, 0.0)))  # nulls: not above zero
    if not len(rows):
        return None
    return rows, array.take(rows).to_pylist()


def _texts_at(batch: TelemetryBatch, names: list[str], rows: pa.Array) -> list[str | None]:
    """At `rows`, the first of the columns `names` (coalesced) as `text` reads them."""
    found: list[str | None] | None = None
    for name in names:
        array = batch.column_array(name)
        if array is None or pa.types.is_binary(array.type) or pa.types.is_binary_view(array.type):
            continue
        if pa.types.is_string_view(array.type):
            array = array.cast(pa.string())  # this pyarrow takes no views
        values = _text_values(array.take(rows))
        found = values if found is None else [a if a is not None else b for a, b in zip(found, values, strict=True)]
    return found if found is not None else [None] * len(rows)


def _text_values(array: pa.Array) -> list[str | None]:
    """Trimmed text, blanks as null, as `text` (polars' strip_chars and replace) makes it."""
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return [None if value is None else value.strip(WHITESPACE) or None for value in array.to_pylist()]
    # Numbers, booleans: as polars casts them to text.
    return pl.Series(array).cast(pl.String, strict=False).str.strip_chars().replace("", None).to_list()


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
