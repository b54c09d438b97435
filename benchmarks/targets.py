"""The systems under test, each a real process: the sidecar (`python -m processor serve`) or otelcol.

Each target forwards to the benchmark sink and exposes `endpoint` (OTLP/gRPC) and `pid` (the root
of the process tree whose CPU and memory are measured).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks.workload import Model, price_table

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


POLICY_FILE = {
    "timezone": "UTC",
    "budgets": [
        {"name": "all-spend", "limit_usd": 1_000_000, "period": "monthly", "warn_at": [0.8, 0.95]},
        {"name": "per-team", "limit_usd": 50_000, "period": "daily", "dimension": "team", "mode": "advisory"},
        {"name": "payments", "limit_usd": 20_000, "period": "weekly", "dimension": "team", "value": "payments"},
    ],
    "policies": [
        {"name": "expensive-call", "type": "max_cost_per_operation", "max_usd": 0.5},
        {
            "name": "no-opus-for-growth",
            "type": "model_access",
            "deny": ["claude-opus-4-*"],
            "match": {"team": "growth"},
        },
        {"name": "pii-in-prompts", "type": "pii_detected", "mode": "audit_only"},
        {"name": "huge-requests", "type": "max_tokens_per_request", "max_tokens": 7000},
        {"name": "must-have-team", "type": "required_attribution", "dimensions": ["team"]},
    ],
}


class _TargetProcess:
    """Start, readiness wait, log capture and stop shared by the targets."""

    workdir: Path
    process: subprocess.Popen | None
    port: int
    log_name = "target.log"
    stop_seconds = 30.0

    def _launch(self, command: list[str], env: dict[str, str] | None, ready_url: str, timeout: float) -> None:
        self._log = open(self.workdir / self.log_name, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, env=env, cwd=self.workdir, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited {self.process.returncode}: {self.log_tail()}")
            if _ready(ready_url):
                return
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{command[0]} not ready after {timeout}s: {tail}")

    def log_tail(self, chars: int = 3000) -> str:
        path = self.workdir / self.log_name
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Sidecar(_TargetProcess):
    """`python -m processor serve` configured through GENOPS_* environment variables."""

    downstream: str
    workers: int = 1
    stages: bool = False
    # With stages on: only these of cost, redaction, policy (empty: all three).
    only: tuple[str, ...] = ()
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="genops-bench-")))
    process: subprocess.Popen | None = None
    port: int = 0
    # Extra variables for the sidecar (e.g. POLARS_MAX_THREADS=1), applied last.
    extra_env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        self.port = free_port()
        self.http = f"127.0.0.1:{free_port()}"

        def on(stage: str) -> str:
            return "true" if self.stages and (not self.only or stage in self.only) else "false"

        env = {
            **os.environ,
            "GENOPS_SERVER_LISTEN": f"127.0.0.1:{self.port}",
            "GENOPS_SERVER_WORKERS": str(self.workers),
            "GENOPS_DOWNSTREAM_ENDPOINT": self.downstream,
            "GENOPS_HTTP_LISTEN": self.http,
            "GENOPS_LOGGING_LEVEL": "warning",
            "GENOPS_COST_ENABLED": on("cost"),
            "GENOPS_REDACTION_ENABLED": on("redaction"),
            "GENOPS_POLICY_ENABLED": on("policy"),
            "GENOPS_POLICY_STATE_BACKEND": "sqlite",
            "GENOPS_POLICY_STATE_PATH": str(self.workdir / "budget-state.sqlite"),
            "GENOPS_REDACTION_HASH_KEY": "benchmark-only-hash-key",
        }
        if on("policy") == "true":
            policy = self.workdir / "policy.yaml"
            policy.write_text(yaml.safe_dump(POLICY_FILE, sort_keys=False))
            env["GENOPS_POLICY_POLICY_FILE"] = str(policy)
        env.update(self.extra_env)
        return env

    log_name = "sidecar.log"
    stop_seconds = 40.0

    def start(self, timeout: float = 60) -> Sidecar:
        env = self.environment()
        # cwd is the target's workdir, so the package is found through its install, as in production.
        self._launch([sys.executable, "-m", "processor", "serve"], env, f"http://{self.http}/readyz", timeout)
        return self


def ottl_statements(table: list[Model]) -> list[str]:
    """One `set` per model: what pricing in the Collector's transform processor looks like."""
    statements = []
    for model in table:
        cost_in = f"{model.input_per_million / 1e6:.12f}"
        cost_out = f"{model.output_per_million / 1e6:.12f}"
        statements.append(
            'set(attributes["genops.cost.total"], '
            f'Double(attributes["gen_ai.usage.input_tokens"]) * {cost_in} + '
            f'Double(attributes["gen_ai.usage.output_tokens"]) * {cost_out}) '
            f'where attributes["gen_ai.request.model"] == "{model.name}"'
        )
    return statements


def collector_config(receiver_port: int, health_port: int, downstream: str, table_size: int = 500) -> dict:
    """otlp receiver → transform (a `table_size`-model price table; none if 0) → otlp exporter."""
    processors = {}
    if table_size:
        processors["transform/cost"] = {
            "error_mode": "ignore",
            "trace_statements": [{"context": "span", "statements": ottl_statements(price_table(table_size))}],
        }
    return {
        "extensions": {"health_check": {"endpoint": f"127.0.0.1:{health_port}"}},
        "receivers": {
            "otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{receiver_port}", "max_recv_msg_size_mib": 64}}}
        },
        "processors": processors,
        "exporters": {
            # No queue and no retry: the client's call returns only once the sink has the data,
            # the same round trip the sidecar gives, so latencies compare.
            "otlp_grpc/sink": {
                "endpoint": downstream,
                "tls": {"insecure": True},
                "compression": "none",
                "sending_queue": {"enabled": False},
                "retry_on_failure": {"enabled": False},
            }
        },
        "service": {
            "extensions": ["health_check"],
            "telemetry": {"logs": {"level": "warn"}, "metrics": {"level": "none"}},
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": list(processors), "exporters": ["otlp_grpc/sink"]}
            },
        },
    }


def find_collector() -> str | None:
    """An otelcol binary with the transform processor: the benchmark's own build, else the project's."""
    for script in (REPO / "benchmarks" / "otelcol" / "build.sh", REPO / "collector-config" / "build-otelcol.sh"):
        try:
            binary = subprocess.run(
                ["bash", str(script)], capture_output=True, text=True, timeout=1800, check=True
            ).stdout.strip()
            components = subprocess.run([binary, "components"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "name: transform" in components:
            return binary
    return None


@dataclass
class Collector(_TargetProcess):
    binary: str
    downstream: str
    table_size: int = 500
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="genops-bench-otelcol-")))
    process: subprocess.Popen | None = None
    port: int = 0

    log_name = "otelcol.log"

    def start(self, timeout: float = 60) -> Collector:
        self.port, health = free_port(), free_port()
        config = self.workdir / "otelcol.yaml"
        config.write_text(yaml.safe_dump(collector_config(self.port, health, self.downstream, self.table_size)))
        self._launch([self.binary, "--config", str(config)], None, f"http://127.0.0.1:{health}/", timeout)
        return self
