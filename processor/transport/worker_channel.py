"""The hand-off of one request to a worker process and of its result back.

Each worker has two memory-mapped files (the request in, the result out) and a socket pair that
carries only a short header per request and per result. concurrent.futures' ProcessPoolExecutor
pickled every request and result through a pipe in 64 KiB pieces, with a feeder thread and a
manager thread competing with the event loop for the GIL: ~2 ms of the front process's CPU and
~2.5 ms of the worker's per 640 KiB request (benchmarks/RESULTS.md). A request or result larger
than its buffer still goes through the socket, whole.

The files are removed once the worker has mapped them, so nothing is left behind whatever way
either process ends; their pages live in the temp dir's filesystem (a memory-backed emptyDir in
k8s/) and only as far as requests have written into them.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import pickle
import shutil
import signal
import struct
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import structlog

from processor.core.pipeline import Pipeline, ProcessedRequest

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext

    from processor.config import SidecarConfig
    from processor.core.contract import Stage

log = structlog.get_logger(__name__)

READY = b"ready"


class WorkerDied(RuntimeError):
    """The worker process ended (killed, out of memory) before it answered.

    `took_request`: whether it had started on the request, so its death may be the request's doing.
    """

    def __init__(self, message: str, took_request: bool = False) -> None:
        super().__init__(message)
        self.took_request = took_request


# After the request bytes in the request buffer: the number of the request the worker took last,
# written by the worker before it processes it, read by the front process after a death.
TAKEN = struct.Struct("<Q")


@dataclass(frozen=True)
class BufferFiles:
    """Where a worker's request and result buffers are, and their sizes."""

    request_path: str
    request_size: int
    result_path: str
    result_size: int


class MappedBuffer:
    """A file of `size` bytes mapped into memory, shared with the other process."""

    def __init__(self, path: str, size: int, create: bool) -> None:
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)  # sparse: pages exist only once written
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def put(self, data: bytes) -> bool:
        """Copies `data` in; False (nothing copied) when it does not fit."""
        if len(data) > len(self._map) - TAKEN.size:
            return False
        self._map[: len(data)] = data
        return True

    def take(self, length: int) -> bytes:
        return self._map[:length]

    def mark_taken(self, number: int) -> None:
        TAKEN.pack_into(self._map, len(self._map) - TAKEN.size, number)

    def taken(self) -> int:
        return TAKEN.unpack_from(self._map, len(self._map) - TAKEN.size)[0]

    def close(self) -> None:
        self._map.close()


