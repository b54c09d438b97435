"""Fuzz: structure-aware mutations of valid OTLP trace and log requests against a real
`python -m processor serve` with a real sink.

Every answer is OK or INVALID_ARGUMENT, the process lives, what no stage changes goes out
byte-identical, and no planted secret survives in what an OK answer forwarded. Seeded and bounded:
GENOPS_FUZZ_SEED reproduces a run, GENOPS_FUZZ_SECONDS is the time of the whole module (~60 s).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support.collector_harness import free_port
from tests.support.otlp_builders import key_values, log_request, span, trace_request
from tests.support.otlp_sink import OtlpSink
from tests.support.serve import start_sidecar, terminate, wait_ready

pytestmark = pytest.mark.fuzz

SEED = int(os.environ.get("GENOPS_FUZZ_SEED", "1717"))
SECONDS = float(os.environ.get("GENOPS_FUZZ_SECONDS", "40"))
EMAIL = b"fuzz.victim@example.com"
API_KEY = b"sk-proj-Fuzz0123456789abcdefghijKLMN"
SECRETS = (EMAIL, API_KEY)
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
SINK_TRACES = "opentelemetry.proto.collector.trace.v1.TraceService"
SINK_LOGS = "opentelemetry.proto.collector.logs.v1.LogsService"
LEN, VARINT, I64, I32, SGROUP, EGROUP = 2, 0, 1, 5, 3, 4

# --- protobuf wire format, just enough to mutate requests in place ------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def wrap(field: int, payload: bytes) -> bytes:
    return tag(field, LEN) + varint(len(payload)) + payload


@dataclass(frozen=True)
class Field:
    start: int  # of the tag
    length_at: int  # of the length varint (LEN fields), else the value
    value_at: int
    end: int
    wire: int


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def walk(buf: bytes, base: int = 0, depth: int = 0) -> list[Field]:
    """Every field of a valid message, nested ones too (a LEN value that parses is descended)."""
    out: list[Field] = []
    i = 0
    while i < len(buf):
        start = i
        key, i = read_varint(buf, i)
        wire = key & 7
        length_at = i
        if wire == VARINT:
            _, i = read_varint(buf, i)
            value_at = length_at
        elif wire == LEN:
            size, value_at = read_varint(buf, i)
            i = value_at + size
            if i > len(buf):
                raise ValueError("overrun")
        elif wire in (I64, I32):
            value_at, i = i, i + (8 if wire == I64 else 4)
        else:
            raise ValueError("group")
        out.append(Field(base + start, base + length_at, base + value_at, base + i, wire))
        if wire == LEN and depth < 12:
            with contextlib.suppress(ValueError):  # a string or bytes value, not a message
                out.extend(walk(buf[value_at:i], base + value_at, depth + 1))
    return out


# --- the valid requests the mutations start from ------------------------------------------------


def base_span(rng: random.Random, attributes: dict[str, object] | None = None) -> trace_pb2.Span:
    out = span(
        name=f"chat gpt-4o {rng.randrange(1000)}",
        attributes=attributes
        or {
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": rng.randrange(1, 5000),
            "gen_ai.usage.output_tokens": rng.randrange(1, 5000),
            "gen_ai.prompt": f"mail me at {EMAIL.decode()} about the invoice",
            "app.credential": API_KEY.decode(),
            "app.plain": "nothing to see",
            "app.count": rng.randrange(100),
        },
        events=[("gen_ai.user.message", {"content": f"key {API_KEY.decode()}"})],
    )
    # From the seed, not os.urandom: the mutations depend on the bytes, and a seed must replay them.
    out.trace_id, out.span_id, out.parent_span_id = rng.randbytes(16), rng.randbytes(8), rng.randbytes(8)
    return out


def base_traces(rng: random.Random) -> bytes:
    return trace_request([base_span(rng) for _ in range(rng.randrange(1, 4))]).SerializeToString()


def base_logs(rng: random.Random) -> bytes:
    request = log_request(
        [f"user {EMAIL.decode()} said hi", {"reply": f"use {API_KEY.decode()}"}], attributes={"app.plain": "calm"}
    )
    for record in items(request):
        record.trace_id, record.span_id = rng.randbytes(16), rng.randbytes(8)
    return request.SerializeToString()


def traces_with_span_bytes(span_bytes: list[bytes]) -> bytes:
    """An ExportTraceServiceRequest around span bytes that protobuf builders could not write."""
    attributes = b"".join(wrap(1, kv.SerializeToString()) for kv in key_values({"service.name": "fuzz"}))
    resource = wrap(1, attributes)  # ResourceSpans.resource
    scope_spans = b"".join(wrap(2, s) for s in span_bytes)
    return wrap(1, resource + wrap(2, scope_spans))


def nested_value(depth: int, kind: str, leaf: bytes) -> bytes:
    """An AnyValue nested `depth` arrays (or kvlists) deep, built outside in without copying."""
    inner = wrap(1, leaf)  # AnyValue.string_value
    sizes = [len(inner)]
    for _ in range(depth):
        if kind == "array":  # AnyValue{array_value(5): ArrayValue{values(1): AnyValue}}
            body = len(tag(1, LEN)) + len(varint(sizes[-1])) + sizes[-1]
        else:  # AnyValue{kvlist_value(6): KeyValueList{values(1): KeyValue{key(1), value(2)}}}
            kv = 3 + len(tag(2, LEN)) + len(varint(sizes[-1])) + sizes[-1]
            body = len(tag(1, LEN)) + len(varint(kv)) + kv
        sizes.append(len(tag(6, LEN)) + len(varint(body)) + body)
    parts = []
    for level in range(depth, 0, -1):
        child = sizes[level - 1]
        if kind == "array":
            body = len(tag(1, LEN)) + len(varint(child)) + child
            parts.append(tag(5, LEN) + varint(body) + tag(1, LEN) + varint(child))
        else:
            kv = 3 + len(tag(2, LEN)) + len(varint(child)) + child
            body = len(tag(1, LEN)) + len(varint(kv)) + kv
            parts.append(
                tag(6, LEN) + varint(body) + tag(1, LEN) + varint(kv) + wrap(1, b"k") + tag(2, LEN) + varint(child)
            )
    return b"".join(parts) + inner


def span_bytes_with(rng: random.Random, extra: bytes) -> bytes:
    return base_span(rng).SerializeToString() + extra


# --- where in a request a secret sits ---------------------------------------------------------

# The OTLP schema as far as the secret check needs it: field number -> (name, message or None).
# Everything inside an AnyValue is a "value".
KV = {1: ("key", None), 2: ("value", "AnyValue")}
# The length-delimited fields of an AnyValue a protobuf parser reads; a secret anywhere else in one
# sits in a field unknown to it.
ANY_VALUE: dict = {1: ("string_value", None), 7: ("bytes_value", None)}
ANY_VALUE[5] = ("array_value", {1: ("values", ANY_VALUE)})
ANY_VALUE[6] = ("kvlist_value", {1: ("values", {1: ("key", None), 2: ("value", ANY_VALUE)})})
SCOPE = {1: ("name", None), 2: ("version", None), 3: ("attributes", KV)}
RESOURCE = {1: ("attributes", KV)}
SPAN = {
    1: ("trace_id", None),
    2: ("span_id", None),
    3: ("trace_state", None),
    4: ("parent_span_id", None),
    5: ("name", None),
    9: ("attributes", KV),
    11: ("events", {2: ("name", None), 3: ("attributes", KV)}),
    13: ("links", {1: ("trace_id", None), 2: ("span_id", None), 3: ("trace_state", None), 4: ("attributes", KV)}),
    15: ("status", {2: ("message", None)}),
}
RECORD = {
    3: ("severity_text", None),
    5: ("body", "AnyValue"),
    6: ("attributes", KV),
    9: ("trace_id", None),
    10: ("span_id", None),
    12: ("event_name", None),
}
TRACES_SCHEMA = {
    1: ("resource_spans", {1: ("resource", RESOURCE), 2: ("scope_spans", {1: ("scope", SCOPE), 2: ("spans", SPAN)})})
}
LOGS_SCHEMA = {
    1: (
        "resource_logs",
        {1: ("resource", RESOURCE), 2: ("scope_logs", {1: ("scope", SCOPE), 2: ("log_records", RECORD)})},
    )
}
# What the README's Redaction section says redaction rewrites: values (attributes, bodies, at any
# depth), and bytes no schema names (an unknown field is kept by downstream parsers). Names, keys
# and ids are documented as not redacted; a length lie that moves a secret into one is not a leak
# of the redaction contract.
COVERED = ("value", "body", "unknown")


def locate(schema: dict, buf: bytes, offset: int) -> tuple[str, ...]:
    """The schema path of the field holding buf[offset]."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            _, i = read_varint(buf, i)
            continue
        if wire in (I64, I32):
            i += 8 if wire == I64 else 4
            continue
        if wire != LEN:
            return ("unknown",)  # a group: opaque to the check, so counted as covered bytes
        size, start = read_varint(buf, i)
        i = start + size
        if not start <= offset < i:
            continue
        name, child = schema.get(number, ("unknown", None))
        if child == "AnyValue":
            child = ANY_VALUE
        if child is None:
            return (name,)
        try:
            return (name, *locate(child, buf[start:i], offset - start))
        except ValueError:
            return (name, "unknown")
    return ("unknown",)


