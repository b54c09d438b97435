"""Hostile but valid protobuf through a real sidecar, on the native and the pure-Python decoder.

Values nested tens of thousands deep, fields of a wire type their number does not declare,
groups, fields repeated inside a value, resources without spans: every one is answered OK and
forwarded (unknown bytes untouched), the process lives, and no email inside gets to the sink.
Requests are built as raw bytes: protobuf's own recursive parser cannot build the deep ones.
"""

from __future__ import annotations

import grpc
import polars as pl
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from prometheus_client import CollectorRegistry

from processor.core.decode import WantedKeys, decode_traces, native_module
from processor.core.nested_values import MAX_NESTING
from processor.stages.redaction.rules import load_rules
from processor.stages.redaction.stage import RedactionStage
from tests.support.otlp_builders import log_request, span, trace_request
from tests.support.otlp_sink import OtlpSink
from tests.support.sidecar_runner import RunningSidecar

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
EMAIL = b"alice.secret@example.com"


@pytest.fixture(params=["native", "python"])
def decoder(request, monkeypatch) -> str:
    if request.param == "native" and native_module() is None:
        pytest.skip("native module not built")
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1" if request.param == "native" else "0")
    return request.param


@pytest.fixture
def sink():
    sink = OtlpSink(parse=False).start()
    yield sink
    sink.stop()


def _sidecar(sink: OtlpSink, redaction: bool = True) -> RunningSidecar:
    stages = [RedactionStage(load_rules(), b"test-key", CollectorRegistry())] if redaction else []
    return RunningSidecar(sink.endpoint, stages=stages).start()


@pytest.fixture
def sidecar(sink):
    running = _sidecar(sink)
    yield running
    running.stop()


def export(sidecar: RunningSidecar, raw: bytes, method: str = TRACES) -> grpc.StatusCode:
    with sidecar.channel() as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(raw, timeout=60)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def forwarded(sink: OtlpSink, method: str = TRACES) -> list[bytes]:
    service = method.split("/")[1]
    return sink.raw_requests[service]


# --- protobuf wire format, by hand -----------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, content: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(content)) + content


def string_any(text: bytes) -> bytes:
    return field(1, text)


def deep_array(depth: int, leaf: bytes) -> bytes:
    """An AnyValue: `depth` arrays, one inside the other, around a string leaf."""
    value = string_any(leaf)
    for _ in range(depth):
        value = field(5, field(1, value))
    return value


def deep_kvlist(depth: int, leaf: bytes) -> bytes:
    value = string_any(leaf)
    for _ in range(depth):
        value = field(6, field(1, field(1, b"k") + field(2, value)))
    return value


def key_value(key: bytes, any_value: bytes) -> bytes:
    return field(1, key) + field(2, any_value)


def trace_bytes(span_fields: bytes, resource_attributes: bytes = b"") -> bytes:
    span_bytes = field(5, b"deep span") + span_fields
    resource_spans = field(1, resource_attributes) + field(2, field(2, span_bytes))
    return field(1, resource_spans)


def log_bytes(record_fields: bytes) -> bytes:
    return field(1, field(2, field(2, record_fields)))


def deep_requests(depth_array: int, depth_kvlist: int) -> dict[str, tuple[str, bytes]]:
    array, kvlist = deep_array(depth_array, EMAIL), deep_kvlist(depth_kvlist, EMAIL)
    return {
        "span attribute array": (TRACES, trace_bytes(field(9, key_value(b"note", array)))),
        "span attribute kvlist": (TRACES, trace_bytes(field(9, key_value(b"note", kvlist)))),
        "resource attribute kvlist": (TRACES, trace_bytes(b"", field(1, key_value(b"note", kvlist)))),
        "event attribute array": (TRACES, trace_bytes(field(11, field(2, b"ev") + field(3, key_value(b"n", array))))),
        "log body array": (LOGS, log_bytes(field(5, array))),
        "log body kvlist": (LOGS, log_bytes(field(5, kvlist))),
    }


DEEP = deep_requests(30_000, 20_000)


@pytest.mark.parametrize("case", sorted(DEEP))
def test_a_value_nested_tens_of_thousands_deep_is_forwarded_redacted(decoder, sink, sidecar, case):
    method, raw = DEEP[case]
    assert export(sidecar, raw, method) == grpc.StatusCode.OK
    [sent] = forwarded(sink, method)
    assert EMAIL not in sent
    assert b"[REDACTED" in sent
    # The process lives and serves the next request.
    assert export(sidecar, trace_request([span()]).SerializeToString()) == grpc.StatusCode.OK


