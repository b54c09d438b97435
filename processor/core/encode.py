"""Write stage changes back into the lean protobuf messages and serialise the request.

Only the items a change addresses are touched; the rest of the message, including every field
the lean view does not declare, is re-emitted byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from processor.core import nested_values, unknown_fields
from processor.core.decode import (
    LOGS,
    SCOPE_BODY,
    SCOPE_EVENT,
    SCOPE_EVENT_NAME,
    SCOPE_ITEM,
    SCOPE_LINK,
    SCOPE_LOG_EVENT,
    SCOPE_RESOURCE,
    SCOPE_SCOPE,
    SCOPE_SPAN_NAME,
    SCOPE_STATUS,
    SCOPE_UNKNOWN,
    TelemetryBatch,
    link_attribute,
    native_available,
    native_module,
)
from processor.protos import otlp_lean_pb2 as lean

if TYPE_CHECKING:
    from processor.core.contract import BatchChanges, SpanEventToAdd
    from processor.core.span_event_columns import SpanEventColumns


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
        for event in changes.all_events():
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


def _native_rewrite(batch: TelemetryBatch, all_changes: Sequence[BatchChanges]) -> bytes:
    """The same edits as the protobuf path below, spliced into the request bytes by processor/native.

    Columns and rewrites go over as Arrow buffers read in place; the rewriter merges a key set by
    several stages (a later stage's value wins where it set one, as when the changes are applied
    in turn) and lets a later rewrite of the same value win, as `_all_rewrites` does.
    """
    columns = [
        (key, _native_values(column, changes.arrow.get(key)))
        for changes in all_changes
        for key, column in changes.set_attributes.items()
        # All null: nothing to write (the rewriter would skip every row).
        if column.dtype != pl.Null
    ]
    rewrites = [
        _native_rewrites(changes.rewrites)
        for changes in all_changes
        if changes.rewrites is not None and changes.rewrites.height
    ]
    events: list[tuple] = []
    for changes in all_changes:
        events.extend((event.row, _event_bytes(event)) for event in changes.events)
        events.extend(_event_group(group) for group in changes.event_columns if len(group))
    return native_module().rewrite(
        batch.raw,
        columns,
        rewrites,
        batch.event_rows if rewrites and batch.signal != LOGS else [],
        events=events,
        logs=batch.signal == LOGS,
    )


_NEWEST = pl.CompatLevel.newest()


def _event_group(group: SpanEventColumns) -> tuple:
    """(name, rows, times, [(key, values)]) as the rewriter reads a group of events."""
    # A Null column has no value to write (a group whose events all lack that attribute).
    attributes = [
        (key, _native_event_values(column)) for key, column in group.attributes.items() if column.dtype != pl.Null
    ]
    return (group.name, _native_event_values(group.rows), _native_event_values(group.times), attributes)


def _native_event_values(column: pl.Series) -> tuple:
    array = column.to_arrow(compat_level=_NEWEST)
    if array.type not in _ARROW_TYPE_KINDS:
        raise TypeError(f"event column {column.name!r} of type {column.dtype} cannot be written")
    return _arrow_parts(array)


def _native_values(column: pl.Series, array: pa.Array | None = None) -> tuple | list:
    """The column as the rewriter reads it: Arrow buffers for the types stages set, else a list.
    `array`: the same column as Arrow, if the stage handed it over."""
    # Decided on the Arrow type: comparing polars dtypes costs more than the conversion.
    if array is None:
        array = column.to_arrow(compat_level=_NEWEST)
    kind = _ARROW_TYPE_KINDS.get(array.type)
    if kind is not None:
        return (kind, len(array), array.offset, array.buffers(), None)
    if isinstance(array, pa.LargeListArray) and array.type.value_type in _ARROW_LIST_ITEMS:
        return _arrow_parts(array)
    return column.to_list()


def _arrow_parts(array: pa.Array) -> tuple:
    """(kind, length, offset, buffers, child) for the rewriter (processor/native/src/otlp/arrow.rs)."""
    if isinstance(array, pa.LargeListArray):
        return ("list", len(array), array.offset, array.buffers()[:2], _arrow_parts(array.values))
    kind = _ARROW_TYPE_KINDS[array.type]
    return (kind, len(array), array.offset, array.buffers(), None)


_ARROW_TYPE_KINDS = {
    pa.bool_(): "bool",
    pa.int64(): "i64",
    pa.float64(): "f64",
    pa.string_view(): "string",
    pa.binary_view(): "binary",
}
_ARROW_LIST_ITEMS = (pa.string_view(), pa.binary_view())

_REWRITE_SCHEMA = {"scope": pl.String, "owner": pl.Int64, "position": pl.Int64, "new_value": pl.String}


def _native_rewrites(frame: pl.DataFrame) -> tuple:
    columns = [frame.get_column(name) for name in _REWRITE_SCHEMA]
    if any(column.dtype != dtype for column, dtype in zip(columns, _REWRITE_SCHEMA.values(), strict=True)):
        columns = [column.cast(dtype) for column, dtype in zip(columns, _REWRITE_SCHEMA.values(), strict=True)]
    return tuple(_arrow_parts(column.to_arrow(compat_level=_NEWEST)) for column in columns)


def _event_bytes(event: SpanEventToAdd) -> bytes:
    """The event as a serialised Span.Event: written by hand for scalar attributes (every GenAI
    span gets events, and the protobuf view costs ~20 µs an event); others go through the view."""
    # proto3 leaves out fields at their default (0, ""); a oneof member is written whatever its value.
    time = event.time_unix_nano & _U64_MAX
    parts = [
        _FIXED64_TIME + _U64.pack(time) if time else b"",
        _text_field(_TAG_NAME, event.name) if event.name else b"",
    ]
    for key, value in event.attributes.items():
        encoded = _attribute_bytes(key, value)
        if encoded is None:
            message = lean.SpanEvent(name=event.name, time_unix_nano=event.time_unix_nano)
            for k, v in event.attributes.items():
                set_attribute(message.attributes, k, v)
            return message.SerializeToString()
        parts.append(encoded)
    return b"".join(parts)


# Span.Event fields: time_unix_nano = 1 (fixed64), name = 2, attributes = 3 (KeyValue: key = 1,
# value = 2; AnyValue: string_value = 1, bool_value = 2, int_value = 3, double_value = 4).
_FIXED64_TIME = bytes([1 << 3 | 1])
_TAG_NAME = 2 << 3 | 2
_TAG_ATTRIBUTE = 3 << 3 | 2
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_U64_MAX = (1 << 64) - 1
# KeyValue bytes of string and bool attributes, which repeat (result, reason code, currency, model).
_KEY_VALUES: dict[tuple[str, object], bytes] = {}
_KEY_VALUES_LIMIT = 4096


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _text_field(tag: int, text: str) -> bytes:
    encoded = text.encode("utf-8", "surrogatepass")
    return bytes([tag]) + _varint(len(encoded)) + encoded


def _attribute_bytes(key: str, value: object) -> bytes | None:
    """One attributes entry (tag, length, KeyValue) of a scalar value; None for other values."""
    cacheable = isinstance(value, str | bool)
    if cacheable:
        found = _KEY_VALUES.get((key, value))
        if found is not None:
            return found
    if isinstance(value, bool):
        any_value = bytes([2 << 3, int(value)])
    elif isinstance(value, int):
        any_value = bytes([3 << 3]) + _varint(value & _U64_MAX)
    elif isinstance(value, float):
        any_value = bytes([4 << 3 | 1]) + _F64.pack(value)
    elif isinstance(value, str):
        any_value = _text_field(1 << 3 | 2, value)
    else:
        return None
    key_field = _text_field(1 << 3 | 2, key) if key else b""
    key_value = key_field + bytes([2 << 3 | 2]) + _varint(len(any_value)) + any_value
    encoded = bytes([_TAG_ATTRIBUTE]) + _varint(len(key_value)) + key_value
    if cacheable:
        if len(_KEY_VALUES) >= _KEY_VALUES_LIMIT:
            _KEY_VALUES.clear()
        _KEY_VALUES[(key, value)] = encoded
    return encoded


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
        # The lean view keeps an ArrayValue as its bytes (see nested_values).
        elements = []
        for element in value:
            encoded = lean.AnyValue()
            write_value(encoded, element)
            elements.append(encoded.SerializeToString())
        target.array_value = nested_values.array_bytes(elements)
    else:
        raise TypeError(f"cannot write a {type(value).__name__} as an OTLP attribute value")


def _apply_column(batch: TelemetryBatch, key: str, column: pl.Series) -> None:
    items = batch.items
    for row, value in enumerate(column.to_list()):
        if value is not None:
            set_attribute(items[row].attributes, key, value)


def _attribute_at(batch: TelemetryBatch, scope: str, owner: int, position: int) -> tuple[Any, int]:
    """(attribute list, index in it) of the value a rewrite addresses."""
    if scope == SCOPE_ITEM:
        return batch.items[owner].attributes, position
    if scope == SCOPE_EVENT:
        return batch.events[owner][1].attributes, position
    if scope == SCOPE_RESOURCE:
        return batch.resources[owner].attributes, position
    if scope == SCOPE_LINK:
        return link_attribute(batch.items[owner], position)
    if scope == SCOPE_SCOPE:
        return batch.scopes[owner].attributes, position
    raise ValueError(f"unknown attribute scope {scope!r}")


def _apply_rewrites(batch: TelemetryBatch, rewrites: pl.DataFrame) -> None:
    unknown = rewrites.filter(pl.col("scope") == SCOPE_UNKNOWN)
    if unknown.height:
        # Before anything else: the view of the request without them (addresses stay the same).
        ranges = list(zip(unknown["owner"].to_list(), unknown["position"].to_list(), strict=True))
        batch.reparse(unknown_fields.strip(batch.raw, ranges))
    drops: dict[tuple[str, int, int], tuple[Any, list[int]]] = {}
    for scope, owner, position, new_value in rewrites.select("scope", "owner", "position", "new_value").iter_rows():
        if scope == SCOPE_UNKNOWN:
            continue
        if scope == SCOPE_BODY:
            record = batch.items[owner]
            if new_value is None:
                record.ClearField("body")
            else:
                record.body.string_value = new_value
            continue
        # Text places: a drop clears the text (the span, its status and its event stay).
        if scope == SCOPE_SPAN_NAME:
            batch.items[owner].name = new_value or ""
            continue
        if scope == SCOPE_STATUS:
            batch.items[owner].status.message = (new_value or "").encode()
            continue
        if scope == SCOPE_EVENT_NAME:
            batch.events[owner][1].name = new_value or ""
            continue
        if scope == SCOPE_LOG_EVENT:
            batch.items[owner].event_name = (new_value or "").encode()
            continue
        attributes, index = _attribute_at(batch, scope, owner, position)
        if new_value is None:
            # Keyed by the list's first address: a link's attributes are one list of the span's.
            drops.setdefault((scope, owner, position - index), (attributes, []))[1].append(index)
            continue
        attributes[index].value.string_value = new_value
    # Positions refer to the list as decoded, so drop from the end backwards.
    for attributes, indexes in drops.values():
        for index in sorted(set(indexes), reverse=True):
            del attributes[index]
