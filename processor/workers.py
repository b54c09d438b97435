"""Process model: one worker in-process, or N worker processes sharing the port.

Python processing is CPU-bound and holds the GIL, so cores are used by processes, each with its
own gRPC server bound with SO_REUSEPORT; the kernel spreads the Collector's connections across
them. The parent keeps the HTTP probes and serves /metrics aggregated over all workers through
prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading

import structlog

from processor.config import SidecarConfig

log = structlog.get_logger(__name__)


def run(config: SidecarConfig) -> int:
    if config.server.workers == 1:
        return _run_single(config)
    return _run_supervisor(config)


def _run_single(config: SidecarConfig) -> int:
    from processor.observability import SidecarMetrics
    from processor.server import ProbeServer, Readiness, budget_routes, build_stages, serve_forever

    metrics = SidecarMetrics.create()
    readiness = Readiness(ready=False, reasons=["starting"])
    stages = build_stages(config, metrics.registry)
    probes = ProbeServer(config.http.listen, lambda: metrics.registry, readiness, budget_routes(stages)).start()
    log.info("probes and /metrics on HTTP", listen=config.http.listen)
    try:
        asyncio.run(serve_forever(config, metrics, readiness, stages))
    finally:
        probes.stop()
    return 0


def _worker_main(config: SidecarConfig, index: int) -> None:
    # Runs in a fresh (spawned) interpreter, so PROMETHEUS_MULTIPROC_DIR is already in the
    # environment when prometheus_client is first imported, as multiprocess mode requires.
    from processor.observability import SidecarMetrics, configure_logging
    from processor.server import Readiness, build_stages, serve_forever

    configure_logging(config.logging.level, config.logging.format)
    structlog.contextvars.bind_contextvars(worker=index)
    metrics = SidecarMetrics.create()
    stages = build_stages(config, metrics.registry)
    asyncio.run(serve_forever(config, metrics, Readiness(), stages))


def _workers_problem(children: list, listen: str) -> str | None:
    """Ready means every worker lives and the shared port answers gRPC health checks."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    dead = [child.name for child in children if not child.is_alive()]
    if dead:
        return f"worker exited: {', '.join(dead)}"
    host, _, port = listen.rpartition(":")
    target = f"{'127.0.0.1' if host in ('0.0.0.0', '', '[::]') else host}:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
    except grpc.RpcError as exc:
        return f"workers not serving yet ({exc.code().name})"
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        return "workers not serving"
    return None


def _supervisor_routes(config: SidecarConfig) -> dict:
    """The budget API in the supervisor reads the shared store itself (the workers' stages live in
    other processes); with the memory backend there is nothing shared to read, so no route."""
    if not config.policy.enabled or config.policy.state_backend == "memory":
        return {}
    from functools import partial

    from processor.budget_api import BUDGETS_PATH, BudgetStatusReader, http_budget_status

    return {BUDGETS_PATH: partial(http_budget_status, BudgetStatusReader.from_config(config.policy))}


def _run_supervisor(config: SidecarConfig) -> int:
    if config.server.listen.endswith(":0"):
        log.error("several workers need a fixed port to share; server.listen ends in :0")
        return 2
    metrics_dir = tempfile.mkdtemp(prefix="genops-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from processor.server import ProbeServer, Readiness

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_worker_main, args=(config, index), name=f"genops-worker-{index}")
        for index in range(config.server.workers)
    ]
    for child in children:
        child.start()
    readiness = Readiness(ready=True, check=lambda: _workers_problem(children, config.server.listen))
    probes = ProbeServer(config.http.listen, lambda: registry, readiness, _supervisor_routes(config)).start()
    log.info("started worker processes", workers=len(children), listen=config.server.listen)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        readiness.ready = False
        readiness.reasons = ["shutting down"]
        stop.set()
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exit_code = 0
    try:
        while not stop.is_set():
            dead = [child for child in children if not child.is_alive()]
            if dead:
                # A dead worker leaves part of the port's connections unserved; failing the
                # whole pod lets Kubernetes restart it rather than run at reduced capacity.
                log.error("worker process exited; stopping", worker=dead[0].name, exitcode=dead[0].exitcode)
                readiness.ready = False
                readiness.reasons = [f"{dead[0].name} exited"]
                on_signal(signal.SIGTERM, None)
                exit_code = 1
                break
            stop.wait(0.5)
        for child in children:
            child.join(config.server.shutdown_grace_seconds + 5)
            if child.is_alive():
                child.kill()
    finally:
        probes.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code
