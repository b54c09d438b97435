"""Every place a secret can ride in a span or log request is redacted, on both decode paths.

Issue 20 (places): span names (only the matched part masked), status messages, event names, link
attributes and scope attributes. Issue 17: a secret inside a field the OTLP schema does not
declare is not forwarded, while unknown fields without one go out as received.
"""

from __future__ import annotations

import polars as pl
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client import CollectorRegistry

from processor.config import PolicyConfig, SidecarConfig
from processor.core.decode import native_module
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.assembly import build_stages
from tests.support.otlp_builders import key_values, log_request, span, trace_request

EMAIL = "jane.roe@example.org"
OTHER_EMAIL = "r.smith+ops@corp.example.net"
API_KEY = "sk-proj-" + "Zq8wE4rT6yU2iO0pA5sD7fG9hJ1kL3zX5cV7bN9mQ2wE4rT6"
MASKED_EMAIL = "[REDACTED:email]"

PATHS = ["native", "python"]


@pytest.fixture(params=PATHS)
def pipeline(request, monkeypatch):
    if request.param == "native" and native_module() is None:
        pytest.skip("native module not built")
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1" if request.param == "native" else "0")
    stages = build_stages(SidecarConfig(policy=PolicyConfig(state_backend="memory")), CollectorRegistry())
    return Pipeline(stages, SidecarMetrics.create().pipeline)


def traces_out(pipeline: Pipeline, request: trace_pb.ExportTraceServiceRequest) -> trace_pb.ExportTraceServiceRequest:
    payload = pipeline.process_traces(request.SerializeToString()).payload
    return trace_pb.ExportTraceServiceRequest.FromString(payload)


def only_span(request: trace_pb.ExportTraceServiceRequest) -> trace_pb2.Span:
    return request.resource_spans[0].scope_spans[0].spans[0]


def test_a_span_name_keeps_everything_but_the_matched_part(pipeline):
    out = only_span(traces_out(pipeline, trace_request([span(name=f"GET /users/{EMAIL}/orders")])))
    assert out.name == f"GET /users/{MASKED_EMAIL}/orders"


def test_every_copy_of_a_repeated_span_name_is_redacted(pipeline):
    # A protobuf parser keeps only the last copy; the forwarded bytes must hold neither.
    raw = _traces([span(name=f"notify {OTHER_EMAIL}").SerializeToString() + _field(5, f"notify {EMAIL}".encode())])
    payload = pipeline.process_traces(raw).payload
    assert OTHER_EMAIL.encode() not in payload and EMAIL.encode() not in payload
    assert only_span(trace_pb.ExportTraceServiceRequest.FromString(payload)).name.startswith("notify ")


def test_a_status_message_is_redacted_and_its_code_kept(pipeline):
    item = span()
    item.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    item.status.message = f"ValueError: no account for {EMAIL} (key {API_KEY})"
    out = only_span(traces_out(pipeline, trace_request([item])))
    assert out.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert EMAIL not in out.status.message and API_KEY not in out.status.message
    assert out.status.message.startswith(f"ValueError: no account for {MASKED_EMAIL}")


def test_an_event_name_is_redacted_and_its_attributes_too(pipeline):
    item = span(events=[(f"sent mail to {EMAIL}", {"note": OTHER_EMAIL}), ("plain event", {"n": 1})])
    out = only_span(traces_out(pipeline, trace_request([item])))
    assert out.events[0].name == f"sent mail to {MASKED_EMAIL}"
    assert out.events[0].attributes[0].value.string_value == MASKED_EMAIL
    assert out.events[1].name == "plain event"
    assert out.events[1].time_unix_nano == item.events[1].time_unix_nano


def test_link_attributes_meet_value_rules_and_key_rules(pipeline):
    item = span()
    item.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8).attributes.extend(key_values({"peer": "plain"}))
    item.links.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8).attributes.extend(
        key_values({"user": EMAIL, "db.password": "hunter2", "n": 7})
    )
    out = only_span(traces_out(pipeline, trace_request([item])))
    first, second, third = out.links
    assert first == item.links[0]
    assert second.attributes[0].value.string_value == "plain"
    values = {kv.key: kv.value for kv in third.attributes}
    assert values["user"].string_value == MASKED_EMAIL
    assert values["db.password"].string_value == "[REDACTED:credential]"
    assert values["n"].int_value == 7
    assert (third.trace_id, third.span_id) == (b"\x03" * 16, b"\x04" * 8)


