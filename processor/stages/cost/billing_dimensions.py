"""Billing dimensions beyond token counts: the service tier, 1-hour cache writes and the search
context size of a request, applied to the costs the cost stage computed from tokens.

What an invoice bills and a span can say (sources below, first non-null wins):
- service tier (OpenAI flex, priority, batch; Anthropic and Gemini batch): the entry's (or its
  file's) `service_tiers` factor times every token part; the per-request fee is not scaled. A tier
  the entry has no factor for is priced at the standard prices, and `genops.cost.assumed` says so.
  `default`, `auto`, `standard` and `on_demand` are the standard prices.
- 1-hour cache writes: of the cache write tokens, those the span counts as 1-hour writes cost the
  cache write price of the row that priced the span (long-context tiers included) times the
  entry's `cache_write_1h_factor`; the rest are 5-minute writes. A count above the cache writes
  is clipped to them.
- per-modality tokens (`gen_ai.usage.{audio,image,video}.input_tokens`,
  `gen_ai.usage.audio.output_tokens`, OpenInference `llm.token_count.prompt_details.audio` and
  `completion_details.audio`): parts of the input (uncached) or output counts, billed at the
  entry's `modality_prices` instead of the text price they were priced at; text tokens and kinds
  without such a price stay at the text price.
- search context size: the per-request fee is the entry's `search_context_fees` for the size the
  span names; a span that names none (or a size the entry does not list) pays the entry's
  `request` fee, and `genops.cost.assumed` names the size that fee is for.

Only spans that carry a dimension, or are priced by an entry with search context fees, are
recomputed (one Python step per such span, on the costs the batch query wrote): a batch without
any is returned as it came. No value the sender chose is written back: the tier written is the
table's name for it, and an unknown tier or size is reported as the assumption made instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from processor.core import genai_attributes as ga
from processor.core.contract import BatchChanges
from processor.core.decode import START_TIME, TelemetryBatch
from processor.stages.cost.pricing_table import ANY_PROVIDER, PriceEntry, PricingTable

# The span attributes read, first non-null wins.
SERVICE_TIER_SOURCES = (
    "openai.response.service_tier",
    "gen_ai.openai.response.service_tier",
    "openai.request.service_tier",
    "gen_ai.openai.request.service_tier",
    "genops.service_tier",
)
CACHE_WRITE_1H_SOURCES = ("genops.tokens.cache_write_1h",)
SEARCH_CONTEXT_SOURCES = ("genops.request.search_context_size",)
# Per-modality counts (parts of the input or output counts), by MODALITY_KINDS.
MODALITY_SOURCES: dict[str, tuple[str, ...]] = {
    "audio_input": ("gen_ai.usage.audio.input_tokens", "llm.token_count.prompt_details.audio"),
    "audio_output": ("gen_ai.usage.audio.output_tokens", "llm.token_count.completion_details.audio"),
    "image_input": ("gen_ai.usage.image.input_tokens",),
    "video_input": ("gen_ai.usage.video.input_tokens",),
}
SOURCES = (
    *SERVICE_TIER_SOURCES,
    *CACHE_WRITE_1H_SOURCES,
    *SEARCH_CONTEXT_SOURCES,
    *(key for keys in MODALITY_SOURCES.values() for key in keys),
)
STANDARD_TIERS = frozenset({"default", "auto", "standard", "on_demand"})

# What is written.
COST_SERVICE_TIER = "genops.cost.service_tier"
COST_ASSUMED = "genops.cost.assumed"
STANDARD_ASSUMED = "service_tier=standard"
# The token parts (genops.cost.<part>) and the total, as the cost stage writes them.
PART_NAMES = ("input", "cache_read", "cache_write", "reasoning", "output")
TOTAL = "genops.cost.total"
MILLION = 1_000_000.0
NS_PER_DAY = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class SpanDimensions:
    """What one span says about the dimensions (None: it does not say)."""

    service_tier: str | None
    cache_write_1h_tokens: int | None
    search_context_size: str | None
    # Tokens by MODALITY_KINDS, of those the span reports.
    modality_tokens: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SpanTokens:
    """The span's canonical counts the parts were priced from (genai_attributes' meaning)."""

    uncached_input: int
    output_without_reasoning: int
    cache_write: int


@dataclass(frozen=True)
class SpanCost:
    """One span's token parts (PART_NAMES order) and per-request fee."""

    parts: tuple[float, float, float, float, float]
    request: float

    @property
    def total(self) -> float:
        return sum(self.parts) + self.request


@dataclass(frozen=True)
class Repriced:
    cost: SpanCost
    service_tier: str | None
    assumed: str | None


