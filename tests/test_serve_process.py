"""`genops-sidecar serve` as a real process: worker processes, probes, /metrics, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
        # Own process group: a hung sidecar is killed together with its worker processes.
        start_new_session=True,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def terminate(process: subprocess.Popen, timeout: float = 60) -> str:
    """SIGTERM and wait; a sidecar that does not stop in time is killed, so no test leaves one behind."""
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        stderr += "\n[killed: did not stop within the timeout]"
    return stderr


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


def sample(metrics_text: str, name: str, *labels: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} sample with {labels}")


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


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


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
