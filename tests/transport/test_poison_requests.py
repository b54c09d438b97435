"""A request that kills worker processes gets one retry, then is refused as non-retryable."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from processor.transport.poison import PoisonRequests, RequestDigest
from tests.support.collector_harness import free_port, wait_until
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.serve import (
    http_get,
    sample,
    start_sidecar,
    terminate,
    wait_ready,
    workers_of,
)


def inflight(http: str) -> float:
    for line in http_get(f"http://{http}/metrics")[1].splitlines():
        if line.startswith("genops_sidecar_inflight_requests "):
            return float(line.split()[1])
    return 0.0


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def kill_the_worker_holding(process, channel, request) -> grpc.StatusCode | None:
    """Sends `request` and kills, by its PID, the worker that is busy processing it; returns the
    answer's code (None: OK)."""
    export_traces(channel, trace_request([span(name="harmless")]))
    # Replacements of killed workers start with seconds of CPU (imports, pricing table): wait for
    # every worker to be quiet, so the one spending CPU next is the one holding the request.
    samples: list[dict[int, int]] = []

    def quiet() -> bool:
        time.sleep(0.25)
        samples.append({pid: cpu_ticks(pid) for pid in workers_of(process.pid)})
        return len(samples) > 1 and samples[-1] == samples[-2] and len(samples[-1]) == 2

    wait_until(quiet, 60, "idle workers")
    before = samples[-1]
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(export_traces, channel, request)

        def busy() -> int | None:
            # The workers were quiet: the one spending CPU now is the one processing the request.
            return next((pid for pid, ticks in before.items() if cpu_ticks(pid) - ticks >= 2), None)

        wait_until(lambda: busy() is not None, 30, "a worker busy with the request")
        os.kill(busy(), signal.SIGKILL)
        try:
            answer.result(60)
            return None
        except grpc.RpcError as error:
            return error.code()


def test_a_request_that_killed_two_workers_is_refused_as_invalid_argument(sink):
    grpc_port, http_port = free_port(), free_port()
    http = f"127.0.0.1:{http_port}"
    process = start_sidecar(
        {
            "GENOPS_SERVER_LISTEN": f"127.0.0.1:{grpc_port}",
            "GENOPS_SERVER_WORKERS": "2",
            "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
            "GENOPS_HTTP_LISTEN": http,
            # The pure-Python decoder: slow enough on this request for the test to catch it at work.
            "GENOPS_NATIVE_DECODE": "0",
        }
    )
    try:
        wait_ready(process, http)
        # ~3 MiB: a few hundred ms in the pure-Python pipeline (and under the sink's 4 MiB limit).
        attributes = {"gen_ai.prompt": "hello there " * 5}
        poison = trace_request([span(name="kills-workers", attributes={**attributes, "k": i}) for i in range(14_000)])
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            assert kill_the_worker_holding(process, channel, poison) == grpc.StatusCode.UNAVAILABLE
            # The Collector's retry: it kills again, and is now refused for good.
            assert kill_the_worker_holding(process, channel, poison) == grpc.StatusCode.INVALID_ARGUMENT
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
    assert len(refusals) == 1 and str(digest) in refusals[0]


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


def test_with_one_worker_a_request_that_crashed_the_sidecar_twice_is_refused_after_the_restart(sink, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    http = f"127.0.0.1:{http_port}"
    env = {
        "GENOPS_SERVER_LISTEN": f"127.0.0.1:{grpc_port}",
        "GENOPS_SERVER_WORKERS": "1",
        "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
        "GENOPS_HTTP_LISTEN": http,
        "GENOPS_NATIVE_DECODE": "0",
        "XDG_STATE_HOME": str(tmp_path),
    }
    inflight_file = tmp_path / "genops-sidecar" / "crash-journal" / "inflight"
    attributes = {"gen_ai.prompt": "hello there " * 5}
    poison = trace_request([span(name="kills-sidecar", attributes={**attributes, "k": i}) for i in range(14_000)])

    def crash_on_it() -> grpc.StatusCode:
        """Sends the request and kills the sidecar by its PID while the journal says it is processing it."""
        process = start_sidecar(env)
        try:
            wait_ready(process, http)
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, ThreadPoolExecutor(1) as pool:
                answer = pool.submit(export_traces, channel, poison)
                wait_until(lambda: any(inflight_file.read_bytes()), 30, "the request in the pipeline")
                os.kill(process.pid, signal.SIGKILL)
                with pytest.raises(grpc.RpcError) as failed:
                    answer.result(30)
                return failed.value.code()
        finally:
            if process.poll() is None:
                terminate(process)  # (the kill did not happen: the test failed before it)

    assert crash_on_it() == grpc.StatusCode.UNAVAILABLE  # what the Collector retries
    assert crash_on_it() == grpc.StatusCode.UNAVAILABLE
    process = start_sidecar(env)
    try:
        wait_ready(process, http)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as refused:
                    export_traces(channel, poison)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            export_traces(channel, trace_request([span(name="harmless")]))
        metrics = http_get(f"http://{http}/metrics")[1]
        assert sample(metrics, "genops_sidecar_poison_requests_total", 'signal="traces"') == 2
    finally:
        stderr = terminate(process)
    assert process.returncode == 0
    assert [r.span.name for r in sink.spans()] == ["harmless"]
    digest = str(RequestDigest.of(poison.SerializeToString()))
    assert sum(digest in line and "died processing a request" in line for line in stderr.splitlines()) == 1
    assert sum(digest in line and "refusing a request" in line for line in stderr.splitlines()) == 1
