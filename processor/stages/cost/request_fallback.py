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

from dataclasses import dataclass

import polars as pl

from processor.core import genai_attributes as ga
from processor.core.decode import TelemetryBatch
from processor.stages.cost.native import NativeCost, NativeCosts
from processor.stages.cost.pricing_table import PriceSlots, PricingTable

# The model the caller asked for, in precedence order (the response model's sources come first in
# genai_attributes.MODEL_SOURCES).
REQUEST_MODEL_SOURCES = tuple(key for key in ga.MODEL_SOURCES if key in ("gen_ai.request.model", "llm.request.model"))


@dataclass(frozen=True)
class Fallback:
    """The spans a batch prices by their request model: `rows` (Boolean, one per span) and
    `models`, the request model on those rows and null elsewhere."""

    rows: pl.Series
    models: pl.Series


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


def plan(table: PricingTable, genai: pl.DataFrame, status: pl.Series, requests: pl.Series | None) -> Fallback | None:
    """The spans to price by their request model: those given a status (they have token counts
    and no SDK cost that stands) whose own model has no entry of its own while their request model
    has one. None when there are none."""
    if requests is None or requests.len() != genai.height:
        return None
    frame = pl.DataFrame(
        {
            "provider": genai.get_column(ga.PROVIDER),
            "model": genai.get_column(ga.MODEL),
            "request": requests,
            "status": status,
        }
    ).with_row_index("row")
    todo = frame.filter(pl.col("status").is_not_null() & pl.col("request").is_not_null())
    if todo.is_empty():
        return None
    triples = todo.select("provider", "model", "request").unique()
    chosen = [
        (provider, model, request)
        for provider, model, request in triples.iter_rows()
        if table.resolve(provider, model) is None and table.resolve(provider, request) is not None
    ]
    if not chosen:
        return None
    keys = pl.DataFrame(chosen, schema=triples.schema, orient="row").with_columns(pl.lit(True).alias("chosen"))
    # Null providers and models are pairs too (a span with no provider is matched against all).
    joined = todo.join(keys, on=["provider", "model", "request"], how="inner", nulls_equal=True)
    rows = pl.Series("rows", [False] * genai.height).scatter(joined.get_column("row"), True)
    models = pl.select(pl.when(rows).then(requests)).to_series().alias(ga.MODEL)
    return Fallback(rows, models)


def repriced_genai(genai: pl.DataFrame, fallback: Fallback) -> pl.DataFrame:
    """The GenAI columns a second pass prices: the request model on the fallback's rows, and no
    model or tokens on the others, which that pass therefore leaves alone."""
    rows = fallback.rows
    return genai.with_columns(
        fallback.models,
        *(pl.when(rows).then(pl.col(column)).alias(column) for column in ga.COLUMNS if column != ga.MODEL),
    )


def repriced_rows(fallback: Fallback, second_status: pl.Series, unpriced: str) -> pl.Series:
    """The fallback's rows the second pass priced (a request model's price history may not cover
    the span's start: such a span stays as the first pass left it)."""
    return fallback.rows & second_status.is_not_null() & (second_status != unpriced).fill_null(False)


def merged(
    first: dict[str, pl.Series], second: dict[str, pl.Series], rows: pl.Series, status_key: str, estimated: str
) -> dict[str, pl.Series]:
    """`first`'s columns with `second`'s on `rows` (see repriced_rows), and those rows' status
    `estimated`."""
    out = {}
    for key, column in first.items():
        if key == status_key:
            out[key] = pl.select(pl.when(rows).then(pl.lit(estimated)).otherwise(column)).to_series().alias(key)
        else:
            out[key] = second[key].zip_with(rows, column).alias(key)
    return out


def moved_counts(
    genai: pl.DataFrame, rows: pl.Series, status: pl.Series, unpriced: str
) -> dict[tuple[str | None, str | None], int]:
    """Per (provider, model), how many of `rows` the first pass had left `unpriced`: counted as
    estimated instead (rows the first pass estimated stay counted as they were)."""
    counts = (
        pl.DataFrame({"provider": genai.get_column(ga.PROVIDER), "model": genai.get_column(ga.MODEL)})
        .filter(rows & (status == unpriced))
        .group_by("provider", "model")
        .len()
    )
    return {(provider, model): count for provider, model, count in counts.iter_rows()}


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
    status = costs.written[statuses.key]
    fallback = plan(table, costs.genai, status, request_models(batch))
    if fallback is None:
        return costs
    second = native.run(batch, repriced_genai(costs.genai, fallback), table, slots, sdk_column)
    if second is None or second.written is None:
        return costs
    rows = repriced_rows(fallback, second.written[statuses.key], statuses.unpriced)
    if not rows.any():
        return costs
    written = merged(costs.written, second.written, rows, statuses.key, statuses.estimated)
    moved = moved_counts(costs.genai, rows, status, statuses.unpriced)
    unpriced = [
        (provider, model, left)
        for provider, model, count in costs.unpriced
        if (left := count - moved.get((provider, model), 0)) > 0
    ]
    estimated = [*costs.estimated, *((provider, model, count) for (provider, model), count in moved.items())]
    # The merged columns are new Series: the writer converts them (no Arrow arrays to reuse).
    return NativeCosts(costs.genai, written, {}, costs.priced, unpriced, estimated)