def test_scope_attributes_meet_value_rules_and_key_rules(pipeline):
    request = trace_request([span(), span(name="second")])
    scope = request.resource_spans[0].scope_spans[0].scope
    scope.attributes.extend(key_values({"owner": EMAIL, "service_api_key": "abc123", "team": "search"}))
    out = traces_out(pipeline, request)
    scope_out = out.resource_spans[0].scope_spans[0].scope
    values = {kv.key: kv.value.string_value for kv in scope_out.attributes}
    assert values == {"owner": MASKED_EMAIL, "service_api_key": "[REDACTED:credential]", "team": "search"}
    assert (scope_out.name, scope_out.version) == ("test.scope", "1.0")
    assert [s.name for s in out.resource_spans[0].scope_spans[0].spans] == ["chat gpt-4o", "second"]


def test_log_scope_attributes_are_redacted(pipeline):
    request = log_request(["said hi"])
    request.resource_logs[0].scope_logs[0].scope.CopyFrom(
        common_pb2.InstrumentationScope(name="app", attributes=key_values({"contact": EMAIL}))
    )
    payload = pipeline.process_logs(request.SerializeToString()).payload
    out = logs_pb.ExportLogsServiceRequest.FromString(payload)
    scope_out = out.resource_logs[0].scope_logs[0].scope
    assert scope_out.attributes[0].value.string_value == MASKED_EMAIL
    assert out.resource_logs[0].scope_logs[0].log_records[0].body.string_value == "said hi"


def test_a_log_record_event_name_is_redacted(pipeline):
    request = log_request(["said hi", "said bye"])
    records = request.resource_logs[0].scope_logs[0].log_records
    records[0].event_name = f"mail sent to {EMAIL}"
    records[1].event_name = "mail.sent"
    payload = pipeline.process_logs(request.SerializeToString()).payload
    out = logs_pb.ExportLogsServiceRequest.FromString(payload).resource_logs[0].scope_logs[0].log_records
    assert [r.event_name for r in out] == [f"mail sent to {MASKED_EMAIL}", "mail.sent"]
    assert out[1] == records[1]


def test_a_secret_in_one_place_changes_no_other_span(pipeline):
    clean = span(name="clean span", events=[("clean event", {"k": "v"})])
    dirty = span(name=f"for {EMAIL}")
    request = trace_request([clean, dirty])
    out = traces_out(pipeline, request)
    spans = out.resource_spans[0].scope_spans[0].spans
    # The clean span goes out as it came; only the summary attributes are new on the dirty one.
    assert spans[0] == clean
    assert spans[1].name == f"for {MASKED_EMAIL}"
    summary = {kv.key for kv in spans[1].attributes}
    assert "genops.redaction.count" in summary


def test_the_summary_names_the_place(pipeline):
    item = span(name=f"for {EMAIL}", events=[(f"to {EMAIL}", {})])
    item.status.message = EMAIL
    out = only_span(traces_out(pipeline, trace_request([item])))
    values = {kv.key: kv.value for kv in out.attributes}
    assert values["genops.redaction.count"].int_value == 3
    keys = [v.string_value for v in values["genops.redaction.keys"].array_value.values]
    assert keys == ["event_name", "span_name", "status"]


# --- unknown fields (issue 17) ------------------------------------------------------------------


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _unknown(number: int, payload: bytes) -> bytes:
    return _field(number, payload)


def _span_with(extra: bytes, name: str = "chat gpt-4o") -> bytes:
    return span(name=name).SerializeToString() + extra


def _traces(span_bytes: list[bytes], resource: bytes = b"", scope_attributes: dict | None = None) -> bytes:
    instrumentation = common_pb2.InstrumentationScope(name="s", attributes=key_values(scope_attributes or {}))
    scope = trace_pb2.ScopeSpans(scope=instrumentation).SerializeToString()
    scope += b"".join(_field(2, s) for s in span_bytes)
    return _field(1, _field(1, resource) + _field(2, scope))


def _key_value(extra: bytes = b"", value: bytes | None = None) -> bytes:
    return _field(1, b"note") + _field(2, _field(1, b"ok") if value is None else value) + extra


def _any_value_with_unknown(text: str, unknown: bytes) -> bytes:
    return _field(1, text.encode()) + unknown


