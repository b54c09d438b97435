"""The spend ledger: what the sidecar charged per UTC day, provider, model and ledger keys.

Each row holds USD per cost part, token counts and the span count. Its figures are consumed keys
of the budget state store, added in the same `apply` as the batch's budget windows: a retried
batch (same fingerprint) charges the ledger once, a store outage keeps ledger charges with the
budget ones, and every backend (memory, SQLite, Redis) holds it without a schema of its own.

Values are redacted (processor/core/outbound.py) before they become keys, so nothing read back from
the ledger (CLI, HTTP, reconciliation) carries a value the rules would not let out.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl
import structlog
from prometheus_client import CollectorRegistry, Counter

from processor.config import LedgerConfig
from processor.core.attribution import DIMENSIONS, Attribution, dimension_key, text
from processor.core.decode import START_TIME, TelemetryBatch
from processor.core.genai_attributes import MODEL, PROVIDER, TOKEN_COLUMNS, normalized
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.stages.cost.stage import COST_PARTS, COST_TOTAL
from processor.stages.policy.budget_state import Applied, BudgetStore
from processor.stages.policy.store_caps import OVERFLOW, AdmittingStore, StoreCap

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

log = structlog.get_logger(__name__)

PREFIX = "ledger|"
COST_MODEL = "genops.cost.model"
COST_PROVIDER = "genops.cost.provider"
# The attribute keys provider and model values are redacted as.
PROVIDER_KEY = "gen_ai.provider.name"
MODEL_KEY = "gen_ai.request.model"
# Stand-ins: a span without the value, and the row of spans past the cardinality cap.
UNKNOWN = "unknown"
# Measures of a row, each one consumed key: USD total and per part, tokens per kind, spans.
USD = "usd"
TOKENS = "tokens"
SPANS = "spans"
OVERFLOW_METRIC = "genops_ledger_overflow_spans_total"
DAY = 86400


def cost_attribute(part: str) -> str:
    return f"genops.cost.{part}"


def measure(kind: str, part: str = "") -> str:
    return f"{kind}.{part}" if part else kind


@dataclass(frozen=True)
class LedgerSettings:
    keys: tuple[str, ...]
    retention_days: int
    max_rows_per_day: int

    @staticmethod
    def from_config(config: LedgerConfig) -> LedgerSettings:
        keys = tuple(dict.fromkeys(k.strip() for k in config.keys.split(",") if k.strip()))
        unknown = [k for k in keys if k not in DIMENSIONS]
        if unknown:
            raise ValueError(f"policy.ledger.keys: unknown dimension {unknown[0]!r} (known: {', '.join(DIMENSIONS)})")
        return LedgerSettings(keys, config.retention_days, config.max_rows_per_day)


@dataclass(frozen=True)
class RowId:
    day: str  # YYYY-MM-DD, UTC
    provider: str
    model: str
    keys: tuple[tuple[str, str], ...]  # (dimension, value) in configured order; "" unattributed

    def key(self, what: str) -> str:
        return PREFIX + json.dumps([self.day, self.provider, self.model, dict(self.keys), what], separators=(",", ":"))

    def member(self) -> str:
        """The row within its day, as the day's cardinality cap counts it."""
        return json.dumps([self.provider, self.model, dict(self.keys)], separators=(",", ":"))


@dataclass(frozen=True)
class LedgerRow:
    day: str
    provider: str
    model: str
    keys: tuple[tuple[str, str], ...]
    usd_total: float
    usd_parts: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    spans: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "day": self.day,
            "provider": self.provider,
            "model": self.model,
            "keys": dict(self.keys),
            "usd_total": round(self.usd_total, 9),
            "usd": {part: round(v, 9) for part, v in self.usd_parts.items()},
            "tokens": dict(self.tokens),
            "spans": self.spans,
        }


@dataclass(frozen=True)
class LedgerCharge:
    increments: dict[str, float]
    expires_at: dict[str, int]


def parse_key(key: str) -> tuple[RowId, str] | None:
    """(row, measure) of a ledger key; None for a key that is not one (or was written by a newer
    version in a shape this one does not read)."""
    try:
        day, provider, model, keys, what = json.loads(key.removeprefix(PREFIX))
        return RowId(str(day), str(provider), str(model), tuple((str(k), str(v)) for k, v in keys.items())), str(what)
    except (ValueError, TypeError, AttributeError):
        return None


