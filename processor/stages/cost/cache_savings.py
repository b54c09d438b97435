"""Prompt-cache savings per span: what the cached input tokens would have cost uncached, minus what
they cost (issue 22 item 4).

    genops.cost.cache_savings = cache_read tokens x (input price - cache read price)

at the prices of the row that priced the span (its entry in effect at the span start, and the
long-context tier its prompt size picks), with the service tier factor the span was billed at.
The cost stage wrote the cached tokens' cost already (`genops.cost.cache_read`, every factor
applied), so where the row has a cache read price the saving is that cost scaled by the two
prices' ratio: no factor is worked out a second time. A row whose cache reads are free (price 0)
saves the input price of the tokens (at standard service prices: nothing to scale by).

The native cost kernel (processor/native/src/stages/cost.rs) works the saving out as it prices a
span, with the prices it picked (`KernelSavings`); Python redoes, one step per span, only the spans
whose cache read cost a billing dimension changed afterwards (a service tier) and those the kernel
leaves to it (no start time: `entry_at` picks the group's first entry), and the whole batch when
there is no kernel result (the polars oracle stage of the tests). A batch without a priced span
that reads cached tokens comes back unchanged. Cache writes are not savings (a write costs
more than uncached input and pays back only when read): writes never read again are counted as
waste by processor/stages/cost/cache_metrics.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

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


@dataclass(frozen=True)
class KernelSavings:
    """genops.cost.cache_savings as the native cost kernel worked it out from the costs it wrote
    (before billing dimensions), and the rows it left to Python; column and array None when no
    priced span of the batch read cached tokens."""

    column: pl.Series | None
    array: pa.Array | None
    left: list[int]


NO_SAVINGS = KernelSavings(None, None, [])


def with_cache_savings(
    batch: TelemetryBatch,
    changes: BatchChanges,
    table: PricingTable,
    group_of: Callable[[str | None, str | None], int | None],
    kernel: KernelSavings | None = None,
    kernel_cache_read: pl.Series | None = None,
) -> BatchChanges:
    """`changes` (the cost stage's, billing dimensions applied) plus genops.cost.cache_savings on
    the priced spans that read cached tokens.

    `kernel`: the native kernel's savings (None: no kernel ran, every span is worked out here);
    `kernel_cache_read`: the cache read costs the kernel wrote, which `changes` holds unless a
    billing dimension changed some."""
    if kernel is None:
        return _all_in_python(batch, changes, table, group_of)
    cost = changes.set_attributes.get(COST_CACHE_READ)
    # (An array None: the column is not the kernel's as it stands, rows are left to work out.)
    if kernel.column is None or cost is None or (kernel.array is None and not kernel.left):
        return changes
    rows = list(kernel.left)
    if cost is not kernel_cache_read and kernel_cache_read is not None:
        # Where a dimension rescaled the cost after the kernel's saving was made.
        changed = (cost != kernel_cache_read).fill_null(True) & kernel.column.is_not_null()
        rows.extend(changed.arg_true().to_list())
    column, array = kernel.column, kernel.array
    if rows:
        rows.sort()
        saved = _savings_at(batch, cost, table, group_of, rows)
        column = column.scatter(rows, pl.Series(saved, dtype=pl.Float64))
        written = {**changes.set_attributes, CACHE_SAVINGS: column}
        return dataclasses.replace(changes, set_attributes=written)
    written = {**changes.set_attributes, CACHE_SAVINGS: column}
    return dataclasses.replace(changes, set_attributes=written, arrow={**changes.arrow, CACHE_SAVINGS: array})


def _all_in_python(
    batch: TelemetryBatch,
    changes: BatchChanges,
    table: PricingTable,
    group_of: Callable[[str | None, str | None], int | None],
) -> BatchChanges:
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
    savings: list[float | None] = [None] * cost.len()
    for row, saved in zip(rows, _savings_at(batch, cost, table, group_of, rows), strict=True):
        savings[row] = saved
    column = pl.Series(CACHE_SAVINGS, savings, dtype=pl.Float64)
    return dataclasses.replace(changes, set_attributes={**changes.set_attributes, CACHE_SAVINGS: column})


def _savings_at(
    batch: TelemetryBatch,
    cost: pl.Series,
    table: PricingTable,
    group_of: Callable[[str | None, str | None], int | None],
    rows: list[int],
) -> list[float | None]:
    """The savings of these rows (priced spans with cached tokens), one Python step each."""
    genai: pl.DataFrame = batch.derived["genai"]  # type: ignore[assignment]
    cached = genai.get_column(ga.TOKENS_CACHE_READ)
    providers, models = genai.get_column(ga.PROVIDER), genai.get_column(ga.MODEL)
    prompts = genai.get_column(ga.TOKENS_INPUT)
    starts = batch.column_series(START_TIME)
    groups: dict[tuple[str | None, str | None], int | None] = {}
    out: list[float | None] = []
    for row in rows:
        pair = (providers[row], models[row])
        if pair not in groups:
            groups[pair] = group_of(*pair)
        group = groups[pair]
        if group is None:
            out.append(None)
            continue
        entry = entry_at(table, group, None if starts is None else starts[row])
        input_price, cache_price = row_prices(entry, prompts[row] or 0)
        if cache_price > 0:
            out.append(cost[row] * (input_price - cache_price) / cache_price)
        else:
            out.append(cached[row] * input_price / MILLION)
    return out
