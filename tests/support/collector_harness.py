"""Run the real moving parts of the loop as subprocesses for end-to-end tests.

apps (OTel SDK) -> Collector or rotel -> sidecar (`python -m processor serve`) -> Collector -> backend sink.

Everything listens on 127.0.0.1 with ports picked per test, so tests can run next to a developer's own
Collector and next to each other.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from tests.support.otlp_sink import OtlpSink

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTOR_CONFIG_DIR = REPO_ROOT / "collector-config"
BUILD_SCRIPT = COLLECTOR_CONFIG_DIR / "build-otelcol.sh"
BUILDER_MANIFEST = COLLECTOR_CONFIG_DIR / "builder-config.yaml"
SHIPPED_COLLECTOR_CONFIG = COLLECTOR_CONFIG_DIR / "otelcol-sidecar.yaml"

# A cold build compiles a few hundred Go packages; on a 2-core machine that is minutes, not seconds.
BUILD_TIMEOUT_S = 45 * 60
# Retry timings that make outage tests finish in seconds instead of the shipped config's production values.
FAST_RETRY_ENV = {
    "GENOPS_OTELCOL_RETRY_INITIAL_INTERVAL": "100ms",
    "GENOPS_OTELCOL_RETRY_MAX_INTERVAL": "500ms",
    "GENOPS_OTELCOL_RETRY_MAX_ELAPSED": "120s",
    "GENOPS_OTELCOL_BATCH_TIMEOUT": "50ms",
}


class HarnessError(RuntimeError):
    pass


@functools.cache
def otelcol_binary() -> Path:
    """The otelcol-genops binary: $GENOPS_OTELCOL_BIN if set, else built (or fetched from cache) once."""
    override = os.environ.get("GENOPS_OTELCOL_BIN")
    if override:
        path = Path(override).expanduser().resolve()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise HarnessError(f"GENOPS_OTELCOL_BIN={override} is not an executable file")
        return path
    if shutil.which("go") is None:
        raise HarnessError("building the Collector needs the Go toolchain; install Go or set GENOPS_OTELCOL_BIN")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise HarnessError(f"{BUILD_SCRIPT.name} failed with exit code {result.returncode}:\n{result.stderr[-20000:]}")
    lines = result.stdout.strip().splitlines()
    if len(lines) != 1 or not Path(lines[0]).is_absolute():
        raise HarnessError(f"{BUILD_SCRIPT.name} must print exactly one absolute path, got {result.stdout!r}")
    path = Path(lines[0])
    if not os.access(path, os.X_OK):
        raise HarnessError(f"{BUILD_SCRIPT.name} printed {path}, which is not executable")
    return path


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for a process started a moment later.

    Taken below the kernel's ephemeral range: a port the OS hands out for `bind(0)` can be taken
    again, before the test's process binds it, by any outgoing connection (a Collector dialling a
    sidecar not yet up does that), which made tests fail with "Address already in use".
    """
    high = max(_ephemeral_start(), 16384)
    for _ in range(200):
        port = random.randrange(10000, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise HarnessError("no free TCP port found on 127.0.0.1")


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, alive: Callable[[], bool] = lambda: True
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if not alive():
            raise HarnessError(f"process exited while waiting for {what}")
        time.sleep(0.05)
    raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def tcp_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class ManagedProcess:
    """A subprocess whose combined stdout/stderr goes to a temp file, so a chatty child never blocks."""

    name: str
    proc: subprocess.Popen
    log_file: IO[bytes]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self.log_file.flush()
        self.log_file.seek(0)
        return self.log_file.read().decode("utf-8", errors="replace")

    def dump_output(self, limit: int = 20000) -> None:
        text = self.output()
        sys.stderr.write(f"\n----- {self.name} output (last {limit} chars) -----\n{text[-limit:]}\n")
        sys.stderr.write(f"----- end of {self.name} output -----\n")

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                # The child runs in its own session, so this reaches any workers it forked and nothing else.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace)


@contextlib.contextmanager
def managed_process(
    name: str,
    argv: list[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[ManagedProcess]:
    """Run argv until the block ends; if the block fails, print the process output to help debugging."""
    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile(prefix=f"{name}-") as log_file:
        proc = subprocess.Popen(
            argv,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        managed = ManagedProcess(name=name, proc=proc, log_file=log_file)
        try:
            yield managed
        except BaseException:
            managed.stop()
            managed.dump_output()
            raise
        finally:
            managed.stop()


@dataclass(frozen=True)
class CollectorPorts:
    """The ports the shipped otelcol-sidecar.yaml listens on, overridden through its env variables."""

    apps_grpc: int = field(default_factory=free_port)
    apps_http: int = field(default_factory=free_port)
    return_grpc: int = field(default_factory=free_port)
    health: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)

    @property
    def apps_grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.apps_grpc}"

    @property
    def return_grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.return_grpc}"

    def env(self) -> dict[str, str]:
        return {
            "GENOPS_OTELCOL_APPS_GRPC": f"127.0.0.1:{self.apps_grpc}",
            "GENOPS_OTELCOL_APPS_HTTP": f"127.0.0.1:{self.apps_http}",
            "GENOPS_OTELCOL_RETURN_GRPC": f"127.0.0.1:{self.return_grpc}",
            "GENOPS_OTELCOL_HEALTH": f"127.0.0.1:{self.health}",
            "GENOPS_OTELCOL_METRICS_HOST": "127.0.0.1",
            "GENOPS_OTELCOL_METRICS_PORT": str(self.metrics),
        }


def loop_collector_env(
    ports: CollectorPorts, sidecar_endpoint: str, backend_endpoint: str, **extra: str
) -> dict[str, str]:
    """Env for the shipped config wired as apps -> sidecar -> return receiver -> plaintext backend."""
    return {
        **ports.env(),
        "GENOPS_SIDECAR_ENDPOINT": sidecar_endpoint,
        "GENOPS_BACKEND_ENDPOINT": backend_endpoint,
        "GENOPS_BACKEND_INSECURE": "true",
        **extra,
    }


@dataclass
class RunningCollector:
    process: ManagedProcess
    health_url: str


@contextlib.contextmanager
def running_collector(
    config: Path,
    env: Mapping[str, str],
    health_port: int,
    binary: Path | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[RunningCollector]:
    """A Collector subprocess that is up (health_check answers 200) for the duration of the block."""
    argv = [str(binary or otelcol_binary()), "--config", str(config)]
    health_url = f"http://127.0.0.1:{health_port}/"
    with managed_process("otelcol", argv, env=env) as process:
        wait_until(
            lambda: http_status(health_url) == 200,
            startup_timeout,
            f"Collector health check at {health_url}",
            alive=process.alive,
        )
        yield RunningCollector(process=process, health_url=health_url)


@dataclass
class RunningSidecar:
    process: ManagedProcess
    listen_endpoint: str
    http_endpoint: str

    def url(self, path: str) -> str:
        return f"http://{self.http_endpoint}{path}"

    def metric_value(self, sample_name: str, **labels: str) -> float:
        """Sum of the /metrics samples with this name whose labels include `labels` (0 when none)."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == sample_name and labels.items() <= sample.labels.items()
        )


@contextlib.contextmanager
def running_sidecar(
    downstream_endpoint: str,
    listen_port: int | None = None,
    http_port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    config: Path | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[RunningSidecar]:
    """`python -m processor serve` from this checkout, ready (/readyz answers 200) inside the block."""
    listen = f"127.0.0.1:{listen_port or free_port()}"
    http_listen = f"127.0.0.1:{http_port or free_port()}"
    env = {
        "GENOPS_SERVER_LISTEN": listen,
        "GENOPS_DOWNSTREAM_ENDPOINT": downstream_endpoint,
        "GENOPS_HTTP_LISTEN": http_listen,
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    # --config belongs to the top-level parser, so it goes before the subcommand.
    config_args = ["--config", str(config)] if config is not None else []
    argv = [sys.executable, "-m", "processor", *config_args, "serve"]
    with managed_process("sidecar", argv, env=env, cwd=REPO_ROOT) as process:
        sidecar = RunningSidecar(process=process, listen_endpoint=listen, http_endpoint=http_listen)
        wait_until(
            lambda: http_status(sidecar.url("/readyz")) == 200,
            startup_timeout,
            f"sidecar readiness at {sidecar.url('/readyz')}",
            alive=process.alive,
        )
        yield sidecar


def rotel_agent_binary() -> Path:
    """The rotel agent executable that the `rotel` wheel ships next to its Python package."""
    import rotel  # imported lazily: only the rotel tests need the wheel

    path = Path(rotel.__file__).resolve().parent / "rotel-agent"
    if not os.access(path, os.X_OK):
        raise HarnessError(f"the rotel wheel has no executable agent at {path}")
    return path


@dataclass
class RunningRotel:
    process: ManagedProcess
    grpc_endpoint: str


@contextlib.contextmanager
def running_rotel(
    exporter_endpoint: str,
    workdir: Path,
    extra_args: list[str] | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[RunningRotel]:
    """A rotel agent in the foreground that receives OTLP/gRPC and exports OTLP/gRPC to exporter_endpoint.

    rotel parses the exporter endpoint as a URL, so a plaintext gRPC target needs the http:// scheme.
    """
    grpc_port, http_port = free_port(), free_port()
    endpoint = exporter_endpoint if "://" in exporter_endpoint else f"http://{exporter_endpoint}"
    argv = [
        str(rotel_agent_binary()),
        "start",
        "--otlp-grpc-endpoint",
        f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint",
        f"127.0.0.1:{http_port}",
        "--otlp-exporter-endpoint",
        endpoint,
        "--otlp-exporter-protocol",
        "grpc",
        # gzip is rotel's default; loopback gains nothing from it.
        "--otlp-exporter-compression",
        "none",
        "--otlp-exporter-retry-initial-backoff",
        "200ms",
        "--otlp-exporter-retry-max-backoff",
        "1s",
        # Defaults live in /tmp and would collide between concurrent runs.
        "--pid-file",
        str(workdir / "rotel.pid"),
        "--log-file",
        str(workdir / "rotel.log"),
        *(extra_args or []),
    ]
    with managed_process("rotel", argv) as process:
        # rotel has no health endpoint; its gRPC port accepting connections is the readiness signal.
        wait_until(
            lambda: tcp_listening(grpc_port),
            startup_timeout,
            f"rotel OTLP/gRPC receiver on port {grpc_port}",
            alive=process.alive,
        )
        yield RunningRotel(process=process, grpc_endpoint=f"127.0.0.1:{grpc_port}")


@dataclass
class Loop:
    """The whole round: apps -> Collector -> sidecar -> Collector (return receiver) -> sink."""

    ports: CollectorPorts
    collector: RunningCollector
    sidecar: RunningSidecar

    @property
    def apps_endpoint(self) -> str:
        return self.ports.apps_grpc_endpoint


@contextlib.contextmanager
def running_collector_for(sink: OtlpSink, sidecar_port: int) -> Iterator[tuple[CollectorPorts, RunningCollector]]:
    ports = CollectorPorts()
    env = loop_collector_env(ports, f"127.0.0.1:{sidecar_port}", sink.endpoint, **FAST_RETRY_ENV)
    with running_collector(SHIPPED_COLLECTOR_CONFIG, env, ports.health) as collector:
        yield ports, collector


@contextlib.contextmanager
def sidecar_loop(sink: OtlpSink) -> Iterator[Loop]:
    # The Collector starts first: the sidecar's downstream (the return receiver) then exists when it starts.
    sidecar_port = free_port()
    with (
        running_collector_for(sink, sidecar_port) as (ports, collector),
        running_sidecar(downstream_endpoint=ports.return_grpc_endpoint, listen_port=sidecar_port) as sidecar,
    ):
        yield Loop(ports=ports, collector=collector, sidecar=sidecar)
