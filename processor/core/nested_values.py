"""Array and kvlist attribute values, which the lean view keeps as their protobuf bytes.

Values nest without bound on the wire (the Collector forwards arrays 30,000 deep), and protobuf's
recursive parser cannot follow them: upb refuses more than 100 levels and crashes past some
30,000 with its limit raised. This module reads them with a stack of levels instead, the same
walk processor/native/src/otlp/scan.rs `json_nested` does, and renders them as the JSON text the
redaction stage scans. A protobuf field of the wrong wire type or a group is skipped as an unknown
field, as protobuf parsers do; a oneof field sent more than once is rendered copy after copy, so a
secret in a copy a parser would drop is seen too.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

# Deepest nesting of arrays and kvlists rendered (scan.rs MAX_NESTING): both walks are iterative,
# so this bounds memory, not the stack; ten times protobuf-go's default recursion limit (10,000).
MAX_NESTING = 100_000

_VARINT, _I64, _LEN, _START_GROUP, _END_GROUP, _I32 = 0, 1, 2, 3, 4, 5
_INT64_WRAP = 1 << 64


class NestedValueError(ValueError):
    """A nested value that is not valid protobuf, or nests deeper than MAX_NESTING."""


# A chunk of the value's bytes: (start, end) offsets into one buffer.
Chunk = tuple[int, int]


def render(kind: str, raw: bytes) -> str:
    """The JSON text of an `array_value` / `kvlist_value` (the AnyValue oneof name) from its bytes."""
    top = ("array" if kind == "array_value" else "kvlist", (0, len(raw)))
    return _json_nested(raw, top)


def array_bytes(elements: list[bytes]) -> bytes:
    """ArrayValue bytes holding these serialised AnyValue messages."""
    out = bytearray()
    for element in elements:
        out.append(0x0A)  # field 1, length-delimited
        _put_varint(out, len(element))
        out += element
    return bytes(out)


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def varint_bytes(value: int) -> bytes:
    out = bytearray()
    _put_varint(out, value)
    return bytes(out)


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise NestedValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & (_INT64_WRAP - 1), pos
    raise NestedValueError("varint too long")


def _tag(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    tag, pos = _varint(buf, pos, end)
    field = tag >> 3
    # Protobuf field numbers are 1 to 2^29 - 1; parsers refuse others as corrupt.
    if not 0 < field < 1 << 29:
        raise NestedValueError(f"field number {field} out of range")
    return field, tag & 7, pos


def _length(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(start, end) of a length-delimited field's content."""
    length, pos = _varint(buf, pos, end)
    if pos + length > end:
        raise NestedValueError("truncated length-delimited field")
    return pos, pos + length


def _fixed(pos: int, end: int, size: int) -> int:
    if pos + size > end:
        raise NestedValueError(f"truncated fixed{size * 8}")
    return pos + size


def _skip(buf: bytes, pos: int, end: int, field: int, wire: int) -> int:
    """Past the field whose tag was just read; a group up to its end tag, without recursion."""
    open_groups = [field] if wire == _START_GROUP else []
    while True:
        if wire == _VARINT:
            pos = _varint(buf, pos, end)[1]
        elif wire == _I64:
            pos = _fixed(pos, end, 8)
        elif wire == _LEN:
            pos = _length(buf, pos, end)[1]
        elif wire == _I32:
            pos = _fixed(pos, end, 4)
        elif wire == _END_GROUP:
            if not open_groups:
                raise NestedValueError("end of a group that was not started")
            if open_groups[-1] != field:
                raise NestedValueError(f"group {open_groups[-1]} ended by field {field}")
            open_groups.pop()
        elif wire != _START_GROUP:
            raise NestedValueError(f"invalid wire type {wire}")
        if not open_groups:
            return pos
        if pos >= end:
            raise NestedValueError("truncated group")
        field, wire, pos = _tag(buf, pos, end)
        if wire == _START_GROUP:
            open_groups.append(field)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _any_value(buf: bytes, chunks: list[Chunk]) -> tuple[tuple | None, list | None]:
    """The value a protobuf parser keeps (the last oneof field) and, when the oneof field comes
    more than once, every copy in order (scan.rs `any_value_copies`). A value is (kind, payload);
    None when no field is set."""
    value = None
    copies = None
    for pos, end in chunks:
        while pos < end:
            field, wire, pos = _tag(buf, pos, end)
            if wire == _LEN and field in (1, 5, 6, 7):
                start, pos = _length(buf, pos, end)
                if field == 1:
                    found: tuple[str, object] = ("str", _text(buf[start:pos]))
                elif field == 7:
                    found = ("bytes", buf[start:pos].hex())
                else:
                    found = ("array" if field == 5 else "kvlist", (start, pos))
            elif wire == _VARINT and field in (2, 3):
                number, pos = _varint(buf, pos, end)
                if field == 2:
                    found = ("bool", number != 0)
                else:
                    found = ("int", number - _INT64_WRAP if number >= 1 << 63 else number)
            elif wire == _I64 and field == 4:
                found = ("double", _double(buf, pos, end))
                pos += 8
            else:
                pos = _skip(buf, pos, end, field, wire)
                continue
            if value is not None:
                if copies is None:
                    copies = [value]
                copies.append(found)
            value = found
    return value, copies


