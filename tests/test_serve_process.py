"""`genops-sidecar serve` as a real process: worker processes, probes, /metrics, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest

from tests.collector_harness import free_port
from tests.otlp_builders import span, trace_request
from tests.otlp_sink import OtlpSink
from tests.test_receive_forward import export_traces


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start_sidecar(env_extra: dict[str, str], *args: str) -> subprocess.Popen:
    env = {**os.environ, **env_extra}
    return subprocess.Popen(
        [sys.executable, "-m", "processor", *args, "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(process: subprocess.Popen, http: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sidecar exited {process.returncode}: {process.stderr.read()}")
        try:
            if http_get(f"http://{http}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("sidecar never became ready")


@pytest.fixture
def sink():
    sink = OtlpSink().start()
    yield sink
    sink.stop()


def test_two_worker_processes_share_the_port_and_metrics_add_up(sink):
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
        # /readyz of the supervisor answers 200 only once the workers serve the shared port.
        wait_ready(process, http)
        requests = 40
        for _ in range(requests):
            # A new channel per request: new connections are what SO_REUSEPORT spreads.
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                export_traces(ch, trace_request([span()]))
        assert len(sink.spans()) == requests
        _, metrics = http_get(f"http://{http}/metrics")
        ok_line = next(
            line
            for line in metrics.splitlines()
            if line.startswith("genops_sidecar_requests_total{") and 'outcome="ok"' in line and "traces" in line
        )
        assert float(ok_line.rsplit(" ", 1)[1]) == requests
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0


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
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
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
