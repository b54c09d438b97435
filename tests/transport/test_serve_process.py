"""`genops-sidecar serve` as a real process: worker processes, probes, /metrics, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from tests.support.collector_harness import free_port
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.serve import child_pids, http_get, sample, start_sidecar, terminate, wait_ready


def test_two_workers_share_the_requests_of_one_connection_and_metrics_add_up(sink):
    # A Collector exports over a single connection: the workers must split requests, not connections.
    grpc_port, http_port = free_port(), free_port()
    http = f"127.0.0.1:{http_port}"
    process = start_sidecar(
        {
            "GENOPS_SERVER_LISTEN": f"127.0.0.1:{grpc_port}",
            "GENOPS_SERVER_WORKERS": "2",
            "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
            "GENOPS_HTTP_LISTEN": http,
            "GENOPS_LOGGING_LEVEL": "debug",
        }
    )
    requests = 40
    try:
        wait_ready(process, http)
        batch = trace_request([span(attributes={"gen_ai.request.model": "gpt-4o"}) for _ in range(300)])
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: export_traces(channel, batch), range(requests)))
        assert len(sink.spans()) == requests * 300
        _, metrics = http_get(f"http://{http}/metrics")
        assert sample(metrics, "genops_sidecar_requests_total", 'outcome="ok"', 'signal="traces"') == requests
        # Stage metrics come from the workers' multiprocess files, summed.
        assert sample(metrics, "genops_sidecar_stage_seconds_count", 'stage="cost"', 'signal="traces"') == requests
    finally:
        stderr = terminate(process)
    assert process.returncode == 0, stderr
    busy_workers = {
        json.loads(line)["worker"]
        for line in stderr.splitlines()
        if line.startswith("{") and '"batch processed"' in line
    }
    assert len(busy_workers) == 2


def test_sigterm_stops_a_single_worker_cleanly_and_readyz_reports_serving(sink):
    grpc_port, http_port = free_port(), free_port()
    http = f"127.0.0.1:{http_port}"
    process = start_sidecar(
        {
            "GENOPS_SERVER_LISTEN": f"127.0.0.1:{grpc_port}",
            "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
            "GENOPS_HTTP_LISTEN": http,
        }
    )
    try:
        wait_ready(process, http)
        assert http_get(f"http://{http}/healthz")[0] == 200
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            export_traces(channel, trace_request([span()]))
        assert "genops_sidecar_requests_total" in http_get(f"http://{http}/metrics")[1]
    finally:
        stderr = terminate(process)
    assert process.returncode == 0, stderr
    assert '"event": "stopped"' in stderr


def test_serve_refuses_a_wrong_config_with_a_clear_message(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("server: {listen: 'x:1', workerz: 2}\n")
    result = subprocess.run(
        [sys.executable, "-m", "processor", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown setting server.workerz" in result.stderr


def test_validate_config_reports_valid_and_invalid_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("downstream: {endpoint: 'collector:4418', compression: gzip}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("downstream: {compression: brotli}\n")
    ok = subprocess.run(
        [sys.executable, "-m", "processor", "validate-config", str(good)], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    broken = subprocess.run(
        [sys.executable, "-m", "processor", "validate-config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode == 1
    assert "downstream.compression" in broken.stderr


def test_a_killed_worker_costs_one_retry_and_no_data(sink):
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
        workers = [pid for pid in child_pids(process.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        answers = []
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            for i in range(10):
                # What the Collector's retry does: send the same batch again after UNAVAILABLE.
                request = trace_request([span(name=f"after-kill-{i}")])
                for _ in range(50):
                    try:
                        export_traces(channel, request)
                        answers.append("ok")
                        break
                    except grpc.RpcError as error:
                        assert error.code() == grpc.StatusCode.UNAVAILABLE
                        answers.append("unavailable")
                        time.sleep(0.2)
        assert answers.count("ok") == 10
        assert sorted(r.span.name for r in sink.spans()) == sorted(f"after-kill-{i}" for i in range(10))
    finally:
        terminate(process)
    assert process.returncode == 0
