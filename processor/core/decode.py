"""Decode an OTLP export request into a columnar batch the stages work on.

The request is parsed with the lean view in `proto/` (see otlp_lean.proto): fields no stage
reads stay as raw bytes inside the message and go back out untouched. Only the attribute keys
the stages declared become polars columns; everything else is skipped without being turned into
Python objects.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
from google.protobuf.message import DecodeError

from processor.core import nested_values, unknown_fields
from processor.core.batch_columns import ScannedColumns, array_parts, series_array
from processor.core.nested_values import NestedValueError
from processor.protos import otlp_lean_pb2 as lean

if TYPE_CHECKING:
    from processor._otlp_native import RedactionJob, Redactor

# Required: the stages run on it (a failed build fails the install, see pyproject.toml).
from processor import _otlp_native as _native

TRACES = "traces"
LOGS = "logs"
METRICS = "metrics"

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
# A span's name, its status message, a span event's name: one text each, no key.
SCOPE_SPAN_NAME = "span_name"
SCOPE_STATUS = "status"
SCOPE_EVENT_NAME = "event_name"
# LogRecord.event_name: owner the record's row.
SCOPE_LOG_EVENT = "log_event"
# Link attributes: owner the span row, position counted across the span's links in order.
SCOPE_LINK = "link"
# InstrumentationScope attributes: owner the scope's index in request order.
SCOPE_SCOPE = "scope"
# A field the OTLP schema does not declare: owner and position its byte range in the request.
SCOPE_UNKNOWN = "unknown"
# Places that hold a text rather than a key and a value: only value rules apply to them.
KEYLESS_SCOPES = (SCOPE_BODY, SCOPE_SPAN_NAME, SCOPE_STATUS, SCOPE_EVENT_NAME, SCOPE_LOG_EVENT, SCOPE_UNKNOWN)


class MalformedRequest(ValueError):
    """The request bytes are not a valid OTLP export request."""


@dataclass(frozen=True)
class WantedKeys:
    """Attribute keys the stages read: item (span or log record) keys and resource keys."""

    item: frozenset[str] = frozenset()
    resource: frozenset[str] = frozenset()
    # True when the stage scans every value (redaction): the decoder then builds
    # TelemetryBatch.string_values() in the same pass.
    values: bool = False

    @staticmethod
    def union(all_wanted: Iterable[WantedKeys]) -> WantedKeys:
        item: set[str] = set()
        resource: set[str] = set()
        values = False
        for wanted in all_wanted:
            item |= wanted.item
            resource |= wanted.resource
            values = values or wanted.values
        return WantedKeys(frozenset(item), frozenset(resource), values)


class TelemetryBatch:
    """One export request and the columns of its items (spans or log records).

    `frame` has one row per item, in request order, with the fixed `_`-prefixed columns, one
    column per wanted item attribute key, and `resource:<key>` per wanted resource key.
    The protobuf objects (`items`, `resources`, `events`) are only walked when something needs
    them, which is the encoder writing changes back: stages work on columns.

    From the native scan, the columns stay the scan's buffers (`columns`), which the native
    stages read in place, and `frame` is built from them on first use. Assigning `frame` makes
    it the batch's columns from then on.
    """

    def __init__(
        self,
        signal: str,
        frame: pl.DataFrame | None,
        raw: bytes,
        _request: lean.ExportTraceServiceRequest | lean.ExportLogsServiceRequest | None = None,
        derived: dict[str, object] | None = None,
        _string_values: pl.DataFrame | None = None,
        *,
        columns: ScannedColumns | None = None,
    ) -> None:
        if frame is None and columns is None:
            raise ValueError("a batch needs a frame or scanned columns")
        self.signal = signal
        self._frame = frame
        self.columns = None if frame is not None else columns
        # The request bytes as received: a retried request has the same bytes (batch fingerprint).
        self.raw = raw
        self._request = _request
        # Values derived from the decoded attributes that several stages need (normalised GenAI
        # columns): computed once per batch. Only for values no stage's changes can affect.
        self.derived: dict[str, object] = {} if derived is None else derived
        self._string_values = _string_values
        # The native scan's buffers of every value, made into `_string_values` only if asked for.
        self._native_strings: dict | None = None
        # When the decoder handed every value to a native consumer instead (`values_to`): its job.
        self.values_job: RedactionJob | None = None
        self._items: list | None = None
        self._resources: list[lean.Resource] | None = None
        self._events: list[tuple[int, lean.SpanEvent]] | None = None
        self._scopes: list[lean.InstrumentationScope] | None = None
        # Row of each span event, in event order (from the native scan; else from `events`).
        self._event_rows: list[int] | None = None
        # The request holds bytes its protobuf view drops (earlier copies of a oneof or value field
        # sent twice): it then goes out re-serialised, as the stages saw it, never as received.
        self.drops_bytes = False

    @property
    def frame(self) -> pl.DataFrame:
        if self._frame is None:
            assert self.columns is not None
            self._frame = self.columns.frame()
        return self._frame

    @frame.setter
    def frame(self, frame: pl.DataFrame) -> None:
        self._frame = frame
        self.columns = None

    def set_column(self, name: str, column: pl.Series, array: pa.Array | None = None) -> None:
        """A stage's column, for later stages to read (see pipeline._expose_to_later_stages);
        `array`: the same column as Arrow, when the stage has it."""
        if self.columns is not None:
            self.columns.set(name, column, array)
            self._frame = None
            return
        frame = self._frame
        assert frame is not None
        column = column.alias(name)
        if name in frame.columns:
            # Column swaps without a query plan (with_columns builds one per call).
            updated = frame.clone()
            updated.replace_column(frame.get_column_index(name), column)
            self._frame = updated
        else:
            self._frame = frame.hstack([column])

    def has_column(self, name: str) -> bool:
        """Whether the batch has the column at all (all-null ones included)."""
        if self.columns is not None:
            return self.columns.has_column(name)
        return name in self.frame.columns

    def has_values(self, name: str) -> bool:
        """Whether the batch has the column with a type other than all-null."""
        if self.columns is not None:
            return self.columns.has_values(name)
        frame = self.frame
        return name in frame.columns and frame.get_column(name).dtype != pl.Null

    def column_type(self, name: str) -> pa.DataType | None:
        """The Arrow type of a column; None when the batch has no such column or it is all-null."""
        if self.columns is not None:
            return self.columns.arrow_type(name)
        array = self.column_array(name)
        return None if array is None else array.type

    def column_array(self, name: str) -> pa.Array | None:
        """A column as Arrow; None when the batch has no such column or it is all-null."""
        if self.columns is not None:
            return self.columns.array(name)
        frame = self.frame
        if name not in frame.columns:
            return None
        column = frame.get_column(name)
        return None if column.dtype == pl.Null else series_array(column)

    def column_parts(self, name: str) -> tuple | None:
        """A column as processor/native/src/otlp/arrow.rs reads it in place; None when absent, all-null
        or of a type it does not read (see batch_columns.PART_KINDS)."""
        if self.columns is not None:
            return self.columns.parts(name)
        array = self.column_array(name)
        return None if array is None else array_parts(array)

    def column_series(self, name: str) -> pl.Series | None:
        """A column as a polars Series (for the rare casts the native stages leave to polars)."""
        if self.columns is not None:
            array = self.columns.array(name)
            return None if array is None else pl.Series(name, array)
        frame = self.frame
        if name not in frame.columns:
            return None
        column = frame.get_column(name)
        return None if column.dtype == pl.Null else column

    def __len__(self) -> int:
        if self.columns is not None:
            return self.columns.rows
        return self.frame.height

    @property
    def request(self) -> lean.ExportTraceServiceRequest | lean.ExportLogsServiceRequest:
        """The lean protobuf view, parsed on first use (the native path never needs it)."""
        if self._request is None:
            message_type = lean.ExportTraceServiceRequest if self.signal == TRACES else lean.ExportLogsServiceRequest
            self._request = _parse(message_type, self.raw)
        return self._request

    @property
    def items(self) -> list:
        if self._items is None:
            self._walk()
        assert self._items is not None  # _walk sets it
        return self._items

    @property
    def resources(self) -> list[lean.Resource]:
        if self._resources is None:
            self._walk()
        assert self._resources is not None  # _walk sets it
        return self._resources

    @property
    def events(self) -> list[tuple[int, lean.SpanEvent]]:
        """Span events as (span row, event), flattened in span order; empty for logs."""
        if self._events is None:
            self._walk()
        assert self._events is not None  # _walk sets it
        return self._events

    @property
    def scopes(self) -> list[lean.InstrumentationScope]:
        """InstrumentationScope messages in request order (a scope attribute's owner indexes it)."""
        if self._scopes is None:
            self._walk()
        assert self._scopes is not None  # _walk sets it
        return self._scopes

    def reparse(self, raw: bytes) -> None:
        """Makes the protobuf view the one of `raw` (the request with unknown fields dropped);
        `self.raw` stays the bytes as received. Addresses of values do not change: they count
        declared fields only."""
        message_type = lean.ExportTraceServiceRequest if self.signal == TRACES else lean.ExportLogsServiceRequest
        self._request = _parse(message_type, raw)
        self._items = self._resources = self._events = self._scopes = None

    @property
    def event_rows(self) -> list[int]:
        if self._event_rows is None:
            self._event_rows = [row for row, _ in self.events]
        return self._event_rows

    def _walk(self) -> None:
        items: list = []
        resources: list[lean.Resource] = []
        events: list[tuple[int, lean.SpanEvent]] = []
        scopes: list[lean.InstrumentationScope] = []
        if self.signal == TRACES:
            for resource_spans in self.request.resource_spans:
                resources.append(resource_spans.resource)
                for scope_spans in resource_spans.scope_spans:
                    scopes.extend(scope_spans.scope)
                    for span in scope_spans.spans:
                        if span.events:
                            row = len(items)
                            events.extend((row, event) for event in span.events)
                        items.append(span)
        else:
            for resource_logs in self.request.resource_logs:
                resources.append(resource_logs.resource)
                for scope_logs in resource_logs.scope_logs:
                    scopes.extend(scope_logs.scope)
                    items.extend(scope_logs.log_records)
        self._items, self._resources, self._events, self._scopes = items, resources, events, scopes

    def string_values(self) -> pl.DataFrame:
        """Every attribute value (and log body) in the batch, one row each, for value scanners.

        Columns: scope (attribute/event/resource/body/link/scope, or a keyless text place:
        span_name/status/event_name/unknown; see the SCOPE_ constants), owner (index into items,
        events, resources or scopes), position (index in the owner's attribute list; -1 for a
        text place), row (the item the value belongs to; -1 for resource and scope values, shared
        by many items), key ("" for text places),
        value (text), is_string, kind (the OTLP oneof name). Built on first use and cached, or
        up front by the decoder when a stage declared `WantedKeys.values`.
        """
        if self._string_values is None:
            if self._native_strings is not None:
                self._string_values = _native_values_frame(self, self._native_strings)
            else:
                self._string_values = _collect_string_values(self)
        return self._string_values

    def string_value_arrays(self) -> dict[str, pa.Array] | None:
        """`string_values()` as Arrow arrays by column name, straight from the native scan (no
        frame built), for a native consumer; None when the scan did not list the values or left
        some to the Python renderer."""
        scanned = self._native_strings
        if scanned is None or scanned["nested"]:
            return None
        return _native_values_arrays(self, scanned)


def any_value_scalar(value: lean.AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind is None or kind in ("array_value", "kvlist_value"):
        return None
    return getattr(value, kind)


def native_available() -> bool:
    """Whether requests are decoded and encoded by the native scanner/rewriter: GENOPS_NATIVE_DECODE=0
    switches to the pure-Python decoder and encoder below (the wire oracle the native ones are tested
    against; slower, same batches). The stages run natively either way."""
    return os.environ.get("GENOPS_NATIVE_DECODE", "1") != "0"


def native_module():
    return _native


def decode_traces(raw: bytes, wanted: WantedKeys, values_to: Redactor | None = None) -> TelemetryBatch:
    """`values_to`: a native consumer (processor._otlp_native.Redactor) the native scan hands every
    value to, on its own thread; `batch.values_job` is then its job. Ignored by the Python walk."""
    if native_available():
        return _decode_native(TRACES, raw, wanted, values_to)
    request = _parse(lean.ExportTraceServiceRequest, raw)
    batch = TelemetryBatch(TRACES, pl.DataFrame(), raw, request)
    rows: list[dict[str, object]] = []
    item_resource: list[int] = []
    names: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    statuses: list[int] = []
    resource_rows: list[dict[str, object]] = []
    item_keys = wanted.item
    for resource_index, resource_spans in enumerate(request.resource_spans):
        resource_rows.append(_pick(resource_spans.resource.attributes, wanted.resource))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                item_resource.append(resource_index)
                names.append(span.name)
                starts.append(span.start_time_unix_nano)
                ends.append(span.end_time_unix_nano)
                statuses.append(span.status.code)
                rows.append(_pick(span.attributes, item_keys) if item_keys else {})
    frame = _frame(rows, item_resource, resource_rows, wanted)
    batch.frame = frame.with_columns(_span_columns(names, starts, ends, statuses))
    batch.drops_bytes = _drops_bytes(request, raw)
    return batch


def decode_logs(raw: bytes, wanted: WantedKeys, values_to: Redactor | None = None) -> TelemetryBatch:
    """`values_to`: as for `decode_traces`."""
    if native_available():
        return _decode_native(LOGS, raw, wanted, values_to)
    request = _parse(lean.ExportLogsServiceRequest, raw)
    rows: list[dict[str, object]] = []
    item_resource: list[int] = []
    resource_rows: list[dict[str, object]] = []
    for resource_index, resource_logs in enumerate(request.resource_logs):
        resource_rows.append(_pick(resource_logs.resource.attributes, wanted.resource))
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                item_resource.append(resource_index)
                rows.append(_pick(record.attributes, wanted.item) if wanted.item else {})
    frame = _frame(rows, item_resource, resource_rows, wanted)
    batch = TelemetryBatch(LOGS, frame, raw, request)
    batch.drops_bytes = _drops_bytes(request, raw)
    return batch


def _drops_bytes(request, raw: bytes) -> bool:
    # Unknown fields are kept as their bytes, so only what the parser dropped (or wrote shorter:
    # a padded varint, an explicit default) makes the view serialise to another size.
    return request.ByteSize() != len(raw)


def _span_columns(names: list[str], starts: list[int], ends: list[int], statuses: list[int]) -> list[pl.Series]:
    return [
        pl.Series(SPAN_NAME, names, dtype=pl.String),
        pl.Series(START_TIME, starts, dtype=pl.UInt64),
        pl.Series(END_TIME, ends, dtype=pl.UInt64),
        pl.Series(STATUS_CODE, statuses, dtype=pl.Int32),
    ]


def _decode_native(signal: str, raw: bytes, wanted: WantedKeys, values_to: Redactor | None = None) -> TelemetryBatch:
    """The same batch as the Python walk, with the attribute scan done by processor/native.

    The scan checks the wire structure (a malformed request fails here) and returns every
    column as Arrow buffers, kept as they are for the native stages; the frame is built from
    them (one import, no Python object per value) only if something asks for it. The protobuf
    view is only parsed if something asks for `batch.request`.
    """
    item_keys = sorted(wanted.item)
    resource_keys = sorted(wanted.resource)
    try:
        scanned = _native.scan(raw, item_keys, resource_keys, wanted.values, logs=signal == LOGS, values_to=values_to)
    except ValueError as exc:
        raise MalformedRequest(f"cannot parse the {signal} export request: {exc}") from exc
    rows = scanned["rows"]
    # Same column order as the Python walk: fixed columns, item keys, resource keys, span fields.
    keyed = [*item_keys, *(RESOURCE_PREFIX + key for key in resource_keys)]
    names = [ROW, RESOURCE_INDEX, *keyed]
    if signal == TRACES:
        names.extend((SPAN_NAME, START_TIME, END_TIME, STATUS_CODE))
    columns = ScannedColumns(rows, names)
    columns.add_array(ROW, _row_numbers(rows))
    columns.add_buffers(RESOURCE_INDEX, pa.uint32(), [None, scanned["item_resource"]])
    # Most wanted keys are absent from a given batch: no column (the frame gets all-null ones).
    for name, (kind, validity, first, second) in zip(keyed, scanned["columns"], strict=True):
        if kind != "null":
            buffers = [validity, first] if second is None else [validity, first, second]
            columns.add_buffers(name, _NATIVE_TYPES[kind], buffers)
    if signal == TRACES:
        columns.add_buffers(SPAN_NAME, pa.string_view(), list(scanned["names"]))
        columns.add_buffers(START_TIME, pa.uint64(), [None, scanned["starts"]])
        columns.add_buffers(END_TIME, pa.uint64(), [None, scanned["ends"]])
        columns.add_buffers(STATUS_CODE, pa.int32(), [None, scanned["statuses"]])
    batch = TelemetryBatch(signal, None, raw, columns=columns)
    batch._event_rows = scanned["event_rows"]
    batch.values_job = scanned.get("values_job")
    if wanted.values and batch.values_job is None:
        batch._native_strings = scanned["strings"]
        if scanned["strings"]["nested"]:
            # Rendered by the protobuf view now: a request it cannot parse is refused here, as a whole.
            batch.string_values()
    return batch


_ROW_NUMBERS: dict[int, pa.Array] = {}


def _row_numbers(rows: int) -> pa.Array:
    # Batches come in a few sizes; arrays are immutable, so one per size is shared.
    numbers = _ROW_NUMBERS.get(rows)
    if numbers is None:
        numbers = pa.array(range(rows), type=pa.uint32())
        if len(_ROW_NUMBERS) < 64:
            _ROW_NUMBERS[rows] = numbers
    return numbers


def _numbers(arrow_type: pa.DataType, n: int, data: bytes, validity: bytes | None = None) -> pa.Array:
    return pa.Array.from_buffers(arrow_type, n, [_buffer(validity), pa.py_buffer(data)])


def _views(arrow_type: pa.DataType, n: int, buffers: tuple, *more_data: bytes) -> pa.Array:
    validity, views, data = buffers
    data_buffers = [pa.py_buffer(data), *map(pa.py_buffer, more_data)]
    return pa.Array.from_buffers(arrow_type, n, [_buffer(validity), pa.py_buffer(views), *data_buffers])


def _buffer(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)


_NATIVE_TYPES = {
    "string": pa.string_view(),
    "binary": pa.binary_view(),
    "int": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
}


def _native_values_arrays(batch: TelemetryBatch, scanned: dict) -> dict[str, pa.Array]:
    """The scanner's column buffers as Arrow arrays: no Python object per value."""
    n = scanned["n"]
    return {
        "scope": _views(pa.string_view(), n, scanned["scope"]),
        "owner": _numbers(pa.int64(), n, scanned["owner"]),
        "position": _numbers(pa.int64(), n, scanned["position"]),
        "row": _numbers(pa.int64(), n, scanned["row"]),
        "key": _views(pa.string_view(), n, scanned["key"]),
        # Long string values are views into the request bytes themselves (data buffer 1).
        "value": _views(pa.string_view(), n, scanned["value"], batch.raw),
        "is_string": _numbers(pa.bool_(), n, scanned["is_string"]),
        "kind": _views(pa.string_view(), n, scanned["kind"]),
    }


def _native_values_frame(batch: TelemetryBatch, scanned: dict) -> pl.DataFrame:
    """The scanner's column buffers as a frame, through Arrow."""
    arrays = _native_values_arrays(batch, scanned)
    frame = pl.from_arrow(pa.Table.from_arrays(list(arrays.values()), names=list(arrays)))
    assert isinstance(frame, pl.DataFrame)  # a Table always converts to a frame
    nested = scanned["nested"]
    if nested:
        # Values the scan could not render (malformed nesting) are left to the Python renderer.
        addresses = frame[nested].select("scope", "owner", "position").iter_rows()
        rendered = []
        for scope, owner, position in addresses:
            value = _value_at(batch, scope, owner, position)
            rendered.append(_render(value, value.WhichOneof("value")))
        frame = frame.with_columns(frame["value"].scatter(nested, rendered))
    return frame


def _value_at(batch: TelemetryBatch, scope: str, owner: int, position: int) -> lean.AnyValue:
    if scope == SCOPE_BODY:
        return batch.items[owner].body
    if scope == SCOPE_LINK:
        attributes, index = link_attribute(batch.items[owner], position)
        return attributes[index].value
    if scope == SCOPE_SCOPE:
        return batch.scopes[owner].attributes[position].value
    if scope == SCOPE_ITEM:
        return batch.items[owner].attributes[position].value
    if scope == SCOPE_EVENT:
        return batch.events[owner][1].attributes[position].value
    return batch.resources[owner].attributes[position].value


def link_attribute(span: lean.Span, position: int) -> tuple:
    """(attribute list of a link, index in it) of the link attribute at `position`, counted across
    the span's links in order (the SCOPE_LINK address)."""
    for link in span.links:
        if position < len(link.attributes):
            return link.attributes, position
        position -= len(link.attributes)
    raise IndexError("no link attribute at that position")


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
    """Every attribute value and string log body; see TelemetryBatch.string_values.

    Non-string values are listed too (`is_string` false, `kind` the OTLP oneof name) with a
    textual rendering as `value`: ints and doubles as Python prints them, bools as true/false,
    bytes as hex, arrays and kvlists as compact JSON. That lets the redaction stage mask an array
    `gen_ai.prompt` or a structured log body as a whole; stages that only want strings filter on
    `is_string`.
    """
    scopes: list[str] = []
    owners: list[int] = []
    positions: list[int] = []
    item_rows: list[int] = []
    keys: list[str] = []
    values: list[str] = []
    kinds: list[str] = []

    def add(scope: str, owner: int, position: int, row: int, key: str, value: lean.AnyValue) -> None:
        kind = value.WhichOneof("value")
        if kind is None:
            return
        scopes.append(scope)
        owners.append(owner)
        positions.append(position)
        item_rows.append(row)
        keys.append(key)
        kinds.append(kind)
        values.append(value.string_value if kind == "string_value" else _render(value, kind))

    def collect(scope: str, owner: int, row: int, attributes, first: int = 0) -> None:
        for position, kv in enumerate(attributes, first):
            add(scope, owner, position, row, kv.key, kv.value)

    def text(scope: str, owner: int, row: int, value: str) -> None:
        if value:
            add(scope, owner, -1, row, "", lean.AnyValue(string_value=value))

    # In the native scan's order: each resource then its scopes; each item's values in field
    # order; each event's name then attributes.
    request = batch.request
    groups = request.resource_spans if batch.signal != LOGS else request.resource_logs
    scope_index = 0
    for index, group in enumerate(groups):
        collect(SCOPE_RESOURCE, index, -1, group.resource.attributes)
        for scope_group in group.scope_spans if batch.signal != LOGS else group.scope_logs:
            for scope in scope_group.scope:
                collect(SCOPE_SCOPE, scope_index, -1, scope.attributes)
                scope_index += 1
    for index, item in enumerate(batch.items):
        if batch.signal == LOGS:
            collect(SCOPE_ITEM, index, index, item.attributes)
            if item.HasField("body"):
                add(SCOPE_BODY, index, -1, index, "", item.body)
            text(SCOPE_LOG_EVENT, index, index, item.event_name.decode("utf-8", "replace"))
            continue
        text(SCOPE_SPAN_NAME, index, index, item.name)
        collect(SCOPE_ITEM, index, index, item.attributes)
        first = 0
        for link in item.links:
            collect(SCOPE_LINK, index, index, link.attributes, first)
            first += len(link.attributes)
        text(SCOPE_STATUS, index, index, item.status.message.decode("utf-8", "replace"))
    for index, (row, event) in enumerate(batch.events):
        text(SCOPE_EVENT_NAME, index, row, event.name)
        collect(SCOPE_EVENT, index, row, event.attributes)
    try:
        unknown = unknown_fields.find(batch.raw, batch.signal == LOGS)
    except unknown_fields.WireError as exc:
        raise MalformedRequest(f"cannot walk the {batch.signal} export request: {exc}") from exc
    for field in unknown:
        rendered = unknown_fields.text(batch.raw[field.content_start : field.content_end])
        add(SCOPE_UNKNOWN, field.start, field.end, field.row, "", lean.AnyValue(string_value=rendered))
    kind_column = pl.Series(kinds, dtype=pl.String)
    return pl.DataFrame(
        {
            "scope": pl.Series(scopes, dtype=pl.String),
            "owner": pl.Series(owners, dtype=pl.Int64),
            "position": pl.Series(positions, dtype=pl.Int64),
            "row": pl.Series(item_rows, dtype=pl.Int64),
            "key": pl.Series(keys, dtype=pl.String),
            "value": pl.Series(values, dtype=pl.String),
            "is_string": kind_column == "string_value",
            "kind": kind_column,
        }
    )


def _render(value: lean.AnyValue, kind: str) -> str:
    if kind in ("array_value", "kvlist_value"):
        try:
            return nested_values.render(kind, getattr(value, kind))
        except NestedValueError as exc:
            raise MalformedRequest(f"cannot read a nested attribute value: {exc}") from exc
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return str(getattr(value, kind))
