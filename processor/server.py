"""Runs one sidecar worker: gRPC receiver, health, HTTP probes and /metrics, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Protocol

import structlog
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from processor.admission import InflightBudget
from processor.config import SidecarConfig
from processor.forward import Forwarder
from processor.observability import SidecarMetrics
from processor.pipeline import ProcessedRequest, Stage
from processor.receive import ExportService

if TYPE_CHECKING:
    from processor.budget_api import BudgetStatusReader

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
OTLP_SERVICES = (
    "opentelemetry.proto.collector.trace.v1.TraceService",
    "opentelemetry.proto.collector.logs.v1.LogsService",
    "opentelemetry.proto.collector.metrics.v1.MetricsService",
)


@dataclass
class Readiness:
    """What /readyz reports; flipped off first on shutdown so a load balancer stops sending."""

    ready: bool = False
    reasons: list[str] = field(default_factory=list)
    # Extra live check (the supervisor asks its workers); returns a reason when not ready.
    check: Callable[[], str | None] | None = None

    def status(self) -> tuple[bool, list[str]]:
        if not self.ready:
            return False, list(self.reasons)
        problem = self.check() if self.check is not None else None
        return (False, [problem]) if problem else (True, [])


def build_stages(config: SidecarConfig, metrics_registry: CollectorRegistry) -> list[Stage]:
    """The processing stages in data order: cost → redaction → policy/budget.

    Redaction runs after cost so token counts and models are read before anything is masked,
    and before policy so the policy stage can see how much PII was found.
    """
    from processor.cost import build_cost_stage
    from processor.policy_stage import build_policy_stage
    from processor.redact import build_redaction_stage

    stages: list[Stage] = []
    if config.cost.enabled:
        stages.append(build_cost_stage(config.cost, metrics_registry))
    if config.redaction.enabled:
        stages.append(build_redaction_stage(config.redaction, metrics_registry))
    if config.policy.enabled:
        stages.append(build_policy_stage(config.policy, metrics_registry))
    return stages


def check_stages(config: SidecarConfig) -> None:
    """Loads and validates every file the stages would use, without starting threads or opening
    state stores; raises ValueError (or OSError) naming the problem."""
    from processor.cost import build_cost_stage
    from processor.policy_stage import check_policy_config
    from processor.redact import build_redaction_stage

    registry = CollectorRegistry()
    if config.cost.enabled:
        build_cost_stage(config.cost, registry, watch=False).close()
    if config.redaction.enabled:
        build_redaction_stage(config.redaction, registry)
    if config.policy.enabled:
        check_policy_config(config.policy)


def close_stages(stages: list[Stage]) -> None:
    """Stops the stages' reload threads and closes their state stores."""
    for stage in stages:
        close = getattr(stage, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("closing a stage failed", stage=stage.name)


# An extra GET endpoint: gets the request path with its query, returns (status, body, content type).
Route = Callable[[str], tuple[int, bytes, str]]


class Processing(Protocol):
    """Where the pipeline runs: in this process, or in worker processes (processor/workers.py)."""

    async def process(self, signal: str, raw: bytes) -> ProcessedRequest: ...

    def budget_reader(self) -> BudgetStatusReader | None: ...

    def close(self) -> None: ...


def budget_routes(processing: Processing) -> dict[str, Route]:
    """The budget status endpoint, when the policy stage keeps budgets this process can read."""
    from functools import partial

    from processor.budget_api import BUDGETS_PATH, http_budget_status

    reader = processing.budget_reader()
    return {BUDGETS_PATH: partial(http_budget_status, reader)} if reader is not None else {}


class ProbeServer:
    """/healthz, /readyz and /metrics on a plain HTTP port, served from a background thread."""

    def __init__(
        self,
        listen: str,
        registry_source: Callable[[], CollectorRegistry],
        readiness: Readiness,
        routes: dict[str, Route] | None = None,
    ):
        host, _, port = listen.rpartition(":")
        registry_of = registry_source
        state = readiness
        extra_routes = dict(routes or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ready, reasons = state.status()
                    if ready:
                        self._send(200, b"ready\n", "text/plain")
                    else:
                        body = ("not ready: " + "; ".join(reasons) + "\n").encode()
                        self._send(503, body, "text/plain")
                elif path == "/metrics":
                    self._send(200, generate_latest(registry_of()), CONTENT_TYPE_LATEST)
                elif path in extra_routes:
                    self._send(*extra_routes[path](self.path))
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the structured log

        self.httpd = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="probe-http", daemon=True)

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Worker:
    """The gRPC side: receives, hands each request to the processing, forwards the result."""

    def __init__(self, config: SidecarConfig, metrics: SidecarMetrics, processing: Processing) -> None:
        self.config = config
        self.metrics = metrics
        self.processing = processing
        self.forwarder = Forwarder(config.downstream)
        budget = InflightBudget(config.server.max_inflight_requests, config.server.max_recv_message_size_mib * MIB)
        self.service = ExportService(processing.process, self.forwarder, metrics, budget)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.server: aio.Server | None = None
        self.port = 0
        self._stopping = asyncio.Event()

    async def start(self) -> int:
        size = self.config.server.max_recv_message_size_mib * MIB
        server = aio.server(options=[("grpc.max_receive_message_length", size)])
        server.add_generic_rpc_handlers(self.service.handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reader = self.processing.budget_reader()
        if reader is not None:
            from processor.budget_api import add_budget_service

            add_budget_service(server, reader)
        self.port = server.add_insecure_port(self.config.server.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.server.listen}")
        await server.start()
        self.server = server
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "receiving OTLP/gRPC",
            listen=self.config.server.listen,
            port=self.port,
            downstream=self.config.downstream.endpoint,
        )
        return self.port

    async def _set_health(self, status: int) -> None:
        for service in ("", *OTLP_SERVICES):
            result = self.health.set(service, status)
            if asyncio.iscoroutine(result):
                await result

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        if self.server is None:
            return
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        grace = self.config.server.shutdown_grace_seconds
        log.info("shutting down: refusing new requests, finishing in-flight ones", grace_seconds=grace)
        await self.server.stop(grace)
        await self.forwarder.close()
        self.processing.close()
        self.server = None


async def serve_forever(
    config: SidecarConfig, metrics: SidecarMetrics, readiness: Readiness, processing: Processing
) -> None:
    worker = Worker(config, metrics, processing)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        readiness.ready = False
        readiness.reasons = ["shutting down"]
        worker.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await worker.start()
    readiness.ready = True
    readiness.reasons = []
    await worker.wait_stopped()
    log.info("stopped")