def reprice(entry: PriceEntry, cost: SpanCost, tokens: SpanTokens, dims: SpanDimensions) -> Repriced:
    """The span's cost with its dimensions applied, from the costs its tokens were priced at."""
    parts = list(cost.parts)
    assumptions: list[str] = []
    written_1h = min(dims.cache_write_1h_tokens or 0, tokens.cache_write)
    if written_1h > 0 and entry.cache_write_1h_factor is not None:
        five_minute_price = parts[2] / tokens.cache_write  # the priced row's, tiers included
        parts[2] += written_1h * five_minute_price * (entry.cache_write_1h_factor - 1.0)
    _modalities(entry, parts, tokens, dims.modality_tokens)
    tier = None
    if dims.service_tier is not None and dims.service_tier not in STANDARD_TIERS:
        factor = entry.service_tiers.get(dims.service_tier)
        if factor is None:
            assumptions.append(STANDARD_ASSUMED)
        else:
            tier = dims.service_tier
            parts = [part * factor for part in parts]
    request = cost.request
    if entry.search_context_fees:
        fee = entry.search_context_fees.get(dims.search_context_size or "")
        if fee is None:
            assumptions.append(f"search_context_size={entry.assumed_search_context}")
        else:
            request = fee
    return Repriced(SpanCost(tuple(parts), request), tier, ",".join(assumptions) or None)  # type: ignore[arg-type]


def _modalities(entry: PriceEntry, parts: list[float], tokens: SpanTokens, counts: dict[str, int]) -> None:
    """Audio, image and video tokens at their own prices instead of the text price they were
    billed at (input kinds are uncached input, output kinds output, clipped to those counts)."""
    input_left, output_left = tokens.uncached_input, tokens.output_without_reasoning
    # The priced row's text prices per token (long-context tiers and dates included).
    input_price = parts[0] / input_left if input_left > 0 else 0.0
    output_price = parts[4] / output_left if output_left > 0 else 0.0
    for kind, count in counts.items():
        price = entry.modality_prices.get(kind)
        if price is None or count <= 0:
            continue
        is_output = kind.endswith("_output")
        left = output_left if is_output else input_left
        count = min(count, left)
        if count <= 0:
            continue
        text_price = output_price if is_output else input_price
        parts[4 if is_output else 0] += count * (price / MILLION - text_price)
        if is_output:
            output_left -= count
        else:
            input_left -= count


def apply_dimensions(
    batch: TelemetryBatch,
    changes: BatchChanges,
    table: PricingTable,
    group_of: Callable[[str | None, str | None], int | None],
    priced_providers: set[str] | None = None,
) -> BatchChanges:
    """`changes` (the cost stage's) with the batch's billing dimensions applied; `group_of` is the
    stage's (provider, model) -> price group; `priced_providers`, when known, the providers the
    batch's spans were priced by (a batch no fee provider priced needs no fee check)."""
    total = changes.set_attributes.get(TOTAL)
    genai = batch.derived.get("genai")
    if total is None or not isinstance(genai, pl.DataFrame) or total.null_count() == total.len():
        return changes
    # Most batches carry no dimension and no search fee: they cost a few lookups, no query.
    present = any(batch.column_type(key) is not None for key in SOURCES)
    fee_models = table.search_fee_models
    model = changes.set_attributes.get("genops.cost.model")
    fees = bool(fee_models) and model is not None
    if fees and priced_providers is not None and ANY_PROVIDER not in table.search_fee_providers:
        fees = not table.search_fee_providers.isdisjoint(priced_providers)
    if not present and not fees:
        return changes
    dims = _dimension_columns(batch)
    masks = [column.is_not_null() for column in dims.values() if column is not None]
    if fees:
        masks.append(model.is_in(fee_models).fill_null(False))  # type: ignore[union-attr]
    if not masks:
        return changes
    candidates = masks[0]
    for mask in masks[1:]:
        candidates = candidates | mask
    rows = (candidates & total.is_not_null()).arg_true().to_list()
    if not rows:
        return changes
    written = dict(changes.set_attributes)
    arrow = dict(changes.arrow)
    parts = {name: written[f"genops.cost.{name}"].to_list() for name in PART_NAMES}
    totals = total.to_list()
    tiers: list[str | None] = [None] * total.len()
    assumed: list[str | None] = [None] * total.len()
    providers, models = genai.get_column(ga.PROVIDER), genai.get_column(ga.MODEL)
    counts = {name: genai.get_column(name).to_list() for name in ga.TOKEN_COLUMNS}
    starts = batch.column_series(START_TIME)
    for row in rows:
        group = group_of(providers[row], models[row])
        if group is None:
            continue
        entry = entry_at(table, group, None if starts is None else starts[row])
        before = tuple(parts[name][row] or 0.0 for name in PART_NAMES)
        cost = SpanCost(before, totals[row] - sum(before))  # type: ignore[arg-type]
        span = SpanDimensions(
            service_tier=_text(dims[SERVICE_TIER_SOURCES], row),
            cache_write_1h_tokens=_count(dims[CACHE_WRITE_1H_SOURCES], row),
            search_context_size=_text(dims[SEARCH_CONTEXT_SOURCES], row),
            modality_tokens={
                kind: n for kind, keys in MODALITY_SOURCES.items() if (n := _count(dims[keys], row)) is not None
            },
        )
        found = reprice(entry, cost, _tokens_of(counts, row), span)
        if found.cost == cost and found.service_tier is None and found.assumed is None:
            continue  # left exactly as the batch query wrote it
        for name, value in zip(PART_NAMES, found.cost.parts, strict=True):
            parts[name][row] = value
        totals[row] = found.cost.total
        tiers[row], assumed[row] = found.service_tier, found.assumed
    for name in PART_NAMES:
        key = f"genops.cost.{name}"
        written[key] = pl.Series(key, parts[name], dtype=pl.Float64)
        arrow.pop(key, None)  # the Series is the value now
    written[TOTAL] = pl.Series(TOTAL, totals, dtype=pl.Float64)
    arrow.pop(TOTAL, None)
    for key, values in ((COST_SERVICE_TIER, tiers), (COST_ASSUMED, assumed)):
        if any(v is not None for v in values):
            written[key] = pl.Series(key, values, dtype=pl.String)
    return BatchChanges(
        set_attributes=written,
        rewrites=changes.rewrites,
        events=changes.events,
        event_columns=changes.event_columns,
        arrow=arrow,
    )


