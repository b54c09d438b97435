"""Process model: the pipeline in this process, or in N worker processes fed request by request.

Python processing is CPU-bound and holds the GIL, so more cores need more processes. The
workers sit behind the one gRPC server of the front process and receive whole requests, not
connections: a Collector exports over a single HTTP/2 connection, so spreading connections
(SO_REUSEPORT) would leave all but one worker idle. The request bytes go to a worker and the
processed bytes come back (a copy each way, small next to the processing itself); the front
process keeps receiving, forwarding, probes and /metrics, where the workers' pipeline and stage
metrics are added through prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

import structlog

from processor.config import SidecarConfig
from processor.pipeline import Pipeline, ProcessedRequest, Stage
from processor.receive import ProcessingUnavailable

if TYPE_CHECKING:
    from processor.budget_api import BudgetStatusReader
    from processor.observability import PipelineMetrics

log = structlog.get_logger(__name__)


class InlineProcessing:
    """The pipeline runs on the event loop of this process (one worker)."""

    def __init__(self, stages: list[Stage], metrics: PipelineMetrics) -> None:
        self.stages = stages
        self.pipeline = Pipeline(stages, metrics)

    async def process(self, signal: str, raw: bytes) -> ProcessedRequest:
        return self.pipeline.process(signal, raw)

    def budget_reader(self) -> BudgetStatusReader | None:
        for stage in self.stages:
            reader = getattr(stage, "budget_status", None)
            if reader is not None:
                return reader
        return None

    def close(self) -> None:
        from processor.server import close_stages

        close_stages(self.stages)


# The pipeline of a worker process, built once by its initializer.
_worker_pipeline: Pipeline | None = None


def _start_worker(config: SidecarConfig) -> None:
    # A fresh (spawned) interpreter: PROMETHEUS_MULTIPROC_DIR is in its environment before
    # prometheus_client is first imported, as multiprocess mode requires.
    global _worker_pipeline
    import signal

    from prometheus_client import CollectorRegistry

    from processor.allocator import tune_allocator
    from processor.observability import PipelineMetrics, configure_logging
    from processor.server import build_stages, close_stages

    # The front process decides when workers stop (after in-flight requests are done): a Ctrl+C
    # reaches the whole process group and must not kill them under a running request. SIGTERM
    # keeps its default: concurrent.futures terminates the workers of a broken pool with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.logging.level, config.logging.format)
    structlog.contextvars.bind_contextvars(worker=os.getpid())
    tune_allocator()
    registry = CollectorRegistry()
    stages = build_stages(config, registry)
    _worker_pipeline = Pipeline(stages, PipelineMetrics.create(registry))
    atexit.register(close_stages, stages)


def _process_in_worker(signal: str, raw: bytes) -> ProcessedRequest:
    assert _worker_pipeline is not None, "worker initializer did not run"
    processed = _worker_pipeline.process(signal, raw)
    log.debug("batch processed", signal=signal, items=processed.items)
    return processed


def _ready() -> int:
    return os.getpid()


class PoolProcessing:
    """The pipeline runs in `workers` spawned processes; requests are queued to whichever is free."""

    def __init__(self, config: SidecarConfig, metrics_dir: str) -> None:
        self.config = config
        self.metrics_dir = metrics_dir
        self._pool = self._new_pool()
        self._reader: BudgetStatusReader | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.config.server.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.config,),
        )

    async def start(self) -> None:
        """Starts every worker (loading pricing tables and rules) before the port opens."""
        loop = asyncio.get_running_loop()
        pids = await asyncio.gather(
            *(loop.run_in_executor(self._pool, _ready) for _ in range(self.config.server.workers * 2))
        )
        log.info("worker processes ready", workers=len(set(pids)))

    async def process(self, signal: str, raw: bytes) -> ProcessedRequest:
        loop = asyncio.get_running_loop()
        pool = self._pool
        try:
            return await loop.run_in_executor(pool, _process_in_worker, signal, raw)
        except BrokenProcessPool as exc:
            # A worker died (killed, out of memory): every request it held fails with
            # UNAVAILABLE, which the Collector retries, and a new pool takes over.
            if pool is self._pool:
                log.error("a worker process died; starting new workers")
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            raise ProcessingUnavailable("a worker process died") from exc

    def budget_reader(self) -> BudgetStatusReader | None:
        # The stages live in the workers; the front process reads the shared store itself. The
        # memory backend is private to each worker, so there is nothing to read from here.
        policy = self.config.policy
        if not policy.enabled or policy.state_backend == "memory":
            return None
        if self._reader is None:
            from processor.budget_api import BudgetStatusReader

            self._reader = BudgetStatusReader.from_config(policy)
        return self._reader

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def run(config: SidecarConfig) -> int:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from processor.observability import PipelineMetrics, SidecarMetrics
    from processor.server import ProbeServer, Readiness, budget_routes, build_stages, serve_forever

    readiness = Readiness(ready=False, reasons=["starting"])
    metrics_dir = None
    any_stage = config.cost.enabled or config.redaction.enabled or config.policy.enabled
    if config.server.workers == 1 or not any_stage:
        # Nothing to process (pass-through) is cheaper here than a hop to a worker and back.
        metrics = SidecarMetrics.create()
        processing: InlineProcessing | PoolProcessing = InlineProcessing(
            build_stages(config, metrics.registry), metrics.pipeline or PipelineMetrics.create(metrics.registry)
        )
    else:
        # This process imported prometheus_client already, so its own metrics stay in memory;
        # only the spawned workers write the multiprocess files, which /metrics adds here.
        metrics_dir = tempfile.mkdtemp(prefix="genops-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=metrics_dir)
        metrics = SidecarMetrics.create(registry, with_pipeline=False)
        processing = PoolProcessing(config, metrics_dir)
    probes = ProbeServer(config.http.listen, lambda: metrics.registry, readiness, budget_routes(processing)).start()
    log.info("probes and /metrics on HTTP", listen=config.http.listen, workers=config.server.workers)

    async def main() -> None:
        if isinstance(processing, PoolProcessing):
            await processing.start()
        await serve_forever(config, metrics, readiness, processing)

    try:
        asyncio.run(main())
    finally:
        probes.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