def rows_of(stored: dict[str, float]) -> list[LedgerRow]:
    """Ledger rows from the store's consumed keys (see `BudgetStore.scan`), by day, provider, model."""
    measures: dict[RowId, dict[str, float]] = {}
    for key, value in stored.items():
        parsed = parse_key(key)
        if parsed is not None:
            measures.setdefault(parsed[0], {})[parsed[1]] = value
    rows = []
    for row, found in measures.items():
        rows.append(
            LedgerRow(
                row.day,
                row.provider,
                row.model,
                row.keys,
                usd_total=found.get(USD, 0.0),
                usd_parts={p: found[measure(USD, p)] for p in COST_PARTS if measure(USD, p) in found},
                tokens={t: round(found[measure(TOKENS, t)]) for t in _TOKEN_NAMES if measure(TOKENS, t) in found},
                spans=round(found.get(SPANS, 0.0)),
            )
        )
    return sorted(rows, key=lambda r: (r.day, r.provider, r.model, r.keys))


# Token kinds by the names rows show (tokens_input -> input).
_TOKEN_NAMES = tuple(name.removeprefix("tokens_") for name in TOKEN_COLUMNS)


def read_rows(store: BudgetStore, since: str = "", until: str = "") -> list[LedgerRow]:
    """Rows of days `since`..`until` (inclusive, YYYY-MM-DD; empty: open)."""
    rows = rows_of(store.scan(PREFIX))
    return [r for r in rows if (not since or r.day >= since) and (not until or r.day <= until)]


class LedgerPlan:
    """Computes a batch's ledger charge and merges it into the batch's one store `apply`."""

    def __init__(
        self,
        settings: LedgerSettings,
        attribution: Attribution,
        outbound: OutboundRedaction = NO_REDACTION,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.attribution = attribution
        self.outbound = outbound
        self._cap = StoreCap(settings.max_rows_per_day, "policy.ledger.max_rows_per_day")
        self.overflow = Counter(
            OVERFLOW_METRIC,
            "GenAI spans charged to a day's ledger overflow row (past policy.ledger.max_rows_per_day).",
            registry=registry,
        )

    def wanted_keys(self) -> tuple[str, ...]:
        return (COST_TOTAL, COST_MODEL, COST_PROVIDER, *(cost_attribute(p) for p in COST_PARTS))

    def charging(self, store: BudgetStore, batch: TelemetryBatch, now_ns: int) -> BudgetStore:
        """`store` whose `apply` adds this batch's ledger charge to what it is given."""
        return _ChargingStore(store, self, batch, now_ns)

    def charge(self, batch: TelemetryBatch, now_ns: int, store: object = None) -> LedgerCharge:
        """The batch's ledger increments; rows past the day's cap (counted in `store`, shared by
        every process using it) go to the overflow row."""
        grouped = self._grouped(batch, now_ns)
        increments: dict[str, float] = {}
        expires: dict[str, int] = {}
        now_s = now_ns // 1_000_000_000
        measures = [
            (USD, COST_TOTAL),
            *((measure(USD, p), cost_attribute(p)) for p in COST_PARTS),
            *((measure(TOKENS, t.removeprefix("tokens_")), "_t_" + t) for t in TOKEN_COLUMNS),
            (SPANS, "_spans"),
        ]
        columns = {name: grouped.get_column(name).to_list() for name in grouped.columns}
        rows = [
            RowId(
                columns["_day"][i],
                self._redacted(PROVIDER_KEY, columns["_provider"][i], UNKNOWN),
                self._redacted(MODEL_KEY, columns["_model"][i], UNKNOWN),
                tuple((k, self._redacted(dimension_key(k), columns["_k_" + k][i], "")) for k in self.settings.keys),
            )
            for i in range(grouped.height)
        ]
        admitted = self._admitted(store, rows, now_s)
        for i, found in enumerate(rows):
            row = found
            if found not in admitted:
                self.overflow.inc(int(columns["_spans"][i]))
                row = RowId(found.day, OVERFLOW, OVERFLOW, tuple((k, OVERFLOW) for k, _ in found.keys))
            expiry = self._expiry(row.day, now_s)
            for what, name in measures:
                value = columns[name][i]
                if value:
                    key = row.key(what)
                    increments[key] = increments.get(key, 0.0) + float(value)
                    expires[key] = expiry
        return LedgerCharge(increments, expires)

    def _expiry(self, day: str, now_s: int) -> int:
        day_end = int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()) + DAY
        # A late span's day may be past retention already: kept a day from now, then dropped.
        return max(day_end + self.settings.retention_days * DAY, now_s + DAY)

    def _redacted(self, key: str, value: str | None, missing: str) -> str:
        return missing if value is None else self.outbound.label(key, value)

    def _admitted(self, store: object, rows: list[RowId], now_s: int) -> set[RowId]:
        """The rows within their day's max_rows_per_day distinct rows, counted in the store."""
        by_day: dict[str, dict[str, RowId]] = {}
        for row in rows:
            by_day.setdefault(row.day, {})[row.member()] = row
        admitted: set[RowId] = set()
        for day, members in by_day.items():
            found = self._cap.admitted(store, PREFIX + day, set(members), self._expiry(day, now_s))
            admitted.update(members[m] for m in found)
        return admitted

    def _grouped(self, batch: TelemetryBatch, now_ns: int) -> pl.DataFrame:
        frame = batch.frame
        schema = dict(frame.schema)
        genai = normalized(batch)
        genai_columns = {name: genai.get_column(name) for name in genai.columns}

        def genai_column(name: str, dtype: PolarsDataType) -> pl.Expr:
            found = genai_columns.get(name)
            if found is None or found.dtype == pl.Null:
                return pl.lit(None, dtype=dtype)
            return pl.lit(found).cast(dtype, strict=False)

        start = pl.col(START_TIME).cast(pl.Int64)
        start = pl.when(start > 0).then(start).otherwise(pl.lit(now_ns, dtype=pl.Int64))
        dims = {d: e for d, e in zip(DIMENSIONS, self.attribution.columns(schema), strict=True)}
        costs = [_number(schema, name).alias(name) for name in (COST_TOTAL, *map(cost_attribute, COST_PARTS))]
        tokens = [genai_column(t, pl.Int64).alias("_t_" + t) for t in TOKEN_COLUMNS]
        model = pl.coalesce(text(schema, COST_MODEL), genai_column(MODEL, pl.String)).alias("_model")
        provider = pl.coalesce(text(schema, COST_PROVIDER), genai_column(PROVIDER, pl.String)).alias("_provider")
        spans = frame.lazy().select(
            pl.from_epoch(start, "ns").dt.strftime("%Y-%m-%d").alias("_day"),
            provider,
            model,
            *(dims[k].alias("_k_" + k) for k in self.settings.keys),
            *costs,
            *tokens,
        )
        token_names = ["_t_" + t for t in TOKEN_COLUMNS]
        genai_span = pl.any_horizontal(
            pl.col("_model").is_not_null(),
            pl.col(COST_TOTAL).is_not_null(),
            *(pl.col(t).is_not_null() for t in token_names),
        )
        group = ["_day", "_provider", "_model", *("_k_" + k for k in self.settings.keys)]
        sums = [pl.col(name).sum() for name in (COST_TOTAL, *map(cost_attribute, COST_PARTS), *token_names)]
        grouped = spans.filter(genai_span).group_by(group, maintain_order=True)
        return grouped.agg(*sums, pl.len().alias("_spans")).collect()


