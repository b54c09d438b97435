"""The OTLP receive → process → forward loop, over real gRPC on 127.0.0.1."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import polars as pl
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.metrics.v1 import metrics_pb2

from processor.config import ServerConfig
from processor.core.contract import PROCESSING_ERROR_KEY, BatchChanges
from processor.core.decode import TelemetryBatch
from tests.support.collector_harness import free_port, wait_until
from tests.support.otlp_builders import log_request, span, trace_request
from tests.support.otlp_export import TRACE_METHOD, export_traces
from tests.support.sidecar_runner import RunningSidecar
from tests.support.stand_in_stages import TagStage


@pytest.fixture
def make_sidecar(sink):
    started: list[RunningSidecar] = []

    def make(**kwargs) -> RunningSidecar:
        sidecar = RunningSidecar(sink.endpoint, **kwargs).start()
        started.append(sidecar)
        return sidecar

    yield make
    for sidecar in started:
        sidecar.stop()


def test_spans_arrive_downstream_with_every_field_intact(sink, make_sidecar):
    sidecar = make_sidecar()
    request = trace_request([span(attributes={"gen_ai.request.model": "gpt-4o"}) for _ in range(3)])
    with sidecar.channel() as channel:
        export_traces(channel, request)
    assert sink.trace_requests() == [request]


def test_stage_changes_are_written_and_everything_else_is_kept(sink, make_sidecar):
    sidecar = make_sidecar(stages=[TagStage()])
    request = trace_request([span(attributes={"gen_ai.request.model": "gpt-4o", "n": 1}) for _ in range(2)])
    with sidecar.channel() as channel:
        export_traces(channel, request)
    (received,) = sink.trace_requests()
    got = received.resource_spans[0].scope_spans[0].spans
    sent = request.resource_spans[0].scope_spans[0].spans
    for index, (out, original) in enumerate(zip(got, sent, strict=True)):
        assert out.attributes[-1].key == "genops.test.tag"
        assert out.attributes[-1].value.string_value == f"seen-{index}"
        del out.attributes[-1]
        assert out == original
    assert received.resource_spans[0].scope_spans[0].scope.name == "test.scope"


def test_gzip_compressed_requests_are_accepted(sink, make_sidecar):
    sidecar = make_sidecar()
    request = trace_request([span()])
    with grpc.insecure_channel(sidecar.endpoint, compression=grpc.Compression.Gzip) as channel:
        export_traces(channel, request)
    assert sink.trace_requests() == [request]


def test_malformed_protobuf_gets_invalid_argument_and_the_server_keeps_serving(sink, make_sidecar):
    sidecar = make_sidecar()
    with sidecar.channel() as channel:
        raw = channel.unary_unary(TRACE_METHOD, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as failure:
            raw(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=10)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        export_traces(channel, trace_request([span()]))
    assert len(sink.spans()) == 1
    assert sidecar.metric_value("genops_sidecar_malformed_requests_total", {"signal": "traces"}) == 1


def test_unavailable_downstream_is_reported_upstream_and_nothing_is_acknowledged(sink, make_sidecar):
    sidecar = make_sidecar()
    sink.fail_code = grpc.StatusCode.UNAVAILABLE
    with sidecar.channel() as channel, pytest.raises(grpc.RpcError) as failure:
        export_traces(channel, trace_request([span()]))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sidecar.metric_value("genops_sidecar_forward_errors_total", {"signal": "traces", "code": "UNAVAILABLE"}) == 1


def test_unreachable_downstream_gives_unavailable():
    # A port that was free a moment ago: nothing listens there.
    sidecar = RunningSidecar(f"127.0.0.1:{free_port()}").start()
    try:
        with sidecar.channel() as channel, pytest.raises(grpc.RpcError) as failure:
            export_traces(channel, trace_request([span()]))
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        sidecar.stop()


def test_downstream_partial_success_is_passed_through(sink, make_sidecar):
    partial = trace_pb.ExportTraceServiceResponse(
        partial_success=trace_pb.ExportTracePartialSuccess(rejected_spans=2, error_message="2 spans too old")
    )
    sink.response_override = partial.SerializeToString()
    sidecar = make_sidecar()
    with sidecar.channel() as channel:
        response = export_traces(channel, trace_request([span(), span()]))
    assert response == partial


def test_a_failing_stage_does_not_lose_the_batch_and_later_stages_still_run(sink, make_sidecar):
    sidecar = make_sidecar(stages=[TagStage("cost", "a", fail=True), TagStage("redaction", "b")])
    request = trace_request([span(), span()])
    with sidecar.channel() as channel:
        export_traces(channel, request)
    spans = sink.spans()
    assert len(spans) == 2
    for received in spans:
        attributes = received.attributes
        assert "a" not in attributes
        assert attributes["b"].startswith("seen-")
        assert attributes[PROCESSING_ERROR_KEY] == "cost: RuntimeError: pricing table exploded"
    assert sidecar.metric_value("genops_sidecar_stage_errors_total", {"stage": "cost", "signal": "traces"}) == 1


def test_logs_are_processed_and_metrics_pass_through_untouched(sink, make_sidecar):
    sidecar = make_sidecar(stages=[TagStage()])
    logs = log_request(["user said hi"])
    metrics = metrics_pb.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(
                        metrics=[metrics_pb2.Metric(name="x", sum=metrics_pb2.Sum(is_monotonic=True))]
                    )
                ]
            )
        ]
    )
    with sidecar.channel() as channel:
        channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            request_serializer=logs_pb.ExportLogsServiceRequest.SerializeToString,
            response_deserializer=logs_pb.ExportLogsServiceResponse.FromString,
        )(logs, timeout=10)
        channel.unary_unary(
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            request_serializer=metrics_pb.ExportMetricsServiceRequest.SerializeToString,
            response_deserializer=metrics_pb.ExportMetricsServiceResponse.FromString,
        )(metrics, timeout=10)
    (got_logs,) = sink.log_requests()
    record = got_logs.resource_logs[0].scope_logs[0].log_records[0]
    assert record.body.string_value == "user said hi"
    assert record.attributes[-1].key == "genops.test.tag"
    assert sink.raw_requests["opentelemetry.proto.collector.metrics.v1.MetricsService"] == [metrics.SerializeToString()]


def test_requests_beyond_the_inflight_limit_get_unavailable(sink, make_sidecar):
    sink.delay_seconds = 1.0
    sidecar = make_sidecar(server=ServerConfig(listen="127.0.0.1:0", max_inflight_requests=1))
    with sidecar.channel() as channel, ThreadPoolExecutor(2) as pool:
        first = pool.submit(export_traces, channel, trace_request([span()]))
        wait_until(lambda: sidecar.worker.service.inflight == 1, 5, "a request in flight")
        with pytest.raises(grpc.RpcError) as failure:
            export_traces(channel, trace_request([span()]))
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        first.result(10)
    assert len(sink.spans()) == 1


def test_shutdown_finishes_in_flight_requests(sink):
    sink.delay_seconds = 1.0
    sidecar = RunningSidecar(sink.endpoint).start()
    with sidecar.channel() as channel, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(export_traces, channel, trace_request([span()]))
        wait_until(lambda: sidecar.worker.service.inflight == 1, 5, "a request in flight")
        stopped = threading.Thread(target=sidecar.stop)
        stopped.start()
        pending.result(10)
        stopped.join(10)
    assert len(sink.spans()) == 1


class UnwritableStage(TagStage):
    """Returns a value no OTLP attribute can hold, so writing the changes back fails."""

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        return BatchChanges(set_attributes={self.key: pl.Series([{"a": 1}] * len(batch), dtype=pl.Object)})


def test_a_batch_whose_changes_cannot_be_written_goes_out_as_received(sink, make_sidecar):
    sidecar = make_sidecar(stages=[UnwritableStage()])
    request = trace_request([span(), span()])
    with sidecar.channel() as channel:
        export_traces(channel, request)
    assert sink.trace_requests() == [request]
    assert sidecar.metric_value("genops_sidecar_stage_errors_total", {"stage": "encode", "signal": "traces"}) == 1