def _dimension_columns(batch: TelemetryBatch) -> dict[tuple[str, ...], pl.Series | None]:
    """Per dimension, its first usable source per span (None: no span says)."""
    out: dict[tuple[str, ...], pl.Series | None] = {}
    for sources, read in (
        (SERVICE_TIER_SOURCES, _name_values),
        (CACHE_WRITE_1H_SOURCES, _count_values),
        (SEARCH_CONTEXT_SOURCES, _name_values),
        *((keys, _count_values) for keys in MODALITY_SOURCES.values()),
    ):
        found = [read(column) for column in map(batch.column_series, sources) if column is not None]
        usable = [column for column in found if column is not None]
        if not usable:
            out[sources] = None
        elif len(usable) == 1:
            out[sources] = usable[0]
        else:
            out[sources] = (
                pl.DataFrame({str(i): c for i, c in enumerate(usable)}).select(pl.coalesce(pl.all())).to_series()
            )
    return out


def _name_values(column: pl.Series) -> pl.Series | None:
    """Lowercased names, blanks as null; None for a column that is not text."""
    if column.dtype != pl.String:
        return None
    name = pl.first().str.strip_chars().str.to_lowercase()
    return column.to_frame().select(pl.when(name != "").then(name)).to_series()


def _count_values(column: pl.Series) -> pl.Series | None:
    """Whole token counts (text and doubles read as genai_attributes reads counts); others null."""
    if column.dtype == pl.String:
        column = column.str.strip_chars().cast(pl.Float64, strict=False)
    elif column.dtype.is_numeric():
        column = column.cast(pl.Float64)
    else:
        return None
    value = pl.first()
    usable = value.is_finite() & (value >= 0) & (value < 2.0**62)
    return column.to_frame().select(pl.when(usable).then(value).cast(pl.Int64)).to_series()


def entry_at(table: PricingTable, group: int, start_ns: int | None) -> PriceEntry:
    """The group's entry in effect at the span start (its price history's), else its first."""
    if start_ns:
        day = dt.date(1970, 1, 1) + dt.timedelta(days=start_ns // NS_PER_DAY)
        for entry in table.histories[group]:
            if (entry.effective_from or dt.date.min) <= day < (entry.effective_to or dt.date.max):
                return entry
    return table.entry(group)


def tokens_of(counts: dict[str, list], row: int) -> SpanTokens:
    """Row `row`'s counts as reprice takes them, from canonical columns (as lists)."""
    return _tokens_of(counts, row)


def _tokens_of(counts: dict[str, list], row: int) -> SpanTokens:
    def count(name: str) -> int:
        return counts[name][row] or 0

    read, write, reasoning = count(ga.TOKENS_CACHE_READ), count(ga.TOKENS_CACHE_WRITE), count(ga.TOKENS_REASONING)
    output = counts[ga.TOKENS_OUTPUT][row]
    return SpanTokens(
        uncached_input=max(count(ga.TOKENS_INPUT) - read - write, 0),
        output_without_reasoning=max((reasoning if output is None else output) - reasoning, 0),
        cache_write=write,
    )


def _text(column: pl.Series | None, row: int) -> str | None:
    return None if column is None else column[row]


def _count(column: pl.Series | None, row: int) -> int | None:
    return None if column is None else column[row]
