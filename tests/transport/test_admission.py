"""Backpressure: requests and decompressed bytes in flight are bounded, with one worker too, and
what is refused is refused with UNAVAILABLE (retried by the Collector) and never half-delivered."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest

from processor.config import ServerConfig
from processor.core.contract import BatchChanges
from processor.core.decode import TelemetryBatch
from tests.support.collector_harness import wait_until
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import OtlpSink
from tests.support.sidecar_runner import RunningSidecar
from tests.support.stand_in_stages import TagStage

MIB = 1024 * 1024


class GateStage(TagStage):
    """Holds every batch until the test opens the gate: requests pile up in flight."""

    def __init__(self) -> None:
        super().__init__(name="gate")
        self.gate = threading.Event()
        self.entered = threading.Event()

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return BatchChanges()


@pytest.fixture
def slow_sink():
    sink = OtlpSink(delay_seconds=0.2).start()
    yield sink
    sink.stop()


def outcome(future: Future) -> str:
    try:
        future.result()
        return "ok"
    except grpc.RpcError as error:
        return error.code().name


def send_all(channel, requests, pool, **kwargs) -> list[Future]:
    return [pool.submit(export_traces, channel, request, **kwargs) for request in requests]


def test_one_worker_answers_unavailable_beyond_max_inflight_and_loses_nothing(slow_sink):
    stage = GateStage()
    sidecar = RunningSidecar(
        slow_sink.endpoint, stages=[stage], server=ServerConfig(listen="127.0.0.1:0", max_inflight_requests=3)
    ).start()
    try:
        with sidecar.channel() as channel, ThreadPoolExecutor(12) as pool:
            first = pool.submit(export_traces, channel, trace_request([span(name="first")]))
            assert stage.entered.wait(10)
            names = [f"later-{i}" for i in range(10)]
            later = send_all(channel, [trace_request([span(name=n)]) for n in names], pool)
            # The pipeline is held: 2 more fit under the limit, the other 8 must be refused now,
            # not left waiting inside gRPC.
            wait_until(lambda: sum(f.done() for f in later) >= 8, 10, "refusals while the pipeline is busy")
            stage.gate.set()
            first.result(10)
            outcomes = [outcome(f) for f in later]
        assert outcomes.count("UNAVAILABLE") == 8 and outcomes.count("ok") == 2
        accepted = {"first"} | {n for n, o in zip(names, outcomes, strict=True) if o == "ok"}
        assert sorted(r.span.name for r in slow_sink.spans()) == sorted(accepted)
        assert sidecar.metric_value("genops_sidecar_rejected_requests_total", {"signal": "traces"}) == 8
    finally:
        stage.gate.set()
        sidecar.stop()


def test_decompressed_bytes_in_flight_are_bounded_before_requests_are_read():
    sink = OtlpSink().start()
    stage = GateStage()
    # 1 MiB messages, so a budget of 4 MiB of decompressed bytes; far below the request limit.
    server = ServerConfig(listen="127.0.0.1:0", max_recv_message_size_mib=1, max_inflight_requests=32)
    sidecar = RunningSidecar(sink.endpoint, stages=[stage], server=server).start()
    try:
        # Compresses to a few KiB: the sizes that count are the decompressed ones.
        big = [trace_request([span(name=f"big-{i}", attributes={"filler": "x" * (900 * 1024)})]) for i in range(10)]
        with sidecar.channel() as channel, ThreadPoolExecutor(10) as pool:
            first = pool.submit(export_traces, channel, big[0], compression=grpc.Compression.Gzip)
            assert stage.entered.wait(10)
            later = send_all(channel, big[1:], pool, compression=grpc.Compression.Gzip)
            wait_until(lambda: sum(f.done() for f in later) >= 6, 10, "refusals at the byte budget")
            budget = sidecar.worker.service.budget
            assert budget.held_bytes <= budget.max_bytes == 4 * MIB
            stage.gate.set()
            first.result(10)
            outcomes = [outcome(f) for f in later]
        assert outcomes.count("UNAVAILABLE") == 6 and outcomes.count("ok") == 3
        assert sidecar.metric_value("genops_sidecar_over_budget_requests_total", {"signal": "traces"}) == 6
        accepted = {"big-0"} | {f"big-{i + 1}" for i, o in enumerate(outcomes) if o == "ok"}
        assert sorted(r.span.name for r in sink.spans()) == sorted(accepted)
        assert budget.held_bytes == 0 and budget.requests == 0
    finally:
        stage.gate.set()
        sidecar.stop()
        sink.stop()


def test_a_request_the_size_of_the_budget_is_accepted_when_alone():
    sink = OtlpSink().start()
    server = ServerConfig(listen="127.0.0.1:0", max_recv_message_size_mib=1, max_inflight_requests=1)
    sidecar = RunningSidecar(sink.endpoint, stages=[TagStage()], server=server).start()
    try:
        with sidecar.channel() as channel:
            export_traces(channel, trace_request([span(name="whole", attributes={"filler": "x" * (1000 * 1024)})]))
        assert [r.span.name for r in sink.spans()] == ["whole"]
    finally:
        sidecar.stop()
        sink.stop()
