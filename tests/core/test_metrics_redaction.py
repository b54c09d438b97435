"""Metrics export requests meet the redaction rules (issue 20: data point attributes of every
metric type, exemplar filtered attributes, resource and scope attributes), on both paths and
through the real gRPC receiver; a request with nothing to redact goes out byte for byte."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from prometheus_client import CollectorRegistry

from processor.config import PolicyConfig, SidecarConfig
from processor.core.decode import native_module
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.assembly import build_stages
from tests.support.otlp_builders import key_values
from tests.support.otlp_sink import OtlpSink
from tests.support.sidecar_runner import RunningSidecar

EMAIL = "pat.lee@example.com"
MASKED = "[REDACTED:email]"
METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
SINK_METRICS = "opentelemetry.proto.collector.metrics.v1.MetricsService"


def stages():
    return build_stages(SidecarConfig(policy=PolicyConfig(state_backend="memory")), CollectorRegistry())


@pytest.fixture(params=["native", "python"])
def pipeline(request, monkeypatch):
    if request.param == "native" and native_module() is None:
        pytest.skip("native module not built")
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1" if request.param == "native" else "0")
    return Pipeline(stages(), SidecarMetrics.create().pipeline)


def attributes(user: str) -> list[common_pb2.KeyValue]:
    return key_values({"user": user, "route": "/checkout", "db.password": "hunter2", "n": 3})


def exemplar(user: str) -> metrics_pb2.Exemplar:
    return metrics_pb2.Exemplar(as_double=1.5, time_unix_nano=7, filtered_attributes=key_values({"who": user}))


def every_metric_type(user: str) -> metrics_pb.ExportMetricsServiceRequest:
    point = {"attributes": attributes(user), "time_unix_nano": 9}
    metrics = [
        metrics_pb2.Metric(
            name="g",
            gauge=metrics_pb2.Gauge(
                data_points=[metrics_pb2.NumberDataPoint(as_int=4, exemplars=[exemplar(user)], **point)]
            ),
        ),
        metrics_pb2.Metric(
            name="s",
            sum=metrics_pb2.Sum(
                is_monotonic=True,
                aggregation_temporality=2,
                data_points=[metrics_pb2.NumberDataPoint(as_double=2.5, exemplars=[exemplar(user)], **point)],
            ),
        ),
        metrics_pb2.Metric(
            name="h",
            histogram=metrics_pb2.Histogram(
                data_points=[
                    metrics_pb2.HistogramDataPoint(
                        count=2, bucket_counts=[1, 1], explicit_bounds=[1.0], exemplars=[exemplar(user)], **point
                    )
                ]
            ),
        ),
        metrics_pb2.Metric(
            name="e",
            exponential_histogram=metrics_pb2.ExponentialHistogram(
                data_points=[
                    metrics_pb2.ExponentialHistogramDataPoint(count=1, scale=2, exemplars=[exemplar(user)], **point)
                ]
            ),
        ),
        metrics_pb2.Metric(
            name="q",
            summary=metrics_pb2.Summary(data_points=[metrics_pb2.SummaryDataPoint(count=1, sum=2.0, **point)]),
        ),
    ]
    return metrics_pb.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=resource_pb2.Resource(attributes=key_values({"service.name": "shop", "owner": user})),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(
                        scope=common_pb2.InstrumentationScope(name="m", attributes=key_values({"contact": user})),
                        metrics=metrics,
                    )
                ],
            )
        ]
    )


def point_lists(request: metrics_pb.ExportMetricsServiceRequest) -> list:
    out = []
    for metric in request.resource_metrics[0].scope_metrics[0].metrics:
        for point in getattr(metric, metric.WhichOneof("data")).data_points:
            out.append(point.attributes)
            out.extend(e.filtered_attributes for e in getattr(point, "exemplars", ()))
    return out


def test_every_data_point_exemplar_resource_and_scope_attribute_is_redacted(pipeline):
    request = every_metric_type(EMAIL)
    payload = pipeline.process("metrics", request.SerializeToString()).payload
    assert EMAIL.encode() not in payload
    out = metrics_pb.ExportMetricsServiceRequest.FromString(payload)
    lists = point_lists(out)
    assert len(lists) == 9  # five points, four of them with an exemplar
    for attrs in lists:
        values = {kv.key: kv.value for kv in attrs}
        if "who" in values:
            assert values["who"].string_value == MASKED
            continue
        assert values["user"].string_value == MASKED
        assert values["db.password"].string_value == "[REDACTED:credential]"
        assert values["route"].string_value == "/checkout" and values["n"].int_value == 3
    resource = {kv.key: kv.value.string_value for kv in out.resource_metrics[0].resource.attributes}
    assert resource == {"service.name": "shop", "owner": MASKED}
    scope = out.resource_metrics[0].scope_metrics[0].scope.attributes[0]
    assert scope.value.string_value == MASKED
    # Everything but the masked values is as it was.
    expected = every_metric_type(MASKED)
    for attrs in point_lists(expected):
        for kv in attrs:
            if kv.key == "db.password":
                kv.value.string_value = "[REDACTED:credential]"
    assert out == expected


def test_a_metrics_request_with_nothing_to_redact_goes_out_as_received(pipeline):
    raw = every_metric_type("anonymous").SerializeToString()
    raw = raw.replace(b"hunter2", b"*******")  # a password key is masked whatever its value
    request = metrics_pb.ExportMetricsServiceRequest.FromString(raw)
    for attrs in point_lists(request):
        for kv in list(attrs):
            if kv.key == "db.password":
                attrs.remove(kv)
    raw = request.SerializeToString()
    assert pipeline.process("metrics", raw).payload == raw


def test_metrics_through_the_receiver_reach_the_backend_redacted():
    sink = OtlpSink().start()
    sidecar = RunningSidecar(sink.endpoint, stages=stages()).start()
    try:
        request = every_metric_type(EMAIL)
        with sidecar.channel() as channel:
            channel.unary_unary(
                METRICS_METHOD,
                request_serializer=metrics_pb.ExportMetricsServiceRequest.SerializeToString,
                response_deserializer=metrics_pb.ExportMetricsServiceResponse.FromString,
            )(request, timeout=10)
        (received,) = sink.raw_requests[SINK_METRICS]
        assert EMAIL.encode() not in received
        assert MASKED.encode() in received
    finally:
        sidecar.stop()
        sink.stop()