# --- mutations ----------------------------------------------------------------------------------


def truncation(rng: random.Random) -> bytes:
    raw = rng.choice((base_traces, base_logs))(rng)
    return raw[: rng.randrange(len(raw))]


def length_lie(rng: random.Random) -> bytes:
    raw = rng.choice((base_traces, base_logs))(rng)
    fields = [f for f in walk(raw) if f.wire == LEN]
    f = rng.choice(fields)
    size = f.end - f.value_at
    lie = max(0, size + rng.choice((-size, -1, 1, 7, 1 << 20, (1 << 31) - 1, (1 << 63))))
    return raw[: f.length_at] + varint(lie) + raw[f.value_at :]


def wrong_wire_type(rng: random.Random) -> bytes:
    raw = rng.choice((base_traces, base_logs))(rng)
    f = rng.choice(walk(raw))
    key, after = read_varint(raw, f.start)
    wire = rng.choice([w for w in (VARINT, I64, LEN, I32) if w != key & 7])
    return raw[: f.start] + varint(key & ~7 | wire) + raw[after:]


def trailing_unknown(rng: random.Random) -> bytes:
    # Valid protobuf: a field with another wire type than the schema's is an unknown field.
    raw = rng.choice((base_traces, base_logs))(rng)
    return raw + rng.choice((b"\x08\x01", tag(1, I32) + b"\0\0\0\0", tag(999, VARINT) + b"\x05"))