def _number(schema: dict[str, pl.DataType], key: str) -> pl.Expr:
    """A cost column as a finite amount at or above zero, else null (a bad value is ignored for
    its own span, as the budget charge ignores it)."""
    dtype = schema.get(key, pl.Null)
    if dtype in (pl.Null, pl.Binary) or not (dtype.is_numeric() or dtype in (pl.String, pl.Boolean)):
        return pl.lit(None, dtype=pl.Float64)
    column = pl.col(key)
    if schema[key] == pl.String:
        column = column.str.strip_chars()
    column = column.cast(pl.Float64, strict=False)
    return pl.when(column.is_finite() & (column >= 0)).then(column)


class _ChargingStore:
    """One batch's view of the store: the ledger charge rides along in the same `apply`."""

    def __init__(self, store: BudgetStore, plan: LedgerPlan, batch: TelemetryBatch, now_ns: int) -> None:
        self._store = store
        self._plan = plan
        self._batch = batch
        self._now_ns = now_ns

    def apply(self, fingerprint: str, increments: dict[str, float], expires_at: dict[str, int]) -> Applied:
        try:
            charge = self._plan.charge(self._batch, self._now_ns, self._store)
        except Exception as exc:
            # The batch and its budgets go on; only its ledger charge is lost.
            log.error("ledger charge failed; batch forwarded without it", error=type(exc).__name__, exc_info=True)
            charge = LedgerCharge({}, {})
        if not charge.increments:
            return self._store.apply(fingerprint, increments, expires_at)
        applied = self._store.apply(
            fingerprint, {**increments, **charge.increments}, {**expires_at, **charge.expires_at}
        )
        return Applied({key: applied.totals[key] for key in increments}, applied.repeated)

    def read(self, keys: list[str]) -> dict[str, float]:
        return self._store.read(keys)

    def admit(self, family: str, members: list[str], cap: int, expires_at: int) -> set[str]:
        if not isinstance(self._store, AdmittingStore):
            raise TypeError("the store keeps no cardinality caps")
        return self._store.admit(family, members, cap, expires_at)

    def scan(self, prefix: str) -> dict[str, float]:
        return self._store.scan(prefix)

    def close(self) -> None:
        self._store.close()


def ledger_keys(rows: Iterable[LedgerRow]) -> tuple[str, ...]:
    """The key dimensions the rows carry, in first-seen order."""
    return tuple(dict.fromkeys(k for row in rows for k, _ in row.keys))
