"""Runs one sidecar worker: gRPC receiver, health, HTTP probes and /metrics, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from processor.config import BudgetApiConfig, HttpConfig, SidecarConfig
from processor.core.pipeline import ProcessedRequest
from processor.observability import SidecarMetrics
from processor.stages.policy.budget_store_guard import store_degraded
from processor.transport.admission import InflightBudget
from processor.transport.forward import Forwarder
from processor.transport.http_server import BoundedHttpServer, HttpRequest, HttpResponse
from processor.transport.receive import ExportService

if TYPE_CHECKING:
    from processor.stages.policy.budget_api import BudgetStatusReader
    from processor.stages.policy.reservations import ReservationBook

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


# An extra GET endpoint: the request (path with its query, credentials) to its response.
Route = Callable[[HttpRequest], HttpResponse]


class Processing(Protocol):
    """Where the pipeline runs: in this process, or in worker processes (processor/transport/workers.py)."""

    async def process(self, signal: str, raw: bytes) -> ProcessedRequest: ...

    def budget_reader(self) -> BudgetStatusReader | None: ...

    def close(self) -> None: ...


def budget_routes(processing: Processing, budget_api: BudgetApiConfig) -> dict[str, Route]:
    """The budget status endpoint, when the policy stage keeps budgets this process can read;
    behind the bearer token of `budget_api` when one is set."""
    from processor.stages.policy.budget_api import BUDGETS_PATH, BudgetAccess, http_budget_status

    reader = processing.budget_reader()
    if reader is None:
        return {}
    access = BudgetAccess.from_config(budget_api)

    def budgets(request: HttpRequest) -> HttpResponse:
        if not access.allows(request.authorization):
            body = b'{"error": "missing or wrong bearer token"}\n'
            return HttpResponse(401, body, "application/json", (("WWW-Authenticate", 'Bearer realm="genops"'),))
        return HttpResponse(*http_budget_status(reader, request.path))

    def ledger(request: HttpRequest) -> HttpResponse:
        from processor.billing.ledger_cli import http_ledger

        if not access.allows(request.authorization):
            body = b'{"error": "missing or wrong bearer token"}\n'
            return HttpResponse(401, body, "application/json", (("WWW-Authenticate", 'Bearer realm="genops"'),))
        return HttpResponse(*http_ledger(reader.store, reader.outbound, request.path))

    from processor.billing.ledger_cli import LEDGER_PATH

    return {BUDGETS_PATH: budgets, LEDGER_PATH: ledger}


def reservation_routes(processing: Processing, config: SidecarConfig, registry: CollectorRegistry) -> dict[str, Route]:
    """POST /v1/reservations and /v1/reservations/release (processor/stages/policy/reservations.py), behind
    the budget API's bearer token."""
    from processor.stages.policy.budget_api import BudgetAccess
    from processor.stages.policy.reservations import (
        RELEASE_PATH,
        RESERVATIONS_PATH,
        book_for,
        http_release,
        http_reserve,
    )

    reader = processing.budget_reader()
    if reader is None:
        return {}
    access = BudgetAccess.from_config(config.budget_api)
    book = book_for(config, reader, registry)

    def guarded(answer: Callable[[object, bytes], tuple[int, bytes, str]]) -> Route:
        def route(request: HttpRequest) -> HttpResponse:
            if not access.allows(request.authorization):
                body = b'{"error": "missing or wrong bearer token"}\n'
                return HttpResponse(401, body, "application/json", (("WWW-Authenticate", 'Bearer realm="genops"'),))
            return HttpResponse(*answer(book, request.body))

        return route

    return {RESERVATIONS_PATH: guarded(http_reserve), RELEASE_PATH: guarded(http_release)}  # type: ignore[arg-type]


class ProbeServer:
    """/healthz, /readyz and /metrics (always open: the kubelet and Prometheus carry no token) and
    the extra routes, on the plain HTTP port (processor/transport/http_server.py)."""

    def __init__(
        self,
        http: HttpConfig,
        registry_source: Callable[[], CollectorRegistry],
        readiness: Readiness,
        routes: dict[str, Route] | None = None,
        post_routes: dict[str, Route] | None = None,
    ):
        self.registry_source = registry_source
        self.readiness = readiness
        self.routes = dict(routes or {})
        self.post_routes = dict(post_routes or {})
        self.server = BoundedHttpServer(http, self.handle)
        self.port = self.server.port

    def handle(self, request: HttpRequest) -> HttpResponse:
        path = request.path.split("?", 1)[0]
        if request.method == "POST" or path in self.post_routes:
            if request.method == "POST" and path in self.post_routes:
                return self.post_routes[path](request)
            allow = "POST" if path in self.post_routes else "GET"
            return HttpResponse(405, b"method not allowed\n", headers=(("Allow", allow),))
        if path == "/healthz":
            return HttpResponse(200, b"ok\n")
        if path == "/readyz":
            ready, reasons = self.readiness.status()
            if ready:
                # A budget store outage keeps the node ready (charges are kept), but says so.
                degraded = store_degraded(self.registry_source())
                return HttpResponse(200, f"ready\n{degraded}\n".encode() if degraded else b"ready\n")
            return HttpResponse(503, ("not ready: " + "; ".join(reasons) + "\n").encode())
        if path == "/metrics":
            return HttpResponse(200, generate_latest(self.registry_source()), CONTENT_TYPE_LATEST)
        if path in self.routes:
            return self.routes[path](request)
        return HttpResponse(404, b"not found\n")

    def start(self) -> ProbeServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


def _check_port_free(listen: str) -> None:
    """Binds the address once without SO_REUSEPORT, so a taken port is one clear error here instead
    of gRPC's own log line and a vaguer one after it."""
    host, _, port = listen.rpartition(":")
    if int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(f"server.listen {listen}: cannot resolve the host ({exc.strerror})") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise OSError(f"server.listen {listen}: cannot listen ({exc.strerror or exc})") from None


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
        self.book: ReservationBook | None = None
        self.port = 0
        self._stopping = asyncio.Event()

    async def start(self) -> int:
        size = self.config.server.max_recv_message_size_mib * MIB
        # No SO_REUSEPORT: a second sidecar on the same port must fail to start, not share the port.
        server = aio.server(options=[("grpc.max_receive_message_length", size), ("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(self.service.handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reader = self.processing.budget_reader()
        if reader is not None:
            from processor.stages.policy.budget_api import BudgetAccess, add_budget_service

            access = BudgetAccess.from_config(self.config.budget_api)
            if access.open:
                log.warning(
                    "the budget API is open to anyone reaching the gRPC and HTTP ports",
                    token_env=self.config.budget_api.token_env,
                )
            add_budget_service(server, reader, access)
            from processor.stages.policy.reservations import add_reservation_service, book_for

            self.book = book_for(self.config, reader, self.metrics.registry)
            add_reservation_service(server, self.book, access)
        listen = self.config.server.listen
        _check_port_free(listen)
        try:
            self.port = server.add_insecure_port(listen)
        except RuntimeError as exc:  # grpcio raises this when the address is taken
            raise OSError(f"server.listen {listen}: cannot listen ({exc})") from None
        if self.port == 0:
            raise OSError(f"server.listen {listen}: cannot listen (address in use or not local)")
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
        if self.book is not None:
            from processor.stages.policy.reservations import forget_book

            forget_book(self.book)
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