def groups(rng: random.Random) -> bytes:
    group = tag(77, SGROUP) + tag(1, VARINT) + b"\x01" + wrap(2, b"inside") + tag(77, EGROUP)
    if rng.random() < 0.5:
        return base_traces(rng) + group
    return traces_with_span_bytes([span_bytes_with(rng, group), base_span(rng).SerializeToString()])


def deep_nesting(rng: random.Random) -> bytes:
    depth = rng.choice((31, 32, 33, 47, 48, 49, 64, 200, 1000, 20000))
    value = nested_value(depth, rng.choice(("array", "kvlist")), b"deep leaf")
    attribute = wrap(9, wrap(1, b"app.deep") + wrap(2, value))  # Span.attributes
    return traces_with_span_bytes([span_bytes_with(rng, attribute), base_span(rng).SerializeToString()])


def repeated_fields(rng: random.Random) -> bytes:
    # protobuf merges: the last scalar wins, but every copy is on the wire and must be redacted.
    choice = rng.randrange(3)
    if choice == 0:  # two values in one KeyValue, the secret in the first
        kv = wrap(1, b"app.twice") + wrap(2, wrap(1, EMAIL)) + wrap(2, wrap(1, b"harmless"))
        extra = wrap(9, kv)
    elif choice == 1:  # two string values in one AnyValue
        kv = wrap(1, b"app.twice") + wrap(2, wrap(1, API_KEY) + wrap(1, b"harmless"))
        extra = wrap(9, kv)
    else:  # the span name twice
        extra = wrap(5, b"second name")
    return traces_with_span_bytes([span_bytes_with(rng, extra)])


