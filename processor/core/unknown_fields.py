"""Fields of an OTLP request that its schema does not declare, for the pure-Python path.

Protobuf parsers downstream keep an unknown field as its bytes and forward them, so a secret in
one (a mutated field number inside a span or an AnyValue) would leave the node as sent. The
redaction stage sees the bytes of every unknown length-delimited field or group (scope
"unknown" of `TelemetryBatch.string_values`, owner and position its byte range) and drops a
field when a value rule would change it; unknown fields with nothing to redact go out as
received, so fields of a newer OTLP version survive. The native scanner (processor/native/src/
scan.rs `Schema`) lists the same fields and rewrite.rs `strip` drops them; this module is the
same rule for the fallback. Both walks use a stack, not recursion: values nest without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from processor.core.nested_values import varint_bytes

VARINT, I64, LEN, START_GROUP, END_GROUP, I32 = 0, 1, 2, 3, 4, 5

# message -> {(field number, wire type): message it holds, or None for a leaf}; opentelemetry-proto 1.x.
_Schema = dict[tuple[int, int], "_Schema | None"]
ANY_VALUE: _Schema = {(1, LEN): None, (2, VARINT): None, (3, VARINT): None, (4, I64): None, (7, LEN): None}
KEY_VALUE: _Schema = {(1, LEN): None, (2, LEN): ANY_VALUE}
ARRAY_VALUE: _Schema = {(1, LEN): ANY_VALUE}
KEY_VALUE_LIST: _Schema = {(1, LEN): KEY_VALUE}
ANY_VALUE[(5, LEN)] = ARRAY_VALUE
ANY_VALUE[(6, LEN)] = KEY_VALUE_LIST
RESOURCE: _Schema = {(1, LEN): KEY_VALUE, (2, VARINT): None, (3, LEN): None}
SCOPE: _Schema = {(1, LEN): None, (2, LEN): None, (3, LEN): KEY_VALUE, (4, VARINT): None}
EVENT: _Schema = {(1, I64): None, (2, LEN): None, (3, LEN): KEY_VALUE, (4, VARINT): None}
LINK: _Schema = {(1, LEN): None, (2, LEN): None, (3, LEN): None, (4, LEN): KEY_VALUE, (5, VARINT): None, (6, I32): None}
STATUS: _Schema = {(2, LEN): None, (3, VARINT): None}
SPAN: _Schema = {
    **{(number, LEN): None for number in (1, 2, 3, 4, 5)},
    **{(number, VARINT): None for number in (6, 10, 12, 14)},
    (7, I64): None,
    (8, I64): None,
    (9, LEN): KEY_VALUE,
    (11, LEN): EVENT,
    (13, LEN): LINK,
    (15, LEN): STATUS,
    (16, I32): None,
}
LOG_RECORD: _Schema = {
    (1, I64): None,
    (11, I64): None,
    (2, VARINT): None,
    (7, VARINT): None,
    (8, I32): None,
    **{(number, LEN): None for number in (3, 9, 10, 12)},
    (5, LEN): ANY_VALUE,
    (6, LEN): KEY_VALUE,
}
ITEMS = (SPAN, LOG_RECORD)


def _request(item: _Schema) -> _Schema:
    scope_group = {(1, LEN): SCOPE, (2, LEN): item, (3, LEN): None}
    return {(1, LEN): {(1, LEN): RESOURCE, (2, LEN): scope_group, (3, LEN): None}}


TRACES_REQUEST = _request(SPAN)
LOGS_REQUEST = _request(LOG_RECORD)


@dataclass(frozen=True)
class UnknownField:
    """A whole field (tag included) at raw[start:end], carrying raw[content_start:content_end];
    `row` the item it sits in, -1 outside items."""

    start: int
    end: int
    content_start: int
    content_end: int
    row: int


# Levels of messages inside an unknown field whose strings `text` lists on their own.
UNKNOWN_DEPTH = 8


def text(content: bytes) -> str:
    """What the value rules see for an unknown field: its bytes, then, when they read as protobuf
    fields, the content of each length-delimited one, one a line, to UNKNOWN_DEPTH levels: a string
    inside is seen apart from the length byte before it (56 is the byte "8", which would glue
    itself to an "sk-..." key). processor/native/src/otlp/scan.rs `unknown_text` gives the same text."""
    lines: list[str] = []
    pending = [(content, 0)]
    while pending:
        buf, depth = pending.pop()
        lines.append(buf.decode("utf-8", "replace"))
        if depth < UNKNOWN_DEPTH:
            parts = _length_delimited_parts(buf)
            if parts is not None:
                pending.extend((part, depth + 1) for part in reversed(parts))
    return "\n".join(lines)


def _length_delimited_parts(buf: bytes) -> list[bytes] | None:
    parts = []
    pos = 0
    try:
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            field, wire = key >> 3, key & 7
            if not 1 <= field < 1 << 29:
                return None
            if wire == LEN:
                length, pos = _varint(buf, pos)
                if pos + length > len(buf):
                    return None
                parts.append(buf[pos : pos + length])
                pos += length
            else:
                pos = _skip(buf, pos, field, wire)
    except WireError:
        return None
    return parts


class WireError(ValueError):
    """The bytes are not valid protobuf."""


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip(raw: bytes, pos: int, field: int, wire: int) -> int:
    """The position after the value of a field whose tag ended at `pos` (groups nest iteratively)."""
    open_groups = [field] if wire == START_GROUP else []
    while True:
        if wire == VARINT:
            pos = _varint(raw, pos)[1]
        elif wire == I64:
            pos += 8
        elif wire == I32:
            pos += 4
        elif wire == LEN:
            length, pos = _varint(raw, pos)
            pos += length
        elif wire == END_GROUP:
            if not open_groups or open_groups[-1] != field:
                raise WireError("a group ended by another field")
            open_groups.pop()
        elif wire != START_GROUP:
            raise WireError(f"invalid wire type {wire}")
        if pos > len(raw):
            raise WireError("truncated field")
        if not open_groups:
            return pos
        key, pos = _varint(raw, pos)
        field, wire = key >> 3, key & 7
        if wire == START_GROUP:
            open_groups.append(field)


def find(raw: bytes, logs: bool) -> list[UnknownField]:
    """Every unknown length-delimited field or group of an export request, in request order."""
    found: list[UnknownField] = []
    items = 0
    item_schema = LOG_RECORD if logs else SPAN
    # (end, schema, row) of each open message.
    open_messages: list[tuple[int, _Schema, int]] = [(len(raw), LOGS_REQUEST if logs else TRACES_REQUEST, -1)]
    pos = 0
    while open_messages:
        end, schema, row = open_messages[-1]
        if pos >= end:
            if pos > end:
                raise WireError("a field runs past its message")
            open_messages.pop()
            continue
        start = pos
        key, pos = _varint(raw, pos)
        field, wire = key >> 3, key & 7
        declared = (field, wire) in schema
        child = schema.get((field, wire))
        if declared and wire == LEN and child is not None:
            length, pos = _varint(raw, pos)
            if child is item_schema:
                row = items
                items += 1
            open_messages.append((pos + length, child, row))
            continue
        after_tag = pos
        pos = _skip(raw, pos, field, wire)
        if not declared and wire == LEN:
            _, content = _varint(raw, after_tag)
            found.append(UnknownField(start, pos, content, pos, row))
        elif not declared and wire == START_GROUP:
            end_tag = len(varint_bytes(field << 3 | END_GROUP))
            found.append(UnknownField(start, pos, after_tag, pos - end_tag, row))
    return found


def strip(raw: bytes, ranges: list[tuple[int, int]]) -> bytes:
    """`raw` without the whole fields at `ranges` (from `find`), enclosing lengths recomputed."""
    drop = sorted(set(ranges))

    def holds(content: int, end: int) -> bool:
        return any(content <= start and stop <= end for start, stop in drop)

    # A tree of the messages to enter, built with a stack; each node: [tag bytes, parts], where a
    # part is bytes kept as they are or a child node.
    root: list = [b"", []]
    open_nodes: list[tuple[int, list]] = [(len(raw), root)]
    dropped = set(drop)
    pos = 0
    while open_nodes:
        end, node = open_nodes[-1]
        if pos >= end:
            open_nodes.pop()
            continue
        start = pos
        key, pos = _varint(raw, pos)
        wire = key & 7
        if wire == LEN:
            tag_end = pos
            length, pos = _varint(raw, pos)
            content, pos = pos, pos + length
            if (start, pos) in dropped:
                continue
            if holds(content, pos):
                child: list = [raw[start:tag_end], []]
                node[1].append(child)
                open_nodes.append((pos, child))
                pos = content
                continue
        else:
            pos = _skip(raw, pos, key >> 3, wire)
            if (start, pos) in dropped:
                continue
        node[1].append(raw[start:pos])
    return _serialise(root)


def _serialise(root: list) -> bytes:
    # Children first (post-order, with a stack): a node's length prefix needs its content.
    done: dict[int, bytes] = {}
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if not expanded:
            stack.append((node, True))
            stack.extend((part, False) for part in node[1] if isinstance(part, list))
            continue
        content = b"".join(part if isinstance(part, bytes) else done.pop(id(part)) for part in node[1])
        done[id(node)] = node[0] + varint_bytes(len(content)) + content if node is not root else content
    return done[id(root)]
