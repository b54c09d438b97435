"""Telemetry from an app goes round the shipped Collector config, through the sidecar, to the backend.

The Collector is the real otelcol-genops binary running collector-config/otelcol-sidecar.yaml; only its
addresses and retry timings are changed, through the env variables the config reads. The backend is an
OtlpSink, a real gRPC server.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from tests.support.collector_harness import (
    free_port,
    running_collector_for,
    running_sidecar,
    sidecar_loop,
)
from tests.support.otel_traffic import (
    received_log_bodies,
    received_metric_names,
    received_span_ids,
    send_gauges,
    send_logs,
    send_spans_with_sdk,
    wait_for_items,
    wait_for_span_ids,
)
from tests.support.otlp_sink import OtlpSink

pytestmark = pytest.mark.e2e

N_SPANS = 200
DELIVERY_TIMEOUT_S = 60.0
# Long enough for the Collector to fail and retry several times with FAST_RETRY_ENV's intervals.
OUTAGE_S = 3.0


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    sink = OtlpSink().start()
    yield sink
    sink.stop()


def missing(expected: set[str], received: list[str]) -> list[str]:
    return sorted(expected - set(received))


def test_every_span_an_app_sends_reaches_the_backend_exactly_once(sink: OtlpSink):
    with sidecar_loop(sink) as loop:
        sent = send_spans_with_sdk(loop.apps_endpoint, N_SPANS)
        received = wait_for_span_ids(sink, set(sent), DELIVERY_TIMEOUT_S)
        assert len(sent) == N_SPANS
        assert missing(set(sent), received) == []
        # Late duplicates (a retry after a timeout) would show up shortly after the last original.
        time.sleep(1.0)
        duplicates = {span_id: n for span_id, n in Counter(received_span_ids(sink)).items() if n > 1}
        assert duplicates == {}
        names = {r.span.span_id.hex(): r.span.name for r in sink.spans()}
        assert {span_id: names[span_id] for span_id in sent} == sent
        assert {r.resource_attributes.get("service.name") for r in sink.spans()} == {"e2e-app"}
        # Proves the spans went round through the sidecar rather than along some shortcut to the backend.
        assert loop.sidecar.metric_value("genops_sidecar_items_total", signal="traces") == N_SPANS


def test_every_log_record_an_app_sends_reaches_the_backend(sink: OtlpSink):
    with sidecar_loop(sink) as loop:
        sent = send_logs(loop.apps_endpoint, 150)
        received = wait_for_items(lambda: received_log_bodies(sink), sent, DELIVERY_TIMEOUT_S)
        assert missing(sent, received) == []
        assert loop.sidecar.metric_value("genops_sidecar_items_total", signal="logs") == len(sent)


def test_every_metric_an_app_sends_reaches_the_backend(sink: OtlpSink):
    with sidecar_loop(sink) as loop:
        sent = send_gauges(loop.apps_endpoint, 50)
        received = wait_for_items(lambda: received_metric_names(sink), sent, DELIVERY_TIMEOUT_S)
        assert missing(sent, received) == []


def test_spans_sent_while_the_backend_answers_unavailable_arrive_after_it_recovers(sink: OtlpSink):
    with sidecar_loop(sink) as loop:
        sink.fail_code = grpc.StatusCode.UNAVAILABLE
        sent = send_spans_with_sdk(loop.apps_endpoint, N_SPANS)
        time.sleep(OUTAGE_S)
        assert sink.spans() == []
        sink.fail_code = None
        received = wait_for_span_ids(sink, set(sent), DELIVERY_TIMEOUT_S)
        assert missing(set(sent), received) == []


def test_spans_sent_while_the_backend_is_down_arrive_after_it_restarts(sink: OtlpSink):
    with sidecar_loop(sink) as loop:
        port = sink.port
        sink.stop()
        sent = send_spans_with_sdk(loop.apps_endpoint, N_SPANS)
        time.sleep(OUTAGE_S)
        restarted = OtlpSink(port=port).start()
        try:
            received = wait_for_span_ids(restarted, set(sent), DELIVERY_TIMEOUT_S)
            assert missing(set(sent), received) == []
        finally:
            restarted.stop()


def test_spans_sent_before_the_sidecar_is_up_are_delivered_once_it_is_ready(sink: OtlpSink):
    sidecar_port = free_port()
    with running_collector_for(sink, sidecar_port) as (ports, _collector):
        sent = send_spans_with_sdk(ports.apps_grpc_endpoint, N_SPANS)
        time.sleep(OUTAGE_S)
        assert sink.spans() == []
        with running_sidecar(downstream_endpoint=ports.return_grpc_endpoint, listen_port=sidecar_port):
            received = wait_for_span_ids(sink, set(sent), DELIVERY_TIMEOUT_S)
            assert missing(set(sent), received) == []