def invalid_utf8(rng: random.Random) -> bytes:
    bad = rng.choice((b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"ok\x80"))
    where = rng.randrange(3)
    if where == 0:
        extra = wrap(5, bad)  # the name
    elif where == 1:
        extra = wrap(9, wrap(1, b"app.bad") + wrap(2, wrap(1, bad + EMAIL)))
    else:
        extra = wrap(9, wrap(1, bad) + wrap(2, wrap(1, b"v")))
    return traces_with_span_bytes([span_bytes_with(rng, extra)])


def many_attributes(rng: random.Random) -> bytes:
    count = rng.choice((1000, 100_000))
    attributes = b"".join(wrap(9, wrap(1, b"k%d" % i) + wrap(2, tag(3, VARINT) + varint(i))) for i in range(count))
    secret = wrap(9, wrap(1, b"app.mail") + wrap(2, wrap(1, EMAIL)))
    return traces_with_span_bytes([span_bytes_with(rng, attributes + secret)])


MUTATIONS: dict[str, Callable[[random.Random], bytes]] = {
    "truncation": truncation,
    "length_lie": length_lie,
    "wrong_wire_type": wrong_wire_type,
    "trailing_unknown": trailing_unknown,
    "groups": groups,
    "deep_nesting": deep_nesting,
    "repeated_fields": repeated_fields,
    "invalid_utf8": invalid_utf8,
    "many_attributes": many_attributes,
}


# --- the sidecar under test ---------------------------------------------------------------------


