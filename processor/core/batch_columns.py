"""A decoded batch's columns as the native scan produced them; a polars frame only on demand.

The native stages read columns as Arrow parts, (kind, length, offset, buffers, child), which
processor/native/src/otlp/arrow.rs reads in place. Handing them the scan's own buffers skips the Arrow
arrays and the polars frame that only the fallback paths read (~0.5 ms per 1k-span batch). Columns
a stage sets for the stages after it are kept beside the scanned ones, as polars Series.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

# Arrow type -> the kind arrow.rs reads it as. Unsigned times go over as their 64 bits: below
# 2^63 in practice, and the native stages hand larger ones back to their polars paths.
PART_KINDS = {
    pa.string_view(): "string",
    pa.binary_view(): "binary",
    pa.int64(): "i64",
    pa.uint64(): "i64",
    pa.float64(): "f64",
    pa.bool_(): "bool",
}
_NEWEST = pl.CompatLevel.newest()


def array_parts(array: pa.Array) -> tuple | None:
    """An array as arrow.rs reads it, or None for a type it does not read."""
    kind = PART_KINDS.get(array.type)
    if kind is None:
        return None
    return (kind, len(array), array.offset, array.buffers(), None)


def series_array(series: pl.Series) -> pa.Array:
    # The newest Arrow layout is polars' own (string views): no conversion.
    return series.to_arrow(compat_level=_NEWEST)


def arrow_series(name: str, array: pa.Array) -> pl.Series:
    if _FROM_C is None:
        return pl.Series(name, array)
    # polars' own import of one Arrow C array: half the cost of pl.Series(name, array), which
    # goes through its generic constructor (a batch has ~30 of these).
    imported = _FROM_C(array)
    imported.rename(name)
    return pl.Series._from_pyseries(imported)


try:
    from polars._plr import PySeries

    _FROM_C = PySeries.from_arrow_c_array
except (ImportError, AttributeError):  # another polars build: the public constructor
    _FROM_C = None  # type: ignore[assignment]  # checked before each call


class ScannedColumns:
    """The columns of one batch: scanned buffers, then what stages set for later stages.

    `names` is the frame's column order, columns with no value in the batch included (they
    become all-null columns of the frame and read as absent here).
    """

    def __init__(self, rows: int, names: list[str]) -> None:
        self.rows = rows
        self.names = names
        self._buffers: dict[str, tuple[pa.DataType, list]] = {}
        self._arrays: dict[str, pa.Array] = {}
        self._set: dict[str, pl.Series] = {}

    def add_buffers(self, name: str, arrow_type: pa.DataType, buffers: list[bytes | None]) -> None:
        """A scanned column: its Arrow buffers (validity first, None when every value is set)."""
        # As signed bytes: the format arrow.rs reads buffers in (pyarrow's own).
        self._buffers[name] = (arrow_type, [None if b is None else memoryview(b).cast("b") for b in buffers])

    def add_array(self, name: str, array: pa.Array) -> None:
        self._arrays[name] = array

    def set(self, name: str, column: pl.Series, array: pa.Array | None = None) -> None:
        """A column a stage set (`array`: the same as Arrow, if the stage has it): later reads see
        it, and the frame has it in place of (or after) the scanned columns."""
        self._set[name] = column
        self._buffers.pop(name, None)
        if array is None or column.dtype == pl.Null:
            self._arrays.pop(name, None)
        else:
            self._arrays[name] = array

    def has_column(self, name: str) -> bool:
        return name in self._set or name in self._buffers or name in self._arrays or name in self.names

    def has_values(self, name: str) -> bool:
        """Whether the column holds something other than nulls' type (the frame's pl.Null)."""
        return self.arrow_type(name) is not None

    def arrow_type(self, name: str) -> pa.DataType | None:
        """The column's Arrow type; None when the batch has no such column or it is all-null."""
        scanned = self._buffers.get(name)
        if scanned is not None:
            return scanned[0]
        array = self.array(name)
        return None if array is None else array.type

    def parts(self, name: str) -> tuple | None:
        """The column as arrow.rs reads it; None when absent, all-null or of a type it cannot read."""
        scanned = self._buffers.get(name)
        if scanned is not None:
            arrow_type, buffers = scanned
            kind = PART_KINDS.get(arrow_type)
            return None if kind is None else (kind, self.rows, 0, buffers, None)
        array = self.array(name)
        return None if array is None else array_parts(array)

    def array(self, name: str) -> pa.Array | None:
        array = self._arrays.get(name)
        if array is not None:
            return array
        scanned = self._buffers.get(name)
        if scanned is not None:
            arrow_type, buffers = scanned
            array = pa.Array.from_buffers(arrow_type, self.rows, [_buffer(b) for b in buffers])
        else:
            column = self._set.get(name)
            if column is None or column.dtype == pl.Null:
                return None
            array = series_array(column)
        self._arrays[name] = array
        return array

    def frame(self) -> pl.DataFrame:
        """The polars frame the fallback paths read, in `names` order, then columns stages added."""
        present = [name for name in self.names if name not in self._set and self.arrow_type(name) is not None]
        frame = pl.from_arrow(pa.Table.from_arrays([self.array(name) for name in present], names=present))
        assert isinstance(frame, pl.DataFrame)
        if len(present) == len(self.names) and not self._set:
            return frame
        # Indexing by a list of names reorders eagerly (select would build a query plan).
        have = set(present)
        missing = [
            self._set[name].alias(name) if name in self._set else null_column(name, self.rows)
            for name in self.names
            if name not in have
        ]
        known = set(self.names)
        added = [column.alias(name) for name, column in self._set.items() if name not in known]
        ordered = frame.hstack(missing)[self.names] if missing else frame
        return ordered.hstack(added) if added else ordered


_NULL_COLUMNS: dict[tuple[str, int], pl.Series] = {}


def null_column(name: str, rows: int) -> pl.Series:
    # Series are immutable and an all-null one holds no data: one per (key, batch size) serves all.
    column = _NULL_COLUMNS.get((name, rows))
    if column is None:
        if len(_NULL_COLUMNS) >= 4096:
            _NULL_COLUMNS.clear()
        column = _NULL_COLUMNS[(name, rows)] = pl.Series(name, [None] * rows, dtype=pl.Null)
    return column


def _buffer(data: object) -> pa.Buffer | None:
    if data is None or isinstance(data, pa.Buffer):
        return data
    return pa.py_buffer(data)