@pytest.mark.parametrize(
    "where",
    ["span", "span event", "link", "status", "key value", "any value", "deep in an array", "resource", "request"],
)
def test_an_unknown_field_holding_a_secret_is_dropped(pipeline, where):
    secret = _unknown(99, f"contact {EMAIL} token {API_KEY}".encode())
    kv = _key_value
    array = _field(5, _field(1, _field(5, _field(1, _any_value_with_unknown("x", secret)))))
    span_extra = {
        "span": secret,
        "span event": _field(11, _field(2, b"ev") + secret),
        "link": _field(13, _field(1, b"\x01" * 16) + _field(4, kv()) + secret),
        "status": _field(15, _field(2, b"boom") + secret),
        "key value": _field(9, kv(secret)),
        "any value": _field(9, kv(value=_any_value_with_unknown("ok", secret))),
        "deep in an array": _field(9, kv(value=array)),
    }.get(where, b"")
    resource = _field(1, kv()) + (secret if where == "resource" else b"")
    raw = _traces([_span_with(span_extra), _span_with(b"", name="other")], resource)
    if where == "request":
        raw += secret
    before = trace_pb.ExportTraceServiceRequest.FromString(raw)
    payload = pipeline.process_traces(raw).payload
    assert EMAIL.encode() not in payload and API_KEY.encode() not in payload
    after = trace_pb.ExportTraceServiceRequest.FromString(payload)
    # Only the unknown field is gone: every declared field is as it was.
    _drop_unknown(before)
    _drop_unknown(after)
    for message in (before, after):
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    for kv_out in list(s.attributes):
                        if kv_out.key.startswith("genops.redaction."):
                            s.attributes.remove(kv_out)
    assert after == before


def _drop_unknown(message) -> None:
    message.DiscardUnknownFields()


def test_unknown_fields_without_a_secret_go_out_as_received(pipeline):
    # Fields of a newer OTLP version (or a vendor's) with nothing to redact are forwarded whole,
    # even in a span another rule changes.
    harmless = _unknown(99, b"future field") + _unknown(120, b"\x08\x01")
    raw = _traces([_span_with(harmless, name=f"for {EMAIL}"), _span_with(harmless)])
    payload = pipeline.process_traces(raw).payload
    assert EMAIL.encode() not in payload
    assert payload.count(harmless) == 2
    # Nothing to redact at all: the request is forwarded byte for byte.
    untouched = _traces([_span_with(harmless)])
    assert pipeline.process_traces(untouched).payload == untouched


@pytest.mark.parametrize("nested", [False, True], ids=["as the field", "in a message inside it"])
def test_an_unknown_field_in_a_log_record_is_dropped(pipeline, nested):
    # The key alone (56 bytes: its length byte is "8", glued to "sk-" when read as raw bytes).
    request = log_request(["said hi"])
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    secret = _unknown(99, _field(3, API_KEY.encode()) if nested else API_KEY.encode())
    raw_record = record.SerializeToString() + secret
    scope = _field(2, raw_record)
    resource = request.resource_logs[0].resource.SerializeToString()
    raw = _field(1, _field(1, resource) + _field(2, scope))
    payload = pipeline.process_logs(raw).payload
    assert API_KEY.encode() not in payload
    out = logs_pb.ExportLogsServiceRequest.FromString(payload)
    assert out.resource_logs[0].scope_logs[0].log_records[0].body.string_value == "said hi"


def test_both_decoders_list_the_same_values_in_every_place(monkeypatch):
    if native_module() is None:
        pytest.skip("native module not built")
    from processor.core.decode import WantedKeys, decode_traces

    item = span(name=f"to {EMAIL}", attributes={"a": EMAIL}, events=[(f"ev {EMAIL}", {"k": "v"})])
    item.status.message = "failed: \xff-free text"
    item.links[0].attributes.extend(key_values({"l1": "a", "l2": ["x", 1]}))
    item.links.add().attributes.extend(key_values({"l3": EMAIL}))
    group = bytes([0x9B, 0x06]) + _field(1, b"in a group") + bytes([0x9C, 0x06])  # field 99
    raw_span = item.SerializeToString() + _unknown(98, _field(1, API_KEY.encode())) + group
    resource = _field(1, _key_value(_unknown(97, b"kv extra")))
    raw = _traces([raw_span, span(name="plain").SerializeToString()], resource, {"s1": EMAIL, "s2": 2})
    rows = {}
    for path in ("1", "0"):
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", path)
        values = decode_traces(raw, WantedKeys(values=True)).string_values()
        rows[path] = values.select("scope", "owner", "position", "row", "key", "value", "kind").sort(pl.all()).rows()
    assert rows["1"] == rows["0"]
    scopes = {row[0] for row in rows["1"]}
    assert scopes >= {"span_name", "status", "event_name", "link", "scope", "unknown", "attribute", "event"}
    unknown = [row for row in rows["1"] if row[0] == "unknown"]
    assert len(unknown) == 3
    assert any(API_KEY in row[5].split("\n") for row in unknown)