def _double(buf: bytes, pos: int, end: int) -> float:
    _fixed(pos, end, 8)
    return struct.unpack_from("<d", buf, pos)[0]


def _key_value(buf: bytes, pos: int, end: int) -> tuple[str, list[Chunk]]:
    key = (0, 0)
    values: list[Chunk] = []
    while pos < end:
        field, wire, pos = _tag(buf, pos, end)
        if wire == _LEN and field in (1, 2):
            chunk = _length(buf, pos, end)
            pos = chunk[1]
            if field == 1:
                key = chunk
            else:
                values.append(chunk)
        else:
            pos = _skip(buf, pos, end, field, wire)
    return _text(buf[key[0] : key[1]]), values


def _kv_entries(buf: bytes, chunk: Chunk) -> Iterator[tuple[str, list[Chunk]]]:
    """A kvlist's entries: a repeated key keeps its first place and its last value (a dict)."""
    entries: dict[str, list[Chunk]] = {}
    pos, end = chunk
    while pos < end:
        field, wire, pos = _tag(buf, pos, end)
        if (field, wire) == (1, _LEN):
            start, pos = _length(buf, pos, end)
            key, value = _key_value(buf, start, pos)
            entries[key] = value
        else:
            pos = _skip(buf, pos, end, field, wire)
    return iter(entries.items())


def _json_scalar(value: tuple | None) -> str:
    if value is None:
        return "null"
    kind, payload = value
    if kind == "bool":
        return "true" if payload else "false"
    if kind == "int":
        return str(payload)
    if kind == "double":
        # Python's repr for a finite double; the string "inf" / "nan" for the others.
        return json.dumps(payload if payload - payload == 0 else str(payload))
    return json.dumps(payload, ensure_ascii=False)


def _json_nested(buf: bytes, top: tuple) -> str:
    out: list[str] = []
    # Each open level: [kind, state, nothing written yet]. Array state: [pos, end]; kvlist and
    # copies state: an iterator.
    levels: list[list] = []
    depth = 0
    pending: tuple | None = top
    has_pending = True
    while True:
        if has_pending:
            has_pending = False
            kind = pending[0] if pending is not None else None
            if kind in ("array", "kvlist"):
                assert pending is not None  # kind is read from it
                depth += 1
                if depth > MAX_NESTING:
                    raise NestedValueError(f"a value nested deeper than {MAX_NESTING} levels")
                if kind == "array":
                    out.append("[")
                    levels.append(["array", list(pending[1]), True])
                else:
                    out.append("{")
                    levels.append(["kvlist", _kv_entries(buf, pending[1]), True])
            else:
                out.append(_json_scalar(pending))
        if not levels:
            return "".join(out)
        level = levels[-1]
        kind, state, first = level
        chunks = None
        closed = False
        if kind == "array":
            pos, end = state
            while True:
                if pos >= end:
                    closed = True
                    break
                field, wire, pos = _tag(buf, pos, end)
                if (field, wire) == (1, _LEN):
                    start, pos = _length(buf, pos, end)
                    chunks = [(start, pos)]
                    break
                pos = _skip(buf, pos, end, field, wire)
            state[0] = pos
        else:
            entry = next(state, None)
            if entry is None:
                closed = True
            elif kind == "kvlist":
                key, chunks = entry
                if not first:
                    out.append(",")
                level[2] = False
                out.append(json.dumps(key, ensure_ascii=False))
                out.append(":")
            else:
                pending, has_pending = entry, True
        if closed:
            levels.pop()
            if kind != "copies":
                out.append("]" if kind == "array" else "}")
                depth -= 1
            continue
        if kind != "kvlist":
            if not first:
                out.append(",")
            level[2] = False
        if chunks is not None:
            value, copies = _any_value(buf, chunks)
            if copies is None:
                pending, has_pending = value, True
            else:
                levels.append(["copies", iter(copies), True])
