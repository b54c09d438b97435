"""The stage contract: what a stage declares, what it returns, and the engines it may run on.

A stage never mutates protobuf messages: it returns a `BatchChanges` describing what to write.
That is what lets a failing stage be isolated (see `pipeline`). The encoder and every stage import
this module; only the runner imports `pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import polars as pl
import pyarrow as pa

from processor.core.decode import TelemetryBatch, WantedKeys
from processor.core.span_event_columns import SpanEventColumns

if TYPE_CHECKING:
    from processor._otlp_native import RedactionJob, Redactor

PROCESSING_ERROR_KEY = "genops.processing.error"


# Engines a stage may run on (BatchChanges.engine; the `engine` label of genops_sidecar_stage_engine).
ENGINE_NATIVE = "native"
ENGINE_POLARS = "polars"
ENGINE_NONE = "none"


@dataclass
class SpanEventToAdd:
    row: int
    name: str
    time_unix_nano: int
    attributes: dict[str, object]


@dataclass
class BatchChanges:
    """What one stage wants written back.

    set_attributes: attribute key -> one value per item (null: leave that item alone). Values
        overwrite an attribute of the same key or are appended.
    rewrites: rows (scope, owner, position, new_value) addressing values found through
        `TelemetryBatch.string_values()`; a null new_value drops the attribute.
    events: span events to append.
    event_columns: more span events to append, after `events`, given as columns (one group per
        event name; see processor/core/span_event_columns.py).
    arrow: some of the set_attributes columns as the Arrow arrays their Series were made from,
        which a native stage has at hand: the writer and later stages read them instead of
        converting the Series back (the same values, never different ones).
    engine: which implementation of the stage ran on the batch (ENGINE_NATIVE, ENGINE_POLARS), or
        None when it returned before either ran (nothing to do); counted and logged by the pipeline.
    """

    set_attributes: dict[str, pl.Series] = field(default_factory=dict)
    rewrites: pl.DataFrame | None = None
    events: list[SpanEventToAdd] = field(default_factory=list)
    event_columns: list[SpanEventColumns] = field(default_factory=list)
    arrow: dict[str, pa.Array] = field(default_factory=dict)
    engine: str | None = None

    def with_engine(self, engine: str) -> BatchChanges:
        self.engine = engine
        return self

    def is_empty(self) -> bool:
        rewrites = self.rewrites is not None and self.rewrites.height > 0
        return not (self.set_attributes or rewrites or self.events or any(map(len, self.event_columns)))

    def all_events(self) -> list[SpanEventToAdd]:
        """`events`, then `event_columns` one event at a time, in the order they are written."""
        return [
            *self.events,
            *(
                SpanEventToAdd(row, group.name, time, attributes)
                for group in self.event_columns
                for row, time, attributes in group.expanded()
            ),
        ]


class Stage(Protocol):
    name: str
    signals: frozenset[str]

    def wanted_keys(self) -> WantedKeys: ...

    def process(self, batch: TelemetryBatch) -> BatchChanges: ...


class PreparingStage(Stage, Protocol):
    """A stage with work that can be done ahead (`prepare`): while a values job of an earlier stage
    runs on its thread, the pipeline lets the stages after it prepare. `prepare` may read the
    request and what the stages before the job's stage wrote, never what that stage writes; the
    stage's `process` does whatever `prepare` left undone (it may also fail or not be called)."""

    def prepare(self, batch: TelemetryBatch) -> None: ...


class ValuesStage(Stage, Protocol):
    """A stage with a native consumer of every value (`values_consumer`, None when it has none):
    the decoder's scan hands the values to it, and it works on them on a thread of its own while
    the stages before it run (it reads only the request as received). At its place in the order
    the pipeline calls `finish` with the consumer's job instead of `process`; the changes are the
    same, so it still comes before the stages that read what it writes."""

    def values_consumer(self) -> Redactor | None: ...

    def finish(self, batch: TelemetryBatch, job: RedactionJob) -> BatchChanges: ...
