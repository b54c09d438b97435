"""Process model: the pipeline in this process, or in N worker processes fed request by request.

Python processing is CPU-bound and holds the GIL, so more cores need more processes. The
workers sit behind the one gRPC server of the front process and receive whole requests, not
connections: a Collector exports over a single HTTP/2 connection, so spreading connections
(SO_REUSEPORT) would leave all but one worker idle. The request bytes go to a worker and the
processed bytes come back through shared memory (processor/transport/worker_channel.py); the front
process keeps receiving, forwarding, probes and /metrics, where the workers' pipeline and stage
metrics are added through prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from processor.config import SidecarConfig
from processor.core.contract import Stage
from processor.core.pipeline import Pipeline, ProcessedRequest
from processor.transport.poison import CrashJournal, PoisonRequests
from processor.transport.receive import ProcessingUnavailable
from processor.transport.worker_channel import WorkerDied, WorkerProcess

if TYPE_CHECKING:
    from processor.observability import PipelineMetrics
    from processor.stages.policy.budget_api import BudgetStatusReader

log = structlog.get_logger(__name__)


class InlineProcessing:
    """The pipeline runs in this process (one worker), one request at a time on its own thread.

    Not on the event loop: a loop busy with a batch cannot start the handlers of the requests
    arriving meanwhile, so they would wait inside gRPC, uncounted, and max_inflight_requests
    would never answer UNAVAILABLE.
    """

    def __init__(self, stages: list[Stage], metrics: PipelineMetrics, journal: CrashJournal | None = None) -> None:
        self.stages = stages
        self.pipeline = Pipeline(stages, metrics)
        self.journal = journal
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pipeline")

    async def process(self, signal: str, raw: bytes) -> ProcessedRequest:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._process, signal, raw)

    def _process(self, signal: str, raw: bytes) -> ProcessedRequest:
        # On the pipeline thread, so the journal names exactly the request being processed.
        if self.journal is None:
            return self.pipeline.process(signal, raw)
        self.journal.begin(raw)
        try:
            return self.pipeline.process(signal, raw)
        finally:
            self.journal.end()

    def budget_reader(self) -> BudgetStatusReader | None:
        for stage in self.stages:
            reader = getattr(stage, "budget_status", None)
            if reader is not None:
                return reader
        return None

    def close(self) -> None:
        from processor.stages.assembly import close_stages

        self._thread.shutdown(wait=True)
        close_stages(self.stages)
        if self.journal is not None:
            self.journal.close()


class PoolProcessing:
    """The pipeline runs in `workers` spawned processes; each request goes to a free one.

    A worker that dies fails only the request it held (UNAVAILABLE, which the Collector retries)
    and is replaced; the others keep serving. A request that kills a second worker is refused
    (processor/transport/poison.py).
    """

    def __init__(self, config: SidecarConfig, metrics_dir: str) -> None:
        self.config = config
        self.metrics_dir = metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._started = 0
        self._workers = [self._spawn() for _ in range(config.server.workers)]
        self._idle: asyncio.Queue[WorkerProcess] | None = None
        self._reader: BudgetStatusReader | None = None
        self._poison = PoisonRequests()
        # Replacements of dead workers still starting, and requests a cancelled caller left behind.
        self._background: set[asyncio.Task] = set()

    def _spawn(self) -> WorkerProcess:
        self._started += 1
        return WorkerProcess(self._context, self.config, f"genops-worker-{self._started}")

    async def start(self) -> None:
        """Starts every worker (loading pricing tables and rules) before the port opens."""
        await asyncio.gather(*(worker.ready() for worker in self._workers))
        self._idle = asyncio.Queue()
        for worker in self._workers:
            self._idle.put_nowait(worker)
        log.info("worker processes ready", workers=len(self._workers))

    async def process(self, signal: str, raw: bytes) -> ProcessedRequest:
        assert self._idle is not None, "start() first"
        self._poison.check(raw)
        while True:
            worker = await self._idle.get()
            # Shielded: a caller that gives up (deadline) must not hand the worker on before its
            # answer is read, or the next request would read it.
            task = asyncio.ensure_future(self._run(worker, signal, raw))
            self._keep(task)
            try:
                return await asyncio.shield(task)
            except WorkerDied as exc:
                if exc.took_request:
                    raise ProcessingUnavailable("a worker process died") from exc
                # It died before it took the request (while idle): not this request's doing.

    async def _run(self, worker: WorkerProcess, signal: str, raw: bytes) -> ProcessedRequest:
        try:
            return await worker.call(signal, raw)
        except WorkerDied as exc:
            log.error("a worker process died; starting a new one", pid=worker.pid, error=str(exc))
            self._replace(worker)
            if exc.took_request:
                digest = self._poison.died_on(raw)
                log.warning("noted the request a worker died on", request=str(digest))
            raise
        finally:
            if worker.alive and self._idle is not None:
                self._idle.put_nowait(worker)

    def _replace(self, dead: WorkerProcess) -> None:
        dead.discard()
        if dead.pid is not None:
            from prometheus_client.multiprocess import mark_process_dead

            # Its "live" gauges (genops_budget_store_up, pending charges) leave the sums: a worker
            # killed while the store was down must not keep it shown down once it is back.
            mark_process_dead(dead.pid, self.metrics_dir)
        replacement = self._spawn()
        self._workers[self._workers.index(dead)] = replacement

        async def when_ready() -> None:
            try:
                await replacement.ready()
            except WorkerDied as exc:
                log.error("a replacement worker did not start", error=str(exc))
                await asyncio.sleep(1)  # no tight respawn loop when workers cannot start at all
                self._replace(replacement)
                return
            if self._idle is not None:
                self._idle.put_nowait(replacement)

        self._keep(asyncio.ensure_future(when_ready()))

    def _keep(self, task: asyncio.Task) -> None:
        self._background.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left does not make it "never retrieved"

    def budget_reader(self) -> BudgetStatusReader | None:
        # The stages live in the workers; the front process reads the shared store itself. The
        # memory backend is private to each worker, so there is nothing to read from here.
        policy = self.config.policy
        if not policy.enabled or policy.state_backend == "memory":
            return None
        if self._reader is None:
            from processor.stages.policy.budget_api import BudgetStatusReader
            from processor.stages.redaction.stage import build_outbound

            self._reader = BudgetStatusReader.from_config(policy, build_outbound(self.config.redaction))
        return self._reader

    def close(self) -> None:
        for worker in self._workers:
            worker.stop(timeout=self.config.server.shutdown_grace_seconds + 10)
        if self._reader is not None:
            # Its store takes over charges dead workers left behind too: stopped like theirs.
            self._reader.store.close()


def crash_journal_dir(config: SidecarConfig) -> Path:
    """Next to the budget state: a volume that outlives the container in k8s/ (an emptyDir)."""
    from processor.stages.policy.budget_state import default_state_path

    return Path(config.policy.state_path or default_state_path()).parent / "crash-journal"


def run(config: SidecarConfig) -> int:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from processor.observability import PipelineMetrics, SidecarMetrics
    from processor.stages.assembly import build_stages
    from processor.transport.server import ProbeServer, Readiness, budget_routes, reservation_routes, serve_forever

    readiness = Readiness(ready=False, reasons=["starting"])
    metrics_dir = None
    any_stage = config.cost.enabled or config.redaction.enabled or config.policy.enabled
    if config.server.workers == 1 or not any_stage:
        # Nothing to process (pass-through) is cheaper here than a hop to a worker and back.
        metrics = SidecarMetrics.create()
        processing: InlineProcessing | PoolProcessing = InlineProcessing(
            build_stages(config, metrics.registry),
            metrics.pipeline or PipelineMetrics.create(metrics.registry),
            CrashJournal.open(crash_journal_dir(config)),
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
    routes = budget_routes(processing, config.budget_api)
    post_routes = reservation_routes(processing, config, metrics.registry)
    probes = ProbeServer(config.http, lambda: metrics.registry, readiness, routes, post_routes).start()
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
