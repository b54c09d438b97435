"""Write stage changes back into the lean protobuf messages and serialise the request.

Only the items a change addresses are touched; the rest of the message, including every field
the lean view does not declare, is re-emitted byte for byte.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from processor.decode import (
    LOGS,
    SCOPE_BODY,
    SCOPE_EVENT,
    SCOPE_ITEM,
    SCOPE_RESOURCE,
    TelemetryBatch,
    native_available,
    native_module,
)
from processor.protos import otlp_lean_pb2 as lean

if TYPE_CHECKING:
    from processor.pipeline import BatchChanges, SpanEventToAdd


def apply_and_serialize(batch: TelemetryBatch, all_changes: Sequence[BatchChanges]) -> bytes:
    """Writes the stages' changes and returns the request bytes.

    Rewrites address values as they arrived, so all of them are applied first (the last one per
    value wins); then each stage's set_attributes in stage order, then added events.
    """
    if native_available() and batch.raw:
        return _native_rewrite(batch, all_changes)
    rewrites = _all_rewrites(all_changes)
    if rewrites is not None:
        _apply_rewrites(batch, rewrites)
    for changes in all_changes:
        for key, column in changes.set_attributes.items():
            _apply_column(batch, key, column)
        for event in changes.events:
            added = batch.items[event.row].events.add()
            added.name = event.name
            added.time_unix_nano = event.time_unix_nano
            for key, value in event.attributes.items():
                set_attribute(added.attributes, key, value)
    return batch.request.SerializeToString()


def _all_rewrites(all_changes: Sequence[BatchChanges]) -> pl.DataFrame | None:
    frames = [c.rewrites for c in all_changes if c.rewrites is not None and c.rewrites.height]
    if not frames:
        return None
    frame = pl.concat([f.select("scope", "owner", "position", "new_value") for f in frames])
    return frame.unique(["scope", "owner", "position"], keep="last", maintain_order=True)


_SCOPE_CODES = {SCOPE_ITEM: 0, SCOPE_EVENT: 1, SCOPE_RESOURCE: 2, SCOPE_BODY: 3}


def _native_rewrite(batch: TelemetryBatch, all_changes: Sequence[BatchChanges]) -> bytes:
    """The same edits as the protobuf path below, spliced into the request bytes by processor/native."""
    columns: dict[str, list] = {}
    for changes in all_changes:
        for key, column in changes.set_attributes.items():
            values = column.to_list()
            earlier = columns.get(key)
            # A later stage's value wins where it set one, as when the changes are applied in turn.
            columns[key] = (
                values if earlier is None else [e if v is None else v for v, e in zip(values, earlier, strict=True)]
            )
    frame = _all_rewrites(all_changes)
    scopes: list[int] = []
    owners: list[int] = []
    positions: list[int] = []
    rows: list[int] = []
    new_values: list[str | None] = []
    if frame is not None:
        scopes = [_SCOPE_CODES[scope] for scope in frame["scope"].to_list()]
        owners = frame["owner"].to_list()
        positions = frame["position"].to_list()
        new_values = frame["new_value"].to_list()
        event_rows = batch.event_rows if SCOPE_EVENT in frame["scope"] else []
        rows = [
            event_rows[owner] if scope == 1 else (owner if scope != 2 else 0)
            for scope, owner in zip(scopes, owners, strict=True)
        ]
    events = [(event.row, _event_bytes(event)) for changes in all_changes for event in changes.events]
    return native_module().rewrite(
        batch.raw,
        list(columns.items()),
        scopes,
        owners,
        positions,
        rows,
        new_values,
        events=events,
        logs=batch.signal == LOGS,
    )


def _event_bytes(event: SpanEventToAdd) -> bytes:
    # Few per batch (budget thresholds crossed), so the protobuf view builds them.
    message = lean.SpanEvent(name=event.name, time_unix_nano=event.time_unix_nano)
    for key, value in event.attributes.items():
        set_attribute(message.attributes, key, value)
    return message.SerializeToString()


def set_attribute(attributes, key: str, value: object) -> None:
    for kv in attributes:
        if kv.key == key:
            write_value(kv.value, value)
            return
    kv = attributes.add()
    kv.key = key
    write_value(kv.value, value)


def write_value(target: lean.AnyValue, value: object) -> None:
    # bool before int: bool is an int subclass in Python but a distinct OTLP type.
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, list | tuple | pl.Series):
        target.array_value.SetInParent()
        del target.array_value.values[:]
        for element in value:
            write_value(target.array_value.values.add(), element)
    else:
        raise TypeError(f"cannot write a {type(value).__name__} as an OTLP attribute value")


def _apply_column(batch: TelemetryBatch, key: str, column: pl.Series) -> None:
    items = batch.items
    for row, value in enumerate(column.to_list()):
        if value is not None:
            set_attribute(items[row].attributes, key, value)


def _owner_attributes(batch: TelemetryBatch, scope: str, owner: int):
    if scope == SCOPE_ITEM:
        return batch.items[owner].attributes
    if scope == SCOPE_EVENT:
        return batch.events[owner][1].attributes
    if scope == SCOPE_RESOURCE:
        return batch.resources[owner].attributes
    raise ValueError(f"unknown attribute scope {scope!r}")


def _apply_rewrites(batch: TelemetryBatch, rewrites: pl.DataFrame) -> None:
    drops: dict[tuple[str, int], list[int]] = defaultdict(list)
    for scope, owner, position, new_value in rewrites.select("scope", "owner", "position", "new_value").iter_rows():
        if scope == SCOPE_BODY:
            record = batch.items[owner]
            if new_value is None:
                record.ClearField("body")
            else:
                record.body.string_value = new_value
            continue
        if new_value is None:
            drops[(scope, owner)].append(position)
            continue
        _owner_attributes(batch, scope, owner)[position].value.string_value = new_value
    # Positions refer to the list as decoded, so drop from the end backwards.
    for (scope, owner), positions in drops.items():
        attributes = _owner_attributes(batch, scope, owner)
        for position in sorted(set(positions), reverse=True):
            del attributes[position]
