"""Write stage changes back into the lean protobuf messages and serialise the request.

Only the items a change addresses are touched; the rest of the message, including every field
the lean view does not declare, is re-emitted byte for byte.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from processor.decode import SCOPE_BODY, SCOPE_EVENT, SCOPE_ITEM, SCOPE_RESOURCE, TelemetryBatch
from processor.protos import otlp_lean_pb2 as lean

if TYPE_CHECKING:
    from processor.pipeline import BatchChanges


def apply_and_serialize(batch: TelemetryBatch, all_changes: Sequence[BatchChanges]) -> bytes:
    for changes in all_changes:
        if changes.rewrites is not None and changes.rewrites.height:
            _apply_rewrites(batch, changes.rewrites)
        for key, column in changes.set_attributes.items():
            _apply_column(batch, key, column)
        for event in changes.events:
            added = batch.items[event.row].events.add()
            added.name = event.name
            added.time_unix_nano = event.time_unix_nano
            for key, value in event.attributes.items():
                set_attribute(added.attributes, key, value)
    return batch.request.SerializeToString()


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
    # Plain lists: a handful of polars calls per column costs more than one pass over 1k rows.
    values = column.to_list()
    items = batch.items
    decoded = batch.decoded_frame
    if decoded is not None and key in decoded.columns:
        # The key was decoded, so we know which items have it: the others get a plain append.
        had_key = decoded.get_column(key).is_not_null().to_list()
        for row, value in enumerate(values):
            if value is None:
                continue
            if had_key[row]:
                set_attribute(items[row].attributes, key, value)
            else:
                kv = items[row].attributes.add()
                kv.key = key
                write_value(kv.value, value)
        return
    for row, value in enumerate(values):
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