def test_a_deep_value_without_a_secret_is_forwarded_as_sent(decoder, sink, sidecar):
    raw = trace_bytes(field(9, key_value(b"note", deep_array(30_000, b"nothing to hide"))))
    assert export(sidecar, raw) == grpc.StatusCode.OK
    assert forwarded(sink) == [raw]


def test_a_value_nested_past_the_limit_is_refused_clearly_on_both_paths(decoder, sink, sidecar):
    raw = trace_bytes(field(9, key_value(b"note", deep_array(MAX_NESTING + 1, EMAIL))))
    with sidecar.channel() as channel:
        call = channel.unary_unary(TRACES, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            call(raw, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"nested deeper than {MAX_NESTING} levels" in refused.value.details()
    assert forwarded(sink) == []
    assert export(sidecar, trace_request([span()]).SerializeToString()) == grpc.StatusCode.OK


def test_without_redaction_a_value_past_the_limit_passes_untouched(decoder, sink):
    running = _sidecar(sink, redaction=False)
    try:
        raw = trace_bytes(field(9, key_value(b"note", deep_array(MAX_NESTING + 1, b"x"))))
        assert export(running, raw) == grpc.StatusCode.OK
        assert forwarded(sink) == [raw]
    finally:
        running.stop()


# --- unknown wire types and groups -----------------------------------------------------------

VALID = trace_request([span(attributes={"gen_ai.request.model": "gpt-4o"})]).SerializeToString()
GROUP = b"\x0b\x08\x01\x13\x10\x02\x14\x0c"  # field 1 group holding a varint and a field 2 group
UNKNOWN = {
    "trailing varint under field 1": VALID + b"\x08\x01",
    "trailing group under field 1": VALID + GROUP,
    "span name as a varint": trace_bytes(b"\x28\x07" + field(9, key_value(b"k", string_any(b"v")))),
    "span time as a varint, attributes as fixed32": trace_bytes(b"\x38\x05" + b"\x4d\x01\x02\x03\x04"),
    "group inside a span": trace_bytes(b"\x93\x01\x08\x01\x94\x01"),
    "string value as a varint": trace_bytes(field(9, field(1, b"k") + field(2, b"\x08\x01"))),
    "key as a fixed64": trace_bytes(field(9, b"\x09" + bytes(8) + field(2, string_any(b"v")))),
    "array element as a varint, group in an array": trace_bytes(
        field(9, key_value(b"k", field(5, b"\x08\x01" + GROUP + field(1, string_any(b"v")))))
    ),
    "event as a varint": trace_bytes(b"\x58\x01" + field(11, field(2, b"ev"))),
    "log body as a varint": log_bytes(b"\x28\x01" + field(6, key_value(b"k", string_any(b"v")))),
}


@pytest.mark.parametrize("case", sorted(UNKNOWN))
def test_unknown_wire_types_and_groups_are_forwarded_byte_identical(decoder, sink, sidecar, case):
    raw = UNKNOWN[case]
    method = LOGS if case.startswith("log") else TRACES
    assert export(sidecar, raw, method) == grpc.StatusCode.OK
    assert forwarded(sink, method) == [raw]


def test_unknown_fields_stay_when_a_secret_next_to_them_is_redacted(decoder, sink, sidecar):
    raw = trace_bytes(b"\x28\x07" + b"\x93\x01\x08\x01\x94\x01" + field(9, key_value(b"note", string_any(EMAIL))))
    assert export(sidecar, raw) == grpc.StatusCode.OK
    [sent] = forwarded(sink)
    assert EMAIL not in sent
    assert b"\x28\x07" in sent and b"\x93\x01\x08\x01\x94\x01" in sent


# --- fields repeated inside a value ----------------------------------------------------------

REPEATED = {
    "two string values, the secret first": key_value(b"note", string_any(EMAIL) + string_any(b"fine")),
    "two string values, the secret last": key_value(b"note", string_any(b"fine") + string_any(EMAIL)),
    "a string then an int": key_value(b"note", string_any(EMAIL) + b"\x18\x05"),
    "two array values": key_value(b"note", field(5, field(1, string_any(EMAIL))) + field(5, field(1, b"\x18\x01"))),
    "two value fields": field(1, b"note") + field(2, field(5, field(1, string_any(EMAIL)))) + field(2, b"\x18\x02"),
    "two value fields, both arrays": field(1, b"note")
    + field(2, field(5, field(1, string_any(EMAIL))))
    + field(2, field(5, field(1, string_any(b"ok")))),
    "repeated copies inside an array": key_value(b"note", field(5, field(1, string_any(EMAIL) + string_any(b"x")))),
    "repeated value inside a kvlist": key_value(
        b"note", field(6, field(1, field(1, b"k") + field(2, string_any(EMAIL)) + field(2, string_any(b"x"))))
    ),
}


@pytest.mark.parametrize("case", sorted(REPEATED))
def test_no_copy_of_a_secret_in_a_repeated_field_reaches_the_sink(decoder, sink, sidecar, case):
    assert export(sidecar, trace_bytes(field(9, REPEATED[case]))) == grpc.StatusCode.OK
    [sent] = forwarded(sink)
    assert EMAIL not in sent


@pytest.mark.parametrize(
    "bodies",
    [
        [string_any(EMAIL), string_any(b"fine")],
        [string_any(b"fine"), string_any(EMAIL)],
        [field(6, field(1, key_value(b"a", string_any(EMAIL)))), field(6, field(1, key_value(b"b", b"\x18\x01")))],
    ],
    ids=["secret first", "secret last", "two kvlists"],
)
def test_no_copy_of_a_secret_in_a_repeated_log_body_reaches_the_sink(decoder, sink, sidecar, bodies):
    raw = log_bytes(b"".join(field(5, body) for body in bodies))
    assert export(sidecar, raw, LOGS) == grpc.StatusCode.OK
    [sent] = forwarded(sink, LOGS)
    assert EMAIL not in sent


# --- resources and scopes without spans ------------------------------------------------------


def test_a_resource_without_spans_is_redacted(decoder, sink, sidecar):
    request = trace_request([span()])
    spanless = request.resource_spans.add()
    spanless.resource.attributes.add(key="owner", value={"string_value": EMAIL.decode()})
    empty_scope = request.resource_spans.add()
    empty_scope.resource.attributes.add(key="contact", value={"string_value": EMAIL.decode()})
    empty_scope.scope_spans.add()
    assert export(sidecar, request.SerializeToString()) == grpc.StatusCode.OK
    [sent] = forwarded(sink)
    assert EMAIL not in sent
    assert len(trace_pb.ExportTraceServiceRequest.FromString(sent).resource_spans) == 3


def test_a_request_of_spanless_resources_only_is_redacted(decoder, sink, sidecar):
    raw = field(1, field(1, field(1, key_value(b"owner", string_any(EMAIL)))))
    assert export(sidecar, raw) == grpc.StatusCode.OK
    [sent] = forwarded(sink)
    assert EMAIL not in sent


def test_a_log_resource_without_records_is_redacted(decoder, sink, sidecar):
    request = log_request([], resource={"owner": EMAIL.decode()})
    assert export(sidecar, request.SerializeToString(), LOGS) == grpc.StatusCode.OK
    [sent] = forwarded(sink, LOGS)
    assert EMAIL not in sent


# --- both decoders render nested values alike ------------------------------------------------

NESTED = {
    "array 30,000 deep": deep_array(30_000, EMAIL),
    "kvlist 20,000 deep": deep_kvlist(20_000, EMAIL),
    "unknown fields and a group in an array": field(5, b"\x08\x01" + GROUP + field(1, string_any(b"v"))),
    "copies inside an array": field(5, field(1, string_any(EMAIL) + b"\x18\x07") + field(1, b"\x21" + bytes(8))),
    "a kvlist repeating a key and a value": field(
        6,
        field(1, key_value(b"a", string_any(b"1")))
        + field(1, field(1, b"b") + field(2, b"\x10\x01") + field(2, field(7, b"\xff")))
        + field(1, key_value(b"a", field(6, b""))),
    ),
    "invalid UTF-8 and odd doubles": field(
        5, field(1, string_any(b"\xff\xfeok")) + field(1, b"\x21" + bytes.fromhex("000000000000f07f"))
    ),
}


@pytest.mark.parametrize("case", sorted(NESTED))
def test_both_decoders_render_nested_values_alike(monkeypatch, case):
    if native_module() is None:
        pytest.skip("native module not built")
    raw = trace_bytes(field(9, key_value(b"note", NESTED[case])))
    rendered = {}
    for path in ("1", "0"):
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", path)
        batch = decode_traces(raw, WantedKeys(values=True))
        rendered[path] = (
            batch.string_values().select("scope", "owner", "position", "kind", "value").sort(pl.all()).rows()
        )
    assert rendered["1"] == rendered["0"]
    assert len([row for row in rendered["1"] if row[0] == "attribute"]) == 1


@pytest.mark.parametrize(
    "tag",
    [b"\x80\x80\x80\x80\x10", b"\x88\x80\x80\x80\x80\x01"],
    ids=["field 2^29", "field 2^32 + 1, which 32 bits would read as field 1"],
)
def test_a_field_number_out_of_range_is_refused_on_both_paths(decoder, sink, sidecar, tag):
    assert export(sidecar, VALID + tag + b"\x01") == grpc.StatusCode.INVALID_ARGUMENT
    assert forwarded(sink) == []
