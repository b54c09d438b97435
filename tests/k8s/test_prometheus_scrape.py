"""A real Prometheus scrapes a running sidecar and evaluates recording rules over what it exposes.

The sidecar runs as `python -m processor serve` (the container's command), forwarding to an OtlpSink;
Prometheus is the distribution's binary with a throwaway config, scraping every second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from tests.support.collector_harness import free_port
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_sink import OtlpSink

REPO = Path(__file__).resolve().parents[2]
SHIPPED_RULES = REPO / "k8s" / "prometheus" / "genops-rules.yaml"
TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
WAIT_SECONDS = 60.0

TEST_RULES = {
    "groups": [
        {
            "name": "scrape-test",
            "rules": [
                {
                    "record": "test:genops_sidecar_requests_ok:sum",
                    "expr": 'sum(genops_sidecar_requests_total{signal="traces", outcome="ok"})',
                },
                {
                    "record": "test:genops_sidecar_forward_errors:by_code",
                    "expr": "sum by (code) (genops_sidecar_forward_errors_total)",
                },
            ],
        }
    ]
}

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus binary not installed (Debian package 'prometheus')"
)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(condition: Callable[[], object], what: str, process: subprocess.Popen, log: Path) -> object:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"process exited ({process.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        try:
            result = condition()
        except (OSError, urllib.error.URLError):
            result = None
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out after {WAIT_SECONDS:.0f}s waiting for {what}:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    sink = OtlpSink().start()
    yield sink
    sink.stop()


class Sidecar:
    def __init__(self, downstream: str, workdir: Path) -> None:
        self.grpc_address = f"127.0.0.1:{free_port()}"
        self.http_address = f"127.0.0.1:{free_port()}"
        self.log = workdir / "sidecar.log"
        env = {
            **os.environ,
            "GENOPS_SERVER_LISTEN": self.grpc_address,
            "GENOPS_DOWNSTREAM_ENDPOINT": downstream,
            "GENOPS_HTTP_LISTEN": self.http_address,
            "GENOPS_SERVER_SHUTDOWN_GRACE_SECONDS": "1",
            "GENOPS_POLICY_STATE_PATH": str(workdir / "budget-state.sqlite"),
        }
        env.pop("GENOPS_CONFIG", None)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "processor", "serve"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(
            lambda: http_get(f"http://{self.http_address}/readyz")[0] == 200, "sidecar /readyz", self.process, self.log
        )
        self.channel = grpc.insecure_channel(self.grpc_address)
        self.export = self.channel.unary_unary(
            TRACE_METHOD,
            request_serializer=trace_pb.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_pb.ExportTraceServiceResponse.FromString,
        )

    def send_traces(self, count: int) -> None:
        for _ in range(count):
            self.export(trace_request([span(attributes={"gen_ai.request.model": "gpt-4o"})]), timeout=10)

    def close(self) -> None:
        self.channel.close()
        stop(self.process)


class Prometheus:
    def __init__(self, scrape_target: str, workdir: Path) -> None:
        rules = workdir / "test-rules.yaml"
        rules.write_text(yaml.safe_dump(TEST_RULES))
        config = workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules), str(SHIPPED_RULES)],
                    "scrape_configs": [
                        {"job_name": "genops-sidecar", "static_configs": [{"targets": [scrape_target]}]},
                    ],
                }
            )
        )
        self.address = f"127.0.0.1:{free_port()}"
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    shutil.which("prometheus") or "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address={self.address}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: http_get(f"http://{self.address}/-/ready")[0] == 200, "Prometheus ready", self.process, self.log
        )

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"http://{self.address}/api/v1/{path}{query}")
        assert status == 200, body
        return json.loads(body)["data"]

    def query(self, promql: str) -> dict[frozenset, float]:
        """Instant query: {frozenset(labels without __name__): value}."""
        return {
            frozenset((k, v) for k, v in sample["metric"].items() if k != "__name__"): float(sample["value"][1])
            for sample in self.api("query", query=promql)["result"]
        }

    def wait_for(self, promql: str, predicate: Callable[[dict[frozenset, float]], bool], what: str) -> dict:
        return wait_until(
            lambda: (result := self.query(promql)) and predicate(result) and result, what, self.process, self.log
        )

    def close(self) -> None:
        stop(self.process)


@pytest.fixture
def sidecar(sink, tmp_path) -> Iterator[Sidecar]:
    sidecar = Sidecar(sink.endpoint, tmp_path)
    yield sidecar
    sidecar.close()


def test_recording_rules_over_a_scraped_sidecar_return_what_it_handled(sink, sidecar, tmp_path):
    sidecar.send_traces(3)
    sink.fail_code = grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as failed:
        sidecar.send_traces(1)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    sink.fail_code = None
    assert len(sink.trace_requests()) == 3

    prometheus = Prometheus(sidecar.http_address, tmp_path)
    try:
        prometheus.wait_for(
            "test:genops_sidecar_requests_ok:sum", lambda r: r == {frozenset(): 3.0}, "3 ok trace requests recorded"
        )
        errors = prometheus.wait_for("test:genops_sidecar_forward_errors:by_code", bool, "forward errors recorded")
        assert errors == {frozenset({("code", "PERMISSION_DENIED")}): 1.0}

        # The shipped rate rule needs the counter to move between scrapes.
        sidecar.send_traces(2)
        prometheus.wait_for(
            "test:genops_sidecar_requests_ok:sum", lambda r: r == {frozenset(): 5.0}, "5 ok trace requests recorded"
        )
        rates = prometheus.wait_for(
            'genops:sidecar_requests:rate5m{signal="traces", outcome="ok"}',
            lambda r: all(value > 0 for value in r.values()),
            "the shipped genops:sidecar_requests:rate5m rule to see the new requests",
        )
        assert set(rates) == {frozenset({("signal", "traces"), ("outcome", "ok")})}

        targets = prometheus.api("targets")["activeTargets"]
        assert [(t["scrapeUrl"], t["health"]) for t in targets] == [(f"http://{sidecar.http_address}/metrics", "up")]
        groups = prometheus.api("rules")["groups"]
        assert {group["name"] for group in groups} >= {"scrape-test", "genops.recording", "genops.alerts"}
        # Every shipped rule evaluates cleanly against a real sidecar's series (no matching errors).
        broken = [
            (rule["name"], rule.get("lastError")) for g in groups for rule in g["rules"] if rule["health"] != "ok"
        ]
        assert broken == []
    finally:
        prometheus.close()
