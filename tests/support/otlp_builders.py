"""Builds OTLP export requests with the full opentelemetry-proto types, as an SDK would send them."""

from __future__ import annotations

import os

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def any_value(value: object) -> common_pb2.AnyValue:
    out = common_pb2.AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, list):
        out.array_value.values.extend(any_value(v) for v in value)
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(key_values(value))
    else:
        raise TypeError(type(value))
    return out


def key_values(attributes: dict[str, object]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def span(
    name: str = "chat gpt-4o",
    attributes: dict[str, object] | None = None,
    start_time_unix_nano: int = 1_760_000_000_000_000_000,
    events: list[tuple[str, dict[str, object]]] | None = None,
) -> trace_pb2.Span:
    return trace_pb2.Span(
        trace_id=os.urandom(16),
        span_id=os.urandom(8),
        parent_span_id=os.urandom(8),
        trace_state="vendor=1",
        flags=1,
        name=name,
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start_time_unix_nano,
        end_time_unix_nano=start_time_unix_nano + 1_500_000,
        attributes=key_values(attributes or {}),
        dropped_attributes_count=2,
        events=[
            trace_pb2.Span.Event(time_unix_nano=start_time_unix_nano + 1, name=n, attributes=key_values(a))
            for n, a in (events or [])
        ],
        links=[trace_pb2.Span.Link(trace_id=os.urandom(16), span_id=os.urandom(8))],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK, message="fine"),
    )


def trace_request(
    spans: list[trace_pb2.Span], resource: dict[str, object] | None = None
) -> trace_pb.ExportTraceServiceRequest:
    return trace_pb.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=key_values(resource or {"service.name": "chat-api"})),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(name="test.scope", version="1.0"),
                        spans=spans,
                        schema_url="https://opentelemetry.io/schemas/1.37.0",
                    )
                ],
                schema_url="https://opentelemetry.io/schemas/1.37.0",
            )
        ]
    )


def log_request(
    bodies: list[object], attributes: dict[str, object] | None = None, resource: dict[str, object] | None = None
) -> logs_pb.ExportLogsServiceRequest:
    records = [
        logs_pb2.LogRecord(
            time_unix_nano=1_760_000_000_000_000_000,
            severity_number=logs_pb2.SEVERITY_NUMBER_INFO,
            severity_text="INFO",
            body=any_value(body),
            attributes=key_values(attributes or {}),
            trace_id=os.urandom(16),
            span_id=os.urandom(8),
        )
        for body in bodies
    ]
    return logs_pb.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=resource_pb2.Resource(attributes=key_values(resource or {"service.name": "chat-api"})),
                scope_logs=[logs_pb2.ScopeLogs(log_records=records)],
            )
        ]
    )
