"""The whole redaction corpus goes round the real Collector (shipped config) and the sidecar with its
default rules, as traces, logs and metrics: no secret byte reaches the backend, and look-alikes
arrive as sent. Each secret also rides as a SQL literal in `db.query.text` and as a query value in
`url.full`, which the default sanitisers and the value rules after them must both leave clean."""

from __future__ import annotations

import time

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from tests.support.collector_harness import sidecar_loop
from tests.support.otel_traffic import received_log_bodies, wait_for_items
from tests.support.otlp_builders import key_values, log_request, span, trace_request
from tests.support.otlp_sink import OtlpSink, attributes_to_dict
from tests.support.redaction_corpus import corpus

pytestmark = pytest.mark.e2e

TRACES = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS = "opentelemetry.proto.collector.logs.v1.LogsService"
METRICS = "opentelemetry.proto.collector.metrics.v1.MetricsService"
# The bound on look-alikes changed on the way.
FALSE_POSITIVE_RATE = 0.01


def secret_parts(name: str, secret: str) -> list[str]:
    """What must not arrive: the secret, and for URL credentials the user:password in it."""
    if name == "url_credentials":
        return [secret, secret.split("://", 1)[1].rsplit("@", 1)[0]]
    return [secret]


def metrics_request(cases: dict[str, str]) -> metrics_pb.ExportMetricsServiceRequest:
    """One gauge data point per case: the case name in `case`, its text in `note`."""
    points = [
        metrics_pb2.NumberDataPoint(as_int=1, time_unix_nano=1, attributes=key_values({"case": name, "note": text}))
        for name, text in cases.items()
    ]
    gauge = metrics_pb2.Metric(name="corpus.gauge", gauge=metrics_pb2.Gauge(data_points=points))
    return metrics_pb.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=resource_pb2.Resource(attributes=key_values({"service.name": "corpus"})),
                scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[gauge])],
            )
        ]
    )


def received_points(sink: OtlpSink) -> dict[str, tuple[str, bytes]]:
    """Per case: the `note` that arrived and the data point's bytes."""
    out: dict[str, tuple[str, bytes]] = {}
    for request in sink.metric_requests():
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.gauge.data_points:
                        attributes = attributes_to_dict(point.attributes)
                        out[str(attributes["case"])] = (str(attributes.get("note")), point.SerializeToString())
    return out


def test_no_corpus_secret_reaches_the_backend_and_look_alikes_arrive_as_sent(sink: OtlpSink):
    data = corpus()
    positives = [(name, text) for name, d in data.items() for text in d["positives"]]
    near_misses = [text for d in data.values() for text in d["near_misses"]]
    # The secrets ride on database spans, whose names the SQL sanitiser reads: `secret-0` would lose
    # its number (`secret-?`), `secret_0` is one identifier.
    cases = {f"secret_{i}": text for i, (_, text) in enumerate(positives)}
    cases.update({f"look-alike-{i}": text for i, text in enumerate(near_misses)})
    secrets = {f"secret_{i}": text for i, (_, text) in enumerate(positives)}
    traces = trace_request(
        [
            span(
                name=name,
                attributes={
                    "note": text,
                    **(
                        {
                            "db.query.text": f"SELECT * FROM t WHERE v = '{text}'",
                            "url.full": f"https://app.example/p?v={text}",
                        }
                        if name in secrets
                        else {}
                    ),
                },
            )
            for name, text in cases.items()
        ]
    )
    logs = log_request([f"{name} {text}" for name, text in cases.items()])
    metrics = metrics_request(cases)
    with sidecar_loop(sink) as loop, grpc.insecure_channel(loop.apps_endpoint) as channel:
        channel.unary_unary(
            f"/{TRACES}/Export",
            request_serializer=trace_pb.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_pb.ExportTraceServiceResponse.FromString,
        )(traces, timeout=10)
        channel.unary_unary(
            f"/{LOGS}/Export",
            request_serializer=logs_pb.ExportLogsServiceRequest.SerializeToString,
            response_deserializer=logs_pb.ExportLogsServiceResponse.FromString,
        )(logs, timeout=10)
        channel.unary_unary(
            f"/{METRICS}/Export",
            request_serializer=metrics_pb.ExportMetricsServiceRequest.SerializeToString,
            response_deserializer=metrics_pb.ExportMetricsServiceResponse.FromString,
        )(metrics, timeout=10)
        wait_for_items(lambda: [r.span.name for r in sink.spans()], set(cases), 60.0)
        deadline = time.monotonic() + 60
        while len(received_log_bodies(sink)) < len(cases) and time.monotonic() < deadline:
            time.sleep(0.1)
        wait_for_items(lambda: list(received_points(sink)), set(cases), 60.0)
    # Read per span and per record: a look-alike may hold a secret inside it ("...EXAMPLEX").
    raw_spans = {r.span.name: r.span.SerializeToString() for r in sink.spans()}
    bodies = set(received_log_bodies(sink))
    raw_bodies = {body.split(" ", 1)[0]: body.encode() for body in bodies}
    points = received_points(sink)
    leaked = [
        (name, part)
        for i, (name, secret) in enumerate(positives)
        for part in secret_parts(name, secret)
        if part.encode() in raw_spans[f"secret_{i}"]
        or part.encode() in raw_bodies[f"secret_{i}"]
        or part.encode() in points[f"secret_{i}"][1]
    ]
    assert leaked == []
    arrived = {r.span.name: r.attributes["note"] for r in sink.spans()}
    assert len(arrived) == len(cases) and len(bodies) == len(cases) and len(points) == len(cases)
    changed = [
        text
        for i, text in enumerate(near_misses)
        if arrived[f"look-alike-{i}"] != text
        or f"look-alike-{i} {text}" not in bodies
        or points[f"look-alike-{i}"][0] != text
    ]
    assert len(changed) <= FALSE_POSITIVE_RATE * len(near_misses), changed
