"""The cost stage's native path: its whole per-batch query (GenAI normalisation, price lookup,
cost arithmetic, the written columns and the metric counts) in one Rust call per batch
(`cost_batch` in processor/native/src/stages/cost.rs), on the frame's Arrow buffers.

Python keeps what is per table or per day, not per span: resolving (provider, model) pairs the
native side has not seen against the pricing table, and laying out the price rows of each
PriceSlots once. This is the stage's one engine; the polars query it was written against is the
differential oracle in tests/oracle/cost.py, which tests/stages/cost/test_cost_native.py checks it against.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from processor.core import genai_attributes as ga
from processor.core.batch_columns import array_parts, arrow_series
from processor.core.decode import START_TIME, TelemetryBatch, native_module
from processor.stages.cost.cache_savings import CACHE_SAVINGS, NO_SAVINGS, KernelSavings
from processor.stages.cost.pricing_table import PRICE_FIELDS, PriceSlots, PricingTable, priced_match

_NEWEST = pl.CompatLevel.newest()
# How the native side reads a source column, by dtype; other numeric sources are cast to Int64
# first, as the polars path casts them.
_KINDS = {pl.String: "string", pl.Int64: "i64", pl.Float64: "f64"}
_TEXT_COLUMNS = (ga.MODEL, ga.PROVIDER)
_PRICE_COLUMNS = [*(f"p_{name}" for name in PRICE_FIELDS), "p_request"]


@dataclass(frozen=True)
class NativeCosts:
    """One batch's results: the canonical GenAI columns, the stage's columns (None: nothing to
    price), and the metric counts: priced (provider, spans), unpriced and estimated (provider,
    model, spans)."""

    genai: pl.DataFrame
    written: dict[str, pl.Series] | None
    # The written columns as the Arrow arrays the Series were made from.
    written_arrow: dict[str, pa.Array]
    priced: list[tuple[str, int]]
    unpriced: list[tuple[str | None, str | None, int]]
    estimated: list[tuple[str | None, str | None, int]]
    # None: the cache savings are worked out in Python for every span (cache_savings.py).
    savings: KernelSavings | None = NO_SAVINGS


def native_cost_available() -> bool:
    """Always true now that the extension is required (kept for the tests that ask)."""
    return hasattr(native_module(), "cost_batch")


class NativeCost:
    """Runs batches through cost_batch, with the per-table pairs and per-slots price rows it needs."""

    def __init__(self, written: tuple[str, ...], max_pairs: int, estimate_near: bool = True) -> None:
        self._module = native_module()
        self._estimate_near = estimate_near
        self._written = written
        self._max_pairs = max_pairs
        self._pairs: tuple[PricingTable, Any] | None = None
        self._rows: dict[int, tuple[PriceSlots, Any]] = {}
        self._lock = threading.Lock()
        # polars' sum_horizontal adds in an order that depends on its thread pool: matched natively.
        self._threaded = pl.thread_pool_size() > 1
        self._written_arrow = _written_arrow(len(written))

    def run(
        self,
        batch: TelemetryBatch,
        genai: pl.DataFrame | None,
        table: PricingTable,
        slots: PriceSlots,
        sdk_column: str | None,
    ) -> NativeCosts | None:
        """The batch's costs; None for a batch this path cannot read (the stage then fails on it).
        `sdk_column`: the column whose non-null values mark spans the SDK priced (None: price all)."""
        rows = self._price_rows(slots)
        if rows is None:
            return None
        columns = self._columns(batch, genai)
        if columns is None:
            return None
        texts, counts = columns
        start = batch.column_array(START_TIME)
        if start is None:
            return None
        unsigned = start.type == pa.uint64()
        if not unsigned and start.type != pa.int64():
            start = batch.column_series(START_TIME).cast(pl.Int64, strict=False).to_arrow()  # type: ignore[union-attr]  # present: its array was just read
        sdk_priced = None
        sdk = None if sdk_column is None else batch.column_array(sdk_column)
        if sdk is not None and sdk.null_count < len(sdk):
            sdk_priced = array_parts(pc.is_valid(sdk))
        pairs = self._pairs_for(table)
        args = (texts, counts, genai is not None, array_parts(start), unsigned, sdk_priced, pairs)
        for attempt in range(3):
            found = self._module.cost_batch(*args, rows, table.version, self._threaded)
            if found[0] == "done":
                break
            missing = found[1]
            # Past the bound the known pairs restart from this batch's: random model names cost
            # time, never unbounded memory.
            if attempt == 0 and len(pairs) + len(missing) > self._max_pairs:
                pairs.clear()
            pairs.add([self._pair(table, provider, model) for provider, model in missing])
        else:
            return None
        _, genai_buffers, written_buffers, priced, unpriced, estimated, savings_buffers = found
        n = len(batch)
        if genai is None:
            genai = pl.DataFrame(_series_of(ga.COLUMNS, _arrays_of(n, genai_buffers, _GENAI_ARROW)))
        written = None
        written_arrow = {}
        if written_buffers is not None:
            arrays = _arrays_of(n, written_buffers, self._written_arrow)
            written = dict(zip(self._written, _series_of(self._written, arrays), strict=True))
            written_arrow = dict(zip(self._written, arrays, strict=True))
        savings = NO_SAVINGS
        if savings_buffers is not None:
            parts, left = savings_buffers
            (array,) = _arrays_of(n, [parts], (pa.float64(),))
            savings = KernelSavings(arrow_series(CACHE_SAVINGS, array), array, left)
        return NativeCosts(genai, written, written_arrow, priced, unpriced, estimated, savings)

    def _pair(self, table: PricingTable, provider: str | None, model: str | None) -> tuple:
        """(provider, model, price group or None, estimated) as PairGroups.add takes it."""
        found = priced_match(table, provider, model, estimate_near=self._estimate_near)
        return (provider, model, None if found is None else found.group, found is not None and found.near)

    def _pairs_for(self, table: PricingTable) -> Any:
        current = self._pairs
        if current is None or current[0] is not table:
            with self._lock:
                current = self._pairs
                if current is None or current[0] is not table:
                    current = self._pairs = (table, self._module.PairGroups(_aliases()))
        return current[1]

    def _price_rows(self, slots: PriceSlots) -> Any:
        cached = self._rows.get(id(slots))
        if cached is not None and cached[0] is slots:
            return cached[1]
        rows = _native_rows(self._module, slots)
        if len(self._rows) >= 64:
            self._rows.clear()
        self._rows[id(slots)] = (slots, rows)
        return rows

    def _columns(self, batch: TelemetryBatch, genai: pl.DataFrame | None) -> tuple[list, list] | None:
        """(text sources, count sources) as Arrow parts, or None for a layout this path cannot read."""
        if genai is not None:
            if any(genai.schema.get(c) != dtype for c, dtype in zip(ga.COLUMNS, _GENAI_TYPES, strict=True)):
                return None
            texts: list[list[tuple | None]] = [[_parts(genai.get_column(c), "string")] for c in _TEXT_COLUMNS]
            counts: list[list[tuple | None]] = [[_parts(genai.get_column(c), "i64")] for c in ga.TOKEN_COLUMNS]
            return texts, counts
        texts = [_sources(batch, keys, pl.String()) for keys in (ga.MODEL_SOURCES, ga.PROVIDER_SOURCES)]
        counts = [_sources(batch, ga.TOKEN_SOURCES[c], pl.Int64()) for c in ga.TOKEN_COLUMNS]
        return texts, counts


def _sources(batch: TelemetryBatch, keys: tuple[str, ...], dtype: pl.DataType) -> list[tuple | None]:
    """The columns normalize reads for one canonical column (see genai_attributes._steps), in its
    order: those of a type it can use, other numbers cast to Int64 as the polars path casts them."""
    found: list[tuple | None] = []
    for key in keys:
        arrow_type = batch.column_type(key)
        if arrow_type is None:
            continue
        source_type = _POLARS_TYPES.get(arrow_type)
        if source_type is None:
            source_type = batch.column_series(key).dtype  # type: ignore[union-attr]
        if not ga._usable(source_type, dtype):
            continue
        kind = _KINDS.get(type(source_type))
        if kind is None:
            found.append(_parts(batch.column_series(key).cast(pl.Int64, strict=False), "i64"))  # type: ignore[union-attr]
        else:
            found.append(batch.column_parts(key))
    return found


# The Arrow types of the columns the native scan makes, as polars names them.
_POLARS_TYPES = {
    pa.string_view(): pl.String(),
    pa.binary_view(): pl.Binary(),
    pa.int64(): pl.Int64(),
    pa.float64(): pl.Float64(),
    pa.bool_(): pl.Boolean(),
}


def _native_rows(module: Any, slots: PriceSlots) -> Any:
    """The price rows of `slots` for the native side; None for rows it does not take (a null price)."""
    rows = slots.rows
    prices = rows.select(_PRICE_COLUMNS)
    if any(prices.null_count().row(0)) or rows["entry_provider"].has_nulls() or rows["entry_model"].has_nulls():
        return None
    return module.PriceRows(
        rows["threshold"].to_list(),
        rows["lo"].to_list(),
        rows["hi"].to_list(),
        prices.rows(),
        rows["entry_provider"].to_list(),
        rows["entry_model"].to_list(),
        [list(members) for members in slots.members],
        slots.dated,
    )


def _aliases() -> list[tuple[str, str]]:
    # Identity aliases change nothing, as the polars path's sorted alias lookup leaves them out.
    return [(name, alias) for name, alias in ga.PROVIDER_ALIASES.items() if name != alias]


def _parts(series: pl.Series, kind: str) -> tuple:
    """(kind, length, offset, buffers, child) as arrow.rs reads an array, in place."""
    array = series.to_arrow(compat_level=_NEWEST)
    return (kind, len(array), array.offset, array.buffers(), None)


_GENAI_TYPES = (pl.String(), pl.String(), *(pl.Int64() for _ in ga.TOKEN_COLUMNS))
_GENAI_ARROW = (pa.string_view(), pa.string_view(), *(pa.int64() for _ in ga.TOKEN_COLUMNS))


def _written_arrow(count: int) -> tuple[pa.DataType, ...]:
    # WRITTEN: the total and five parts (Float64), then five strings.
    return (*(pa.float64() for _ in range(6)), *(pa.string_view() for _ in range(count - 6)))


def _arrays_of(n: int, buffers: list, types: tuple[pa.DataType, ...]) -> list[pa.Array]:
    arrays = []
    for parts, arrow_type in zip(buffers, types, strict=True):
        validity, *data = parts
        arrays.append(pa.Array.from_buffers(arrow_type, n, [_buffer(validity), *map(pa.py_buffer, data)]))
    return arrays


def _series_of(names: tuple[str, ...], arrays: list[pa.Array]) -> list[pl.Series]:
    return [arrow_series(name, array) for name, array in zip(names, arrays, strict=True)]


def _buffer(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)
