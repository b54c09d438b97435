"""Runs a real sidecar worker (gRPC server on 127.0.0.1) in a background thread for tests."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import grpc

from processor.config import DownstreamConfig, ServerConfig, SidecarConfig
from processor.core.contract import Stage
from processor.observability import SidecarMetrics
from processor.transport.server import Worker
from processor.transport.workers import InlineProcessing


class RunningSidecar:
    def __init__(
        self,
        downstream: str,
        stages: list[Stage] | None = None,
        server: ServerConfig | None = None,
        downstream_config: DownstreamConfig | None = None,
    ) -> None:
        downstream_config = dataclasses.replace(downstream_config or DownstreamConfig(), endpoint=downstream)
        self.config = SidecarConfig(
            server=server or ServerConfig(listen="127.0.0.1:0", shutdown_grace_seconds=5),
            downstream=downstream_config,
        )
        self.metrics = SidecarMetrics.create()
        self.stages = stages or []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.worker: Worker | None = None

    def start(self) -> RunningSidecar:
        self._thread.start()

        async def start_worker() -> Worker:
            worker = Worker(self.config, self.metrics, InlineProcessing(self.stages, self.metrics.pipeline))
            await worker.start()
            return worker

        self.worker = asyncio.run_coroutine_threadsafe(start_worker(), self._loop).result(10)
        return self

    @property
    def endpoint(self) -> str:
        assert self.worker is not None
        return f"127.0.0.1:{self.worker.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint)

    def call_soon(self, coroutine) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def stop(self) -> None:
        if self.worker is not None:
            asyncio.run_coroutine_threadsafe(self.worker.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def metric_value(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value
