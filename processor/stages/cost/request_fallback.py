"""The request-model fallback: a span whose response model the table does not know is priced, as
an estimate, with the entry of the model it asked for.

Providers answer a request for an alias with the model that served it: `mistral-small-latest`
comes back as `mistral-small-2409`, `open-mistral-nemo` as `open-mistral-nemo-2407`. The span's
model is its response model (genai_attributes.MODEL_SOURCES), and a table may know the alias, and
not every dated name it resolves to. Leaving such a span unpriced loses a cost the table can
state, give or take the difference between the alias and what it served that day; so:

1. the span's model has an entry of its own (exact, a snapshot of a prefix entry, a regex):
   `priced` with it (a dated snapshot of a known family is that family: model_versions.py);
2. else the request model (`gen_ai.request.model`, then `llm.request.model`) has an entry of its
   own: `estimated` with that entry (written to `genops.cost.model`), counted in
   `genops_cost_estimated_spans_total` by the span's provider and model, never as priced;
3. else the span's model is near a family (model_versions.py): `estimated` with the family;
4. else `unpriced`.

Step 2 comes before step 3: the entry of the name the caller asked for is a better estimate than
a family whose text the answer merely starts with (a `gpt-5.2` request answered as an unknown
`gpt-5.2-…` is not priced as `gpt-5`). Like near matches, the fallback is an estimate:
`cost.near_matches: unpriced` turns both off. Both engines (the native one and the polars oracle)
take the spans to reprice from `plan` and price them in a second pass of their own, with the
request model in place of the span's and no tokens on the other spans.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import polars as pl
import pyarrow as pa

from processor.core import genai_attributes as ga
from processor.core.decode import TelemetryBatch
from processor.stages.cost.cache_savings import CACHE_SAVINGS, KernelSavings
from processor.stages.cost.native import NativeCost, NativeCosts
from processor.stages.cost.pricing_table import PriceSlots, PricingTable

# The model the caller asked for, in precedence order (the response model's sources come first in
# genai_attributes.MODEL_SOURCES).
REQUEST_MODEL_SOURCES = tuple(key for key in ga.MODEL_SOURCES if key in ("gen_ai.request.model", "llm.request.model"))


@dataclass(frozen=True)
class Span:
    """A span the fallback reprices: its row, its own provider and model, its first status, and
    the request model it is repriced with."""

    row: int
    provider: str | None
    model: str | None
    status: str
    request: str


@dataclass(frozen=True)
class Fallback:
    """The spans a batch prices by their request model, in row order."""

    spans: tuple[Span, ...]

    @property
    def rows(self) -> list[int]:
        return [span.row for span in self.spans]


def request_models(batch: TelemetryBatch) -> pl.Series | None:
    """Per span, its request model (first non-null of REQUEST_MODEL_SOURCES, text values only);
    None when no span of the batch names one."""
    found = []
    for key in REQUEST_MODEL_SOURCES:
        series = batch.column_series(key)
        if series is not None and series.dtype == pl.String:
            found.append(series)
    if not found:
        return None
    return found[0] if len(found) == 1 else pl.select(pl.coalesce(found)).to_series()


def plan(
    table: PricingTable,
    genai: pl.DataFrame,
    status: pl.Series,
    requests: pl.Series | None,
    pairs: Iterable[tuple[str | None, str | None]] | None = None,
) -> Fallback | None:
    """The spans to price by their request model: those given a status (they have token counts
    and no SDK cost that stands) whose own model has no entry of its own while their request model
    has one. `pairs`: the (provider, model) pairs the first pass left unpriced or estimated, when
    the engine counted them (the spans to look at are theirs); else every pair with a status.
    None when there are none."""
    if requests is None or requests.len() != genai.height:
        return None
    frame = pl.DataFrame([genai.get_column(ga.PROVIDER), genai.get_column(ga.MODEL), requests, status])
    frame.columns = ["provider", "model", "request", "status"]
    todo = pl.col("status").is_not_null() & pl.col("request").is_not_null()
    if pairs is None:
        pairs = frame.filter(todo).select("provider", "model").unique().iter_rows()
    # Only a model without an entry of its own falls back (one that has an entry but no price at
    # the span's start stays unpriced: its own price history says so).
    unknown = {(provider, model) for provider, model in pairs if table.resolve(provider, model) is None}
    if not unknown:
        return None
    # (A span with a request model has a model: the request model is one of its sources.)
    named = [model for _, model in unknown if model is not None]
    candidates = frame.with_row_index("row").filter(todo & pl.col("model").is_in(named))
    resolved: dict[tuple[str | None, str], bool] = {}
    spans = []
    for row, provider, model, request, first in candidates.iter_rows():
        if (provider, model) not in unknown:
            continue
        key = (provider, request)
        found = resolved.get(key)
        if found is None:
            found = resolved[key] = table.resolve(provider, request) is not None
        if found:
            spans.append(Span(row, provider, model, first, request))
    return Fallback(tuple(spans)) if spans else None


def repriced_genai(genai: pl.DataFrame, fallback: Fallback) -> pl.DataFrame:
    """The GenAI columns of the fallback's spans alone, with their request model as the model:
    what a second pass prices (one row per span, in the fallback's order)."""
    subset = genai[fallback.rows]
    requests = pl.Series(ga.MODEL, [span.request for span in fallback.spans], dtype=pl.String)
    return subset.replace_column(subset.get_column_index(ga.MODEL), requests)


def repriced(fallback: Fallback, second_status: pl.Series, unpriced: str) -> list[int]:
    """The positions (in the fallback's spans, as in the second pass's rows) of the spans the second
    pass priced: a request model's price history may not cover a span's start, and such a span
    stays as the first pass left it."""
    return [i for i, status in enumerate(second_status.to_list()) if status is not None and status != unpriced]


def merged(
    first: dict[str, pl.Series],
    second: dict[str, pl.Series],
    fallback: Fallback,
    kept: list[int],
    status_key: str,
    estimated: str,
) -> dict[str, pl.Series]:
    """`first`'s columns (one per span of the batch) with the second pass's values on the kept
    spans' rows, and those spans' status `estimated`."""
    rows = [fallback.spans[i].row for i in kept]
    height = next(iter(first.values())).len()
    # One concatenation and one gather for all columns (a scatter per column costs ~0.3 ms each):
    # row r of the batch reads row r of `first`, or the kept span's row after them.
    ahead = pl.DataFrame(first)
    repriced = pl.DataFrame({key: second[key] for key in first}).select(ahead.columns)[kept]
    repriced = repriced.with_columns(pl.lit(estimated, dtype=pl.String).alias(status_key))
    index = list(range(height))
    for at, row in enumerate(rows):
        index[row] = height + at
    both = pl.concat([ahead, repriced], how="vertical_relaxed", rechunk=False)
    laid = both[pl.Series(index, dtype=pl.UInt32)]
    return {key: laid.get_column(key) for key in first}


def moved_counts(spans: Iterable[Span], unpriced: str) -> Counter[tuple[str | None, str | None]]:
    """Per (provider, model), how many of the repriced `spans` the first pass had left `unpriced`:
    counted as estimated instead (those it estimated stay counted as they were)."""
    return Counter((span.provider, span.model) for span in spans if span.status == unpriced)


@dataclass(frozen=True)
class Statuses:
    """The cost stage's status attribute and the values of it the fallback reads and writes."""

    key: str
    unpriced: str
    estimated: str


def with_native_fallback(
    native: NativeCost,
    batch: TelemetryBatch,
    table: PricingTable,
    slots: PriceSlots,
    costs: NativeCosts | None,
    sdk_column: str | None,
    statuses: Statuses,
) -> NativeCosts | None:
    """`costs` (the native engine's first pass over the batch) with the fallback applied: its
    spans repriced by a second native pass, its counts moved from unpriced to estimated. A batch
    with nothing unpriced or estimated (nearly all of them) costs one check."""
    if costs is None or costs.written is None or not (costs.unpriced or costs.estimated):
        return costs
    pairs = [(provider, model) for provider, model, _ in (*costs.unpriced, *costs.estimated)]
    fallback = plan(table, costs.genai, costs.written[statuses.key], request_models(batch), pairs)
    if fallback is None:
        return costs
    rows = fallback.rows
    subset = cast(TelemetryBatch, _Rows(batch, rows))
    second = native.run(subset, repriced_genai(costs.genai, fallback), table, slots, sdk_column)
    if second is None or second.written is None:
        return costs
    kept = repriced(fallback, second.written[statuses.key], statuses.unpriced)
    if not kept:
        return costs
    written = merged(costs.written, second.written, fallback, kept, statuses.key, statuses.estimated)
    spans = [fallback.spans[i] for i in kept]
    moved = moved_counts(spans, statuses.unpriced)
    unpriced = [
        (provider, model, left)
        for provider, model, count in costs.unpriced
        if (left := count - moved.get((provider, model), 0)) > 0
    ]
    estimated = [*costs.estimated, *((provider, model, count) for (provider, model), count in moved.items())]
    # The merged columns are new Series: the writer converts them (no Arrow arrays to reuse).
    savings = _savings_left(costs, [span.row for span in spans])
    return NativeCosts(costs.genai, written, {}, costs.priced, unpriced, estimated, savings)


def _savings_left(costs: NativeCosts, rows: list[int]) -> KernelSavings | None:
    """The first pass's cache savings with the repriced spans that read cached tokens left to
    Python (that pass saw no cost on them, so it made no saving of theirs); None (every span in
    Python) when the first pass left no savings column to add them to."""
    kernel = costs.savings
    if kernel is None:
        return None
    cached = costs.genai.get_column(ga.TOKENS_CACHE_READ) if ga.TOKENS_CACHE_READ in costs.genai.columns else None
    if cached is None or cached.dtype == pl.Null:
        return kernel
    reads = cached.cast(pl.Int64, strict=False).gather(rows).to_list()
    left = [row for row, read in zip(rows, reads, strict=True) if read is not None and read > 0]
    if not left:
        return kernel
    column = kernel.column
    if column is None:
        column = pl.Series(CACHE_SAVINGS, [None] * costs.genai.height, dtype=pl.Float64)
    # No Arrow array: the column changes at the rows left, so the writer converts it.
    return KernelSavings(column, None, sorted({*kernel.left, *left}))


class _Rows:
    """What NativeCost.run reads of a batch besides the GenAI columns (span starts, SDK costs, its
    length), on some of its rows: the second pass prices the fallback's spans alone."""

    def __init__(self, batch: TelemetryBatch, rows: list[int]) -> None:
        self._batch = batch
        self._rows = rows
        self._indices = pa.array(rows, type=pa.int64())

    def __len__(self) -> int:
        return len(self._rows)

    def column_array(self, name: str) -> pa.Array | None:
        array = self._batch.column_array(name)
        return None if array is None else array.take(self._indices)

    def column_series(self, name: str) -> pl.Series | None:
        series = self._batch.column_series(name)
        return None if series is None else series.gather(self._rows)
