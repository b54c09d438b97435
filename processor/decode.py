"""Decode an OTLP export request into a columnar batch the stages work on.

The request is parsed with the lean view in `proto/` (see otlp_lean.proto): fields no stage
reads stay as raw bytes inside the message and go back out untouched. Only the attribute keys
the stages declared become polars columns; everything else is skipped without being turned into
Python objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl
from google.protobuf.message import DecodeError

from processor.protos import otlp_lean_pb2 as lean

TRACES = "traces"
LOGS = "logs"

# Columns every span frame has, whatever the stages asked for.
ROW = "_row"
SPAN_NAME = "_span_name"
START_TIME = "_start_time_unix_nano"
END_TIME = "_end_time_unix_nano"
# OTLP Status.code: 0 unset, 1 ok, 2 error.
STATUS_CODE = "_status_code"
RESOURCE_INDEX = "_resource"
RESOURCE_PREFIX = "resource:"

# Scopes of the long string-value frame (see TelemetryBatch.string_values).
SCOPE_ITEM = "attribute"
SCOPE_EVENT = "event"
SCOPE_RESOURCE = "resource"
SCOPE_BODY = "body"


class MalformedRequest(ValueError):
    """The request bytes are not a valid OTLP export request."""


@dataclass(frozen=True)
class WantedKeys:
    """Attribute keys the stages read: item (span or log record) keys and resource keys."""

    item: frozenset[str] = frozenset()
    resource: frozenset[str] = frozenset()

    @staticmethod
    def union(all_wanted: Iterable[WantedKeys]) -> WantedKeys:
        item: set[str] = set()
        resource: set[str] = set()
        for wanted in all_wanted:
            item |= wanted.item
            resource |= wanted.resource
        return WantedKeys(frozenset(item), frozenset(resource))


@dataclass
class TelemetryBatch:
    """One export request, its items (spans or log records) flattened, and their columns.

    `frame` has one row per item, in `items` order, with the fixed `_`-prefixed columns, one
    column per wanted item attribute key, and `resource:<key>` per wanted resource key.
    """

    signal: str
    request: lean.ExportTraceServiceRequest | lean.ExportLogsServiceRequest
    items: list
    item_resource: list[int]
    resources: list[lean.Resource]
    frame: pl.DataFrame
    # Span events as (span row, event), flattened; empty for logs.
    events: list[tuple[int, lean.SpanEvent]] = field(default_factory=list)
    _string_values: pl.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.items)

    def string_values(self) -> pl.DataFrame:
        """Every string value in the batch, one row each, for stages that scan values.

        Columns: scope (attribute/event/resource/body), owner (index into items, events or
        resources), position (index in the owner's attribute list; -1 for a log body), row
        (the item the value belongs to; -1 for resource values, shared by many items), key, value.
        Built on first use and cached: only value-scanning stages pay for it.
        """
        if self._string_values is None:
            self._string_values = _collect_string_values(self)
        return self._string_values


def any_value_scalar(value: lean.AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind is None or kind in ("array_value", "kvlist_value"):
        return None
    return getattr(value, kind)


def decode_traces(raw: bytes, wanted: WantedKeys) -> TelemetryBatch:
    request = _parse(lean.ExportTraceServiceRequest, raw)
    items: list[lean.Span] = []
    item_resource: list[int] = []
    resources: list[lean.Resource] = []
    rows: list[dict[str, object]] = []
    names: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    statuses: list[int] = []
    events: list[tuple[int, lean.SpanEvent]] = []
    resource_rows: list[dict[str, object]] = []
    item_keys = wanted.item
    for resource_index, resource_spans in enumerate(request.resource_spans):
        resources.append(resource_spans.resource)
        resource_rows.append(_pick(resource_spans.resource.attributes, wanted.resource))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                row_index = len(items)
                items.append(span)
                item_resource.append(resource_index)
                names.append(span.name)
                starts.append(span.start_time_unix_nano)
                ends.append(span.end_time_unix_nano)
                statuses.append(span.status.code)
                rows.append(_pick(span.attributes, item_keys) if item_keys else {})
                if span.events:
                    events.extend((row_index, event) for event in span.events)
    frame = _frame(rows, item_resource, resource_rows, wanted)
    frame = frame.with_columns(
        pl.Series(SPAN_NAME, names, dtype=pl.String),
        pl.Series(START_TIME, starts, dtype=pl.UInt64),
        pl.Series(END_TIME, ends, dtype=pl.UInt64),
        pl.Series(STATUS_CODE, statuses, dtype=pl.Int32),
    )
    return TelemetryBatch(TRACES, request, items, item_resource, resources, frame, events)


def decode_logs(raw: bytes, wanted: WantedKeys) -> TelemetryBatch:
    request = _parse(lean.ExportLogsServiceRequest, raw)
    items: list[lean.LogRecord] = []
    item_resource: list[int] = []
    resources: list[lean.Resource] = []
    rows: list[dict[str, object]] = []
    resource_rows: list[dict[str, object]] = []
    for resource_index, resource_logs in enumerate(request.resource_logs):
        resources.append(resource_logs.resource)
        resource_rows.append(_pick(resource_logs.resource.attributes, wanted.resource))
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                items.append(record)
                item_resource.append(resource_index)
                rows.append(_pick(record.attributes, wanted.item) if wanted.item else {})
    frame = _frame(rows, item_resource, resource_rows, wanted)
    return TelemetryBatch(LOGS, request, items, item_resource, resources, frame)


def _parse(message_type, raw: bytes):
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise MalformedRequest(f"cannot parse {message_type.DESCRIPTOR.name}: {exc}") from exc


def _pick(attributes, keys: frozenset[str]) -> dict[str, object]:
    picked = {}
    for kv in attributes:
        key = kv.key
        if key in keys:
            picked[key] = any_value_scalar(kv.value)
    return picked


def _frame(
    rows: list[dict[str, object]],
    item_resource: list[int],
    resource_rows: list[dict[str, object]],
    wanted: WantedKeys,
) -> pl.DataFrame:
    columns = [
        pl.Series(ROW, range(len(rows)), dtype=pl.UInt32),
        pl.Series(RESOURCE_INDEX, item_resource, dtype=pl.UInt32),
    ]
    for key in sorted(wanted.item):
        columns.append(_column(key, [row.get(key) for row in rows]))
    for key in sorted(wanted.resource):
        per_resource = [resource_row.get(key) for resource_row in resource_rows]
        columns.append(_column(RESOURCE_PREFIX + key, [per_resource[i] for i in item_resource]))
    return pl.DataFrame(columns)


def _column(name: str, values: list[object]) -> pl.Series:
    """A typed column; values of mixed types (a token count sent as a string) become strings."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) > 1:
        values = [None if v is None else str(v) for v in values]
        return pl.Series(name, values, dtype=pl.String)
    if kinds == {bytes}:
        return pl.Series(name, values, dtype=pl.Binary)
    if not kinds:
        return pl.Series(name, values, dtype=pl.Null)
    return pl.Series(name, values)


def _collect_string_values(batch: TelemetryBatch) -> pl.DataFrame:
    scopes: list[str] = []
    owners: list[int] = []
    positions: list[int] = []
    item_rows: list[int] = []
    keys: list[str] = []
    values: list[str] = []

    def collect(scope: str, owner: int, row: int, attributes) -> None:
        for position, kv in enumerate(attributes):
            value = kv.value
            if value.WhichOneof("value") == "string_value":
                scopes.append(scope)
                owners.append(owner)
                positions.append(position)
                item_rows.append(row)
                keys.append(kv.key)
                values.append(value.string_value)

    for index, resource in enumerate(batch.resources):
        collect(SCOPE_RESOURCE, index, -1, resource.attributes)
    for index, item in enumerate(batch.items):
        collect(SCOPE_ITEM, index, index, item.attributes)
    for index, (row, event) in enumerate(batch.events):
        collect(SCOPE_EVENT, index, row, event.attributes)
    if batch.signal == LOGS:
        for index, record in enumerate(batch.items):
            if record.HasField("body") and record.body.WhichOneof("value") == "string_value":
                scopes.append(SCOPE_BODY)
                owners.append(index)
                positions.append(-1)
                item_rows.append(index)
                keys.append("")
                values.append(record.body.string_value)
    return pl.DataFrame(
        {
            "scope": pl.Series(scopes, dtype=pl.String),
            "owner": pl.Series(owners, dtype=pl.Int64),
            "position": pl.Series(positions, dtype=pl.Int64),
            "row": pl.Series(item_rows, dtype=pl.Int64),
            "key": pl.Series(keys, dtype=pl.String),
            "value": pl.Series(values, dtype=pl.String),
        }
    )
