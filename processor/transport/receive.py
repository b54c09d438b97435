"""OTLP/gRPC receiver: TraceService, LogsService and MetricsService Export.

Handlers read the request as raw bytes (no deserializer): the pipeline parses it with the lean
view (metrics: only the redaction stage reads them, processor/core/metrics_redaction.py). They are registered as
stream-unary (the same wire format as a unary call) so that a request is admitted before its
message is read, and so decompressed, at all (processor/transport/admission.py).

Durability is left to the Collector's exporter queue: a request is answered OK only after the
downstream accepted it, and a downstream failure is answered with the downstream's own status
code, so the Collector retries exactly what it would have retried against the backend.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc
import structlog
from grpc import aio

from processor.core.decode import MalformedRequest
from processor.core.pipeline import ProcessedRequest
from processor.observability import SidecarMetrics
from processor.transport.admission import InflightBudget
from processor.transport.forward import METHODS, DownstreamError, Forwarder
from processor.transport.poison import PoisonRequest

log = structlog.get_logger(__name__)


class ProcessingUnavailable(RuntimeError):
    """The processing side cannot take the request now (a worker process died); retryable."""


# Runs the pipeline on one request, here or in a worker process.
Process = Callable[[str, bytes], Awaitable[ProcessedRequest]]


class ExportService:
    def __init__(self, process: Process, forwarder: Forwarder, metrics: SidecarMetrics, budget: InflightBudget) -> None:
        self.process = process
        self.forwarder = forwarder
        self.metrics = metrics
        self.budget = budget

    @property
    def inflight(self) -> int:
        return self.budget.requests

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        out = []
        for signal, method in METHODS.items():
            service, _, name = method.strip("/").partition("/")
            handler = grpc.stream_unary_rpc_method_handler(
                self._handler(signal), request_deserializer=None, response_serializer=None
            )
            out.append(grpc.method_handlers_generic_handler(service, {name: handler}))
        return out

    def _handler(self, signal: str) -> Callable[[object, aio.ServicerContext], Awaitable[bytes]]:
        async def export(_requests: object, context: aio.ServicerContext) -> bytes:
            return await self.admit(signal, context)

        return export

    async def admit(self, signal: str, context: aio.ServicerContext) -> bytes:
        # UNAVAILABLE, not RESOURCE_EXHAUSTED: the Collector retries RESOURCE_EXHAUSTED only when
        # the answer carries RetryInfo, and would drop the batch otherwise.
        if not self.budget.enter():
            self.metrics.rejected.labels(signal=signal).inc()
            self.metrics.requests.labels(signal=signal, outcome="rejected").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "genops-sidecar is at max_inflight_requests; retry")
        self.metrics.inflight.inc()
        started = time.perf_counter()
        try:
            if not await self.budget.start_read():
                self.metrics.over_budget.labels(signal=signal).inc()
                self.metrics.requests.labels(signal=signal, outcome="rejected").inc()
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "genops-sidecar is at its budget of request bytes in flight; retry"
                )
            size = 0
            try:
                raw = await context.read()
                size = len(raw) if isinstance(raw, bytes) else 0
            finally:
                await self.budget.end_read(size)
            try:
                if not isinstance(raw, bytes):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request carried no message")
                return await self.export(signal, raw, context)
            finally:
                await self.budget.release(size)
        finally:
            self.budget.leave()
            self.metrics.inflight.dec()
            self.metrics.request_seconds.labels(signal=signal).observe(time.perf_counter() - started)

    async def export(self, signal: str, raw: bytes, context: aio.ServicerContext) -> bytes:
        try:
            processed = await self.process(signal, raw)
        except ProcessingUnavailable as exc:
            self.metrics.requests.labels(signal=signal, outcome="rejected").inc()
            log.error("processing unavailable", signal=signal, error=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"genops-sidecar: {exc}; retry")
        except PoisonRequest as exc:
            self.metrics.poison.labels(signal=signal).inc()
            self.metrics.requests.labels(signal=signal, outcome="malformed").inc()
            if exc.first_refusal:
                log.error("refusing a request that killed worker processes", signal=signal, error=str(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except MalformedRequest as exc:
            self.metrics.malformed.labels(signal=signal).inc()
            self.metrics.requests.labels(signal=signal, outcome="malformed").inc()
            log.warning("malformed request rejected", signal=signal, error=str(exc), size=len(raw))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception:
            # A bug outside any stage (decode, encode glue): the batch still goes out, as received.
            self.metrics.requests.labels(signal=signal, outcome="unprocessed").inc()
            log.exception("processing failed; forwarding the request unmodified", signal=signal, size=len(raw))
            processed = ProcessedRequest(raw, 0, ("pipeline",))
        self.metrics.items.labels(signal=signal).inc(processed.items)
        try:
            response = await self.forwarder.export(signal, processed.payload)
        except DownstreamError as exc:
            self.metrics.forward_errors.labels(signal=signal, code=exc.code.name).inc()
            self.metrics.requests.labels(signal=signal, outcome="forward_error").inc()
            log.warning("downstream export failed", signal=signal, code=exc.code.name, details=exc.details)
            await context.abort(exc.code, str(exc))
        except Exception as exc:
            # Not a gRPC status from the downstream (a client-side failure): UNAVAILABLE, which the
            # Collector retries, rather than the UNKNOWN it would drop the data on.
            self.metrics.forward_errors.labels(signal=signal, code="CLIENT_ERROR").inc()
            self.metrics.requests.labels(signal=signal, outcome="forward_error").inc()
            log.exception("forwarding failed", signal=signal)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"genops-sidecar could not forward: {exc}")
        self.metrics.requests.labels(signal=signal, outcome="ok").inc()
        return response