class Target:
    def __init__(self, native: bool) -> None:
        self.native = native
        self.sink = OtlpSink(parse=False).start()
        self.process = None
        self.start()

    def start(self) -> None:
        grpc_port, http_port = free_port(), free_port()
        http = f"127.0.0.1:{http_port}"
        self.process = start_sidecar(
            {
                "GENOPS_SERVER_LISTEN": f"127.0.0.1:{grpc_port}",
                "GENOPS_SERVER_WORKERS": "1",
                "GENOPS_DOWNSTREAM_ENDPOINT": self.sink.endpoint,
                "GENOPS_HTTP_LISTEN": http,
                "GENOPS_POLICY_STATE_BACKEND": "memory",
                "GENOPS_LOGGING_LEVEL": "error",
                "GENOPS_NATIVE_DECODE": "1" if self.native else "0",
            }
        )
        wait_ready(self.process, http)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")

    def ensure_alive(self) -> None:
        if self.process.poll() is not None:
            self.channel.close()
            self.start()

    def stop(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            terminate(self.process)
        self.sink.stop()


# Both decoders: the Rust scanner and the pure-Python path must hold the same contract.
@pytest.fixture(scope="module", params=["native", "python"])
def target(request):
    target = Target(native=request.param == "native")
    yield target
    target.stop()


def untouched_problems(method: str, sent: bytes, forwarded: bytes) -> list[str]:
    """Spans and records, and their attributes, with no secret and no genops.* key: byte-equal."""
    kind = trace_pb.ExportTraceServiceRequest if method == TRACES else logs_pb.ExportLogsServiceRequest
    try:
        before = kind.FromString(sent)
    except Exception:
        return []  # not protobuf a strict parser takes: only the secrets are checked
    try:
        after = kind.FromString(forwarded)
    except Exception as exc:
        return [f"forwarded bytes no longer parse: {exc}"]
    problems = []
    touched = keys_holding_secrets(sent)
    for old, new in zip(items(before), items(after), strict=False):
        kept = {n.SerializeToString() for n in new.attributes}
        for kv in old.attributes:
            encoded = kv.SerializeToString()
            if kv.key.startswith("genops.") or {kv.key, "*"} & touched or any(s in encoded for s in SECRETS):
                continue
            if encoded not in kept:
                problems.append(f"attribute {kv.key!r} changed")
        rest_old, rest_new = type(old)(), type(new)()
        rest_old.CopyFrom(old)
        rest_new.CopyFrom(new)
        for message in (rest_old, rest_new):
            message.ClearField("attributes")
            if message.DESCRIPTOR.name == "Span":
                message.ClearField("events")
            else:
                message.ClearField("body")
        encoded = rest_old.SerializeToString()
        if not any(s in encoded for s in SECRETS) and encoded != rest_new.SerializeToString():
            problems.append(f"{old.DESCRIPTOR.name} fields other than attributes changed")
    return problems


def keys_holding_secrets(raw: bytes) -> set[str]:
    """Keys of the KeyValues whose bytes hold a secret: in any copy of a repeated field too, which
    a parsed message no longer shows (the last copy wins), so redaction may rightly change them."""
    try:
        fields = walk(raw)
    except ValueError:
        return {"*"}
    keys = set()
    for f in fields:
        payload = raw[f.value_at : f.end]
        if f.wire != LEN or not payload.startswith(b"\n") or not any(s in payload for s in SECRETS):
            continue
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            size, start = read_varint(payload, 1)
            keys.add(payload[start : start + size].decode())
    return keys


def items(request) -> list:
    if hasattr(request, "resource_spans"):
        return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_fuzzed_requests_are_answered_ok_or_invalid_argument_and_leak_nothing(target, mutation):
    rng = random.Random(f"{SEED}-{mutation}")
    deadline = time.monotonic() + SECONDS / (2 * len(MUTATIONS))
    failures: list[str] = []
    cases = 0
    target.ensure_alive()
    while time.monotonic() < deadline and cases < 400:
        cases += 1
        raw = MUTATIONS[mutation](rng)
        # Log bases decode as traces and back: the method is the one the bytes were made for.
        method = LOGS if b"said hi" in raw and b"chat gpt-4o" not in raw else TRACES
        sink_name = SINK_LOGS if method == LOGS else SINK_TRACES
        seen = len(target.sink.raw_requests[sink_name])
        where = f"seed {SEED} {mutation} case {cases} ({'native' if target.native else 'python'})"
        try:
            target.channel.unary_unary(method)(raw, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
        if target.process.poll() is not None:
            failures.append(f"{where}: the sidecar died (exit {target.process.returncode})")
            target.ensure_alive()
            continue
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT):
            failures.append(f"{where}: answered {code.name}")
            continue
        if code != grpc.StatusCode.OK:
            continue
        forwarded = target.sink.raw_requests[sink_name][seen:]
        if len(forwarded) != 1:
            failures.append(f"{where}: OK but {len(forwarded)} requests forwarded")
            continue
        schema = LOGS_SCHEMA if method == LOGS else TRACES_SCHEMA
        for secret in SECRETS:
            at = forwarded[0].find(secret)
            while at >= 0:
                path = locate(schema, forwarded[0], at)
                if any(part in COVERED for part in path):
                    failures.append(f"{where}: {secret[:6]!r}... forwarded unredacted in {'.'.join(path)}")
                at = forwarded[0].find(secret, at + 1)
        failures.extend(f"{where}: {p}" for p in untouched_problems(method, raw, forwarded[0]))
    assert not failures, f"{len(failures)} of {cases} cases failed:\n" + "\n".join(failures[:15])


def test_a_secret_inside_an_unknown_field_is_not_forwarded():
    """A log record carrying an unknown length-delimited field (number 99) holding a key."""
    from prometheus_client import CollectorRegistry

    from processor.config import PolicyConfig, SidecarConfig
    from processor.core.pipeline import Pipeline
    from processor.observability import SidecarMetrics
    from processor.stages.assembly import build_stages
    from tests.support.otlp_builders import log_request

    request = log_request(["said hi"])
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    secret = b"sk-proj-" + b"Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1aC3eG5"
    raw_record = record.SerializeToString() + b"\x9a\x06" + bytes([len(secret)]) + secret
    rest = request.SerializeToString().replace(record.SerializeToString(), b"")
    assert rest  # the record's bytes sit once in the request
    stages = build_stages(SidecarConfig(policy=PolicyConfig(state_backend="memory")), CollectorRegistry())
    pipeline = Pipeline(stages, SidecarMetrics.create().pipeline)
    # Rebuild the request with the longer record (all enclosing lengths recomputed).
    from opentelemetry.proto.logs.v1 import logs_pb2

    with_unknown = logs_pb2.LogRecord.FromString(raw_record)
    request.resource_logs[0].scope_logs[0].log_records[0].CopyFrom(with_unknown)
    out = pipeline.process_logs(request.SerializeToString())
    assert secret in request.SerializeToString()
    assert secret not in out.payload
