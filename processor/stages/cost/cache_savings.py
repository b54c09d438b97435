"""Prompt-cache savings per span: what the cached input tokens would have cost uncached, minus what
they cost (issue 22 item 4).

    genops.cost.cache_savings = cache_read tokens x (input price - cache read price)

at the prices of the row that priced the span (its entry in effect at the span start, and the
long-context tier its prompt size picks), with the service tier factor the span was billed at.
The cost stage wrote the cached tokens' cost already (`genops.cost.cache_read`, every factor
applied), so where the row has a cache read price the saving is that cost scaled by the two
prices' ratio: no factor is worked out a second time. A row whose cache reads are free (price 0)
saves the input price of the tokens (at standard service prices: nothing to scale by).

Only spans with cache reads are looked at (one Python step per such span, per-pair lookups
cached); a batch without any comes back unchanged. Cache writes are not savings (a write costs
more than uncached input and pays back only when read): writes never read again are counted as
waste by processor/stages/cost/cache_metrics.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import polars as pl

from processor.core import genai_attributes as ga
from processor.core.contract import BatchChanges
from processor.core.decode import START_TIME, TelemetryBatch
from processor.stages.cost.billing_dimensions import entry_at
from processor.stages.cost.pricing_table import PriceEntry, PricingTable

CACHE_SAVINGS = "genops.cost.cache_savings"
COST_CACHE_READ = "genops.cost.cache_read"
MILLION = 1_000_000.0


def row_prices(entry: PriceEntry, prompt_tokens: int) -> tuple[float, float]:
    """(input, cache read) USD per million tokens of the row pricing a prompt of this size: the
    tier with the greatest threshold the prompt exceeds, else the base prices; a missing price
    falls back as the pricing table's rows do (tier → base, cache read → input)."""
    prices = dict(entry.prices)
    for tier in sorted(entry.tiers, key=lambda t: t.above_input_tokens):
        if prompt_tokens > tier.above_input_tokens:
            prices = {
                name: tier.prices.get(name) if tier.prices.get(name) is not None else base
                for name, base in entry.prices.items()
            }
    input_price = prices.get("input") or 0.0
    cache_read = prices.get("cache_read")
    return input_price, input_price if cache_read is None else cache_read


def with_cache_savings(
    batch: TelemetryBatch,
    changes: BatchChanges,
    table: PricingTable,
    group_of: Callable[[str | None, str | None], int | None],
) -> BatchChanges:
    """`changes` (the cost stage's, billing dimensions applied) plus genops.cost.cache_savings on
    the priced spans that read cached tokens."""
    cost = changes.set_attributes.get(COST_CACHE_READ)
    genai = batch.derived.get("genai")
    if cost is None or not isinstance(genai, pl.DataFrame) or ga.TOKENS_CACHE_READ not in genai.columns:
        return changes
    cached = genai.get_column(ga.TOKENS_CACHE_READ)
    if cached.dtype == pl.Null:
        return changes
    rows = ((cached.cast(pl.Int64, strict=False) > 0) & cost.is_not_null()).fill_null(False).arg_true().to_list()
    if not rows:
        return changes
    providers, models = genai.get_column(ga.PROVIDER), genai.get_column(ga.MODEL)
    prompts = genai.get_column(ga.TOKENS_INPUT)
    starts = batch.column_series(START_TIME)
    savings: list[float | None] = [None] * cost.len()
    groups: dict[tuple[str | None, str | None], int | None] = {}
    for row in rows:
        pair = (providers[row], models[row])
        if pair not in groups:
            groups[pair] = group_of(*pair)
        group = groups[pair]
        if group is None:
            continue
        entry = entry_at(table, group, None if starts is None else starts[row])
        input_price, cache_price = row_prices(entry, prompts[row] or 0)
        if cache_price > 0:
            savings[row] = cost[row] * (input_price - cache_price) / cache_price
        else:
            savings[row] = cached[row] * input_price / MILLION
    column = pl.Series(CACHE_SAVINGS, savings, dtype=pl.Float64)
    return dataclasses.replace(changes, set_attributes={**changes.set_attributes, CACHE_SAVINGS: column})
