"""A request that kills worker processes gets one retry, then is refused as non-retryable."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from processor.poison import PoisonRequests, RequestDigest
from tests.collector_harness import free_port, wait_until
from tests.otlp_builders import span, trace_request
from tests.otlp_sink import OtlpSink
from tests.test_receive_forward import export_traces
from tests.test_serve_process import child_pids, http_get, sample, start_sidecar, terminate, wait_ready


def workers_of(pid: int) -> list[int]:
    return [p for p in child_pids(pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]


def inflight(http: str) -> float:
    for line in http_get(f"http://{http}/metrics")[1].splitlines():
        if line.startswith("genops_sidecar_inflight_requests "):
            return float(line.split()[1])
    return 0.0


def kill_workers_holding(process, http: str, channel, request) -> grpc.StatusCode | None:
    """Stops every worker, sends `request` (a stopped worker takes it and cannot answer), then
    kills the workers by their PIDs while one holds it; returns the answer's code."""
    # A harmless request first: a worker is idle, and an idle one killed last time is replaced.
    export_traces(channel, trace_request([span(name="harmless")]))
    workers = workers_of(process.pid)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(export_traces, channel, request)
        wait_until(lambda: inflight(http) == 1, 10, "the request in flight")
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        try:
            answer.result(30)
            return None
        except grpc.RpcError as error:
            return error.code()


@pytest.fixture
def sink():
    sink = OtlpSink().start()
    yield sink
    sink.stop()


def test_a_request_that_killed_two_workers_is_refused_as_invalid_argument(sink):
    grpc_port, http_port = free_port(), free_port()
    http = f"127.0.0.1:{http_port}"
    process = start_sidecar(
        {
            "GENOPS_SERVER_LISTEN": f"127.0.0.1:{grpc_port}",
            "GENOPS_SERVER_WORKERS": "2",
            "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
            "GENOPS_HTTP_LISTEN": http,
        }
    )
    try:
        wait_ready(process, http)
        poison = trace_request([span(name="kills-workers")])
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            assert kill_workers_holding(process, http, channel, poison) == grpc.StatusCode.UNAVAILABLE
            # The Collector's retry: it kills again, and is now refused for good.
            assert kill_workers_holding(process, http, channel, poison) == grpc.StatusCode.INVALID_ARGUMENT
            export_traces(channel, trace_request([span(name="harmless")]))
            # Refused before any worker sees it: with every worker stopped it is still answered.
            workers = workers_of(process.pid)
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(grpc.RpcError) as refused:
                    export_traces(channel, poison)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "killed a worker process" in refused.value.details()
            finally:
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)
            export_traces(channel, trace_request([span(name="harmless")]))
        metrics = http_get(f"http://{http}/metrics")[1]
        assert sample(metrics, "genops_sidecar_poison_requests_total", 'signal="traces"') == 2
        assert {r.span.name for r in sink.spans()} == {"harmless"}
    finally:
        stderr = terminate(process)
    assert process.returncode == 0
    digest = RequestDigest.of(poison.SerializeToString())
    refusals = [line for line in stderr.splitlines() if "refusing a request that killed" in line]
    assert len(refusals) == 1 and digest.sha256 in refusals[0] and str(digest.size) in refusals[0]


def test_the_remembered_requests_are_bounded_and_other_bytes_pass():
    poison = PoisonRequests(remembered=2)
    for raw in (b"a", b"bb", b"ccc"):
        poison.died_on(raw)
    poison.check(b"a")  # forgotten: the oldest
    with pytest.raises(ValueError):
        poison.died_on(b"ccc")
    with pytest.raises(ValueError):
        poison.check(b"ccc")
    poison.check(b"ddd")  # same size, other bytes
    poison.check(b"bb")  # one death only: still retried

