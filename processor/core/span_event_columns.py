"""Span events handed over as columns: a stage that adds an event of one name to many spans (the
GenOps AWU events, ~730 a batch) gives their rows, times and attributes as polars columns instead
of one Python object per event. They are redacted per distinct value (pipeline._redact_written)
and written by the native rewriter without a Python object per event; the protobuf path and the
tests read them as `SpanEventToAdd`s (`expanded`), which give the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class SpanEventColumns:
    """Event i is named `name`, goes to span `rows[i]` at `times[i]` and has, in the order of
    `attributes`, attribute k wherever column k is not null at i.

    rows: Int64 batch rows. times: Int64, the event's time_unix_nano (a u64 read as i64 bits, as
    the batch's time columns hold it). attributes: key -> column of the values (String, Float64,
    Int64 or Boolean), null where the event has no such attribute.
    """

    name: str
    rows: pl.Series
    times: pl.Series
    attributes: Mapping[str, pl.Series]

    def __post_init__(self) -> None:
        lengths = {len(self.times), *(len(column) for column in self.attributes.values())}
        if lengths - {len(self.rows)}:
            raise ValueError(f"event columns of {self.name!r} differ in length")

    def __len__(self) -> int:
        return len(self.rows)

    def with_attribute(self, key: str, column: pl.Series) -> SpanEventColumns:
        return SpanEventColumns(self.name, self.rows, self.times, {**self.attributes, key: column})

    def expanded(self) -> Iterator[tuple[int, int, dict[str, object]]]:
        """(row, time_unix_nano, attributes) per event, as a stage would give them one by one."""
        keys = list(self.attributes)
        columns = [column.to_list() for column in self.attributes.values()]
        for index, (row, time) in enumerate(zip(self.rows.to_list(), self.times.to_list(), strict=True)):
            values = (column[index] for column in columns)
            yield row, time, {key: value for key, value in zip(keys, values, strict=True) if value is not None}