class WorkerProcess:
    """The front process's side of one worker: starts it, sends it requests one at a time."""

    def __init__(self, context: SpawnContext, config: SidecarConfig, name: str) -> None:
        size = config.server.max_recv_message_size_mib * 1024 * 1024
        out = config.downstream.max_send_message_size_mib * 1024 * 1024
        self._dir = tempfile.mkdtemp(prefix="genops-worker-")
        files = BufferFiles(
            os.path.join(self._dir, "request"), size + TAKEN.size, os.path.join(self._dir, "result"), out + TAKEN.size
        )
        self._request = MappedBuffer(files.request_path, files.request_size, create=True)
        self._result = MappedBuffer(files.result_path, files.result_size, create=True)
        self._conn, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(config, child, files), name=name, daemon=True)
        self.process.start()
        child.close()
        self.alive = True
        self._sent = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def ready(self) -> None:
        """Waits for the worker to have built its stages; raises WorkerDied if it could not."""
        try:
            answer = await self._answer()
        finally:
            # Mapped on both sides by now (or never to be): the names are no longer needed.
            shutil.rmtree(self._dir, ignore_errors=True)
        if answer != READY:
            raise WorkerDied(f"worker {self.pid} did not start: {answer!r}")

    async def call(self, signal_name: str, raw: bytes) -> ProcessedRequest:
        """Runs the pipeline on `raw` in the worker; re-raises what the pipeline raised there."""
        inline = None if self._request.put(raw) else raw
        self._sent += 1
        number = self._sent
        try:
            self._conn.send_bytes(pickle.dumps((signal_name, len(raw), inline, number), pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            self.alive = False
            raise WorkerDied(f"worker {self.pid} is gone") from exc
        try:
            message = await self._answer()
        except WorkerDied as exc:
            raise WorkerDied(str(exc), took_request=self._request.taken() == number) from None
        answer = pickle.loads(message)
        if isinstance(answer, BaseException):
            raise answer
        length, items, failed, inline_result = answer
        payload = inline_result if inline_result is not None else self._result.take(length)
        return ProcessedRequest(payload, items, failed)

    async def _answer(self) -> bytes:
        """The worker's next message, read when it arrives without blocking the event loop."""
        loop = asyncio.get_running_loop()
        arrived = loop.create_future()

        def wake() -> None:
            if not arrived.done():
                arrived.set_result(None)

        conn_fd, sentinel = self._conn.fileno(), self.process.sentinel
        loop.add_reader(conn_fd, wake)
        loop.add_reader(sentinel, wake)
        try:
            await arrived
        finally:
            loop.remove_reader(conn_fd)
            loop.remove_reader(sentinel)
        try:
            # A worker that answered and then died still has its answer read.
            if self._conn.poll():
                return self._conn.recv_bytes()
        except (EOFError, OSError):
            pass
        self.alive = False
        raise WorkerDied(f"worker {self.pid} ended (exit code {self.process.exitcode})")

    def stop(self, timeout: float) -> None:
        """Asks the worker to finish (it closes its stages) and waits; kills it past `timeout`."""
        self._conn.close()  # the worker reads end-of-file and returns
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("worker did not stop in time; terminating it", pid=self.pid)
            self.process.terminate()
            self.process.join(5)
        self.discard()

    def discard(self) -> None:
        self.alive = False
        if not self._conn.closed:
            self._conn.close()
        self._request.close()
        self._result.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def build_worker_pipeline(config: SidecarConfig) -> tuple[Pipeline, list[Stage]]:
    """In a fresh (spawned) worker: logging, then the stages and their pipeline.

    PROMETHEUS_MULTIPROC_DIR is in the worker's environment before prometheus_client is first
    imported, as multiprocess mode requires.
    """
    from prometheus_client import CollectorRegistry

    from processor.observability import PipelineMetrics, configure_logging
    from processor.stages.assembly import build_stages

    configure_logging(config.logging.level, config.logging.format)
    structlog.contextvars.bind_contextvars(worker=os.getpid())
    registry = CollectorRegistry()
    stages = build_stages(config, registry)
    return Pipeline(stages, PipelineMetrics.create(registry)), stages


def worker_main(config: SidecarConfig, conn: Connection, files: BufferFiles) -> None:
    """The worker process: builds the stages, then answers requests until the front closes the pipe."""
    # The front process decides when workers stop (after in-flight requests are done): a Ctrl+C
    # reaches the whole process group and must not kill them under a running request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # (The malloc settings of processor/transport/allocator.py came with the front process's environment.)
    from processor.stages.assembly import close_stages

    request = MappedBuffer(files.request_path, files.request_size, create=False)
    result = MappedBuffer(files.result_path, files.result_size, create=False)
    pipeline, stages = build_worker_pipeline(config)
    conn.send_bytes(READY)
    try:
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                return
            conn.send_bytes(_answer(pipeline, request, result, message))
    finally:
        close_stages(stages)


def _answer(pipeline: Any, request: MappedBuffer, result: MappedBuffer, message: bytes) -> bytes:
    signal_name, length, inline, number = pickle.loads(message)
    request.mark_taken(number)
    raw = inline if inline is not None else request.take(length)
    try:
        processed = pipeline.process(signal_name, raw)
        log.debug("batch processed", signal=signal_name, items=processed.items)
    except Exception as exc:
        # Raised again in the front process, which tells a malformed request from a bug.
        try:
            return pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
        except Exception:
            return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"), pickle.HIGHEST_PROTOCOL)
    payload = processed.payload
    placed = result.put(payload)
    answer = (len(payload), processed.items, processed.failed_stages, None if placed else payload)
    return pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
