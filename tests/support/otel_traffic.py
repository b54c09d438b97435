"""Telemetry sent the way applications send it, plus a record of what was sent for delivery assertions."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.support.otlp_sink import OtlpSink

GEN_AI_EVERY = 20


def send_spans_with_sdk(endpoint: str, count: int, service_name: str = "e2e-app") -> dict[str, str]:
    """Emit `count` finished spans through the OTel SDK's OTLP/gRPC exporter; returns span_id hex -> name.

    Every GEN_AI_EVERY-th span carries gen_ai.* attributes so the sidecar's AI code paths see real traffic.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=64, schedule_delay_millis=50))
    tracer = provider.get_tracer("genops.e2e")
    sent: dict[str, str] = {}
    for i in range(count):
        name = f"e2e-span-{i}"
        with tracer.start_as_current_span(name) as span:
            if i % GEN_AI_EVERY == 0:
                span.set_attribute("gen_ai.system", "openai")
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
                span.set_attribute("gen_ai.usage.input_tokens", 100 + i)
                span.set_attribute("gen_ai.usage.output_tokens", 20 + i)
            else:
                span.set_attribute("http.request.method", "GET")
            sent[format(span.get_span_context().span_id, "016x")] = name
    # force_flush reports False when the export failed (receiver down), which callers may expect.
    provider.force_flush(timeout_millis=15000)
    provider.shutdown()
    return sent


def received_span_ids(sink: OtlpSink) -> list[str]:
    return [received.span.span_id.hex() for received in sink.spans()]


def wait_for_span_ids(sink: OtlpSink, expected: set[str], timeout: float) -> list[str]:
    """All span ids the sink has, once every expected id is among them or the timeout passes."""
    return wait_for_items(lambda: received_span_ids(sink), expected, timeout)


def _resource(service_name: str) -> resource_pb2.Resource:
    return resource_pb2.Resource(
        attributes=[common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=service_name))]
    )


def send_logs(endpoint: str, count: int, service_name: str = "e2e-app") -> set[str]:
    """Export `count` log records in one OTLP/gRPC request; returns their bodies."""
    now = time.time_ns()
    bodies = [f"e2e-log-{i}" for i in range(count)]
    records = [
        logs_pb2.LogRecord(
            time_unix_nano=now + i,
            observed_time_unix_nano=now + i,
            severity_number=logs_pb2.SEVERITY_NUMBER_INFO,
            severity_text="INFO",
            body=common_pb2.AnyValue(string_value=body),
        )
        for i, body in enumerate(bodies)
    ]
    request = logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=_resource(service_name),
                scope_logs=[
                    logs_pb2.ScopeLogs(scope=common_pb2.InstrumentationScope(name="genops.e2e"), log_records=records)
                ],
            )
        ]
    )
    with grpc.insecure_channel(endpoint) as channel:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(request, timeout=10)
    return set(bodies)


def received_log_bodies(sink: OtlpSink) -> list[str]:
    return [
        record.body.string_value
        for request in sink.log_requests()
        for resource_logs in request.resource_logs
        for scope_logs in resource_logs.scope_logs
        for record in scope_logs.log_records
    ]


def send_gauges(endpoint: str, count: int, service_name: str = "e2e-app") -> set[str]:
    """Export `count` distinct gauge metrics in one OTLP/gRPC request; returns their names."""
    now = time.time_ns()
    names = [f"e2e.gauge.{i}" for i in range(count)]
    metrics = [
        metrics_pb2.Metric(
            name=name,
            unit="1",
            gauge=metrics_pb2.Gauge(data_points=[metrics_pb2.NumberDataPoint(time_unix_nano=now, as_int=i)]),
        )
        for i, name in enumerate(names)
    ]
    request = metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=_resource(service_name),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(scope=common_pb2.InstrumentationScope(name="genops.e2e"), metrics=metrics)
                ],
            )
        ]
    )
    with grpc.insecure_channel(endpoint) as channel:
        metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(request, timeout=10)
    return set(names)


def received_metric_names(sink: OtlpSink) -> list[str]:
    return [
        metric.name
        for request in sink.metric_requests()
        for resource_metrics in request.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    ]


def wait_for_items(read: Callable[[], list[str]], expected: set[str], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        items = read()
        if expected <= set(items) or time.monotonic() > deadline:
            return items
        time.sleep(0.1)
