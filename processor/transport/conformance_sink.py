"""`genops-sidecar conformance --listen HOST:PORT`: an OTLP/gRPC sink (TraceService Export) that
collects what a runtime sends it and, on SIGTERM/SIGINT or after `--count N` requests, checks it as
the file mode does (processor/stages/policy/conformance.py).

Point a sidecar's `downstream.endpoint` (or a Collector's otlp exporter) at it to check the runtime's
real output. Every request is accepted (OK, empty response): the sink judges the telemetry, it does
not push back on it. Requests are kept as they came (bytes) and parsed at the end, so a long run
costs memory, not CPU on the sender's path.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_EMPTY_RESPONSE = trace_pb.ExportTraceServiceResponse().SerializeToString()
# The sidecar's own default; a sink must take whatever its runtime sends.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class _Received:
    """Request bytes in arrival order; `done` is set once `count` requests are in (count 0: never)."""

    count: int
    requests: list[bytes] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, raw: bytes) -> None:
        with self.lock:
            self.requests.append(raw)
            if self.count and len(self.requests) >= self.count:
                self.done.set()


class ConformanceSink:
    def __init__(self, listen: str, count: int = 0) -> None:
        if count < 0:
            raise ValueError(f"--count must be 0 or more, not {count}")
        self._received = _Received(count)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
        )
        handler = grpc.unary_unary_rpc_method_handler(
            self._export,
            request_deserializer=None,  # raw bytes: parsed once, at the end
            response_serializer=None,
        )
        service, method = TRACE_EXPORT.rsplit("/", 1)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.lstrip("/"), {method: handler}),)
        )
        self.port = self._server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        self.host = listen.rsplit(":", 1)[0]

    def _export(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        self._received.add(raw)
        return _EMPTY_RESPONSE

    def start(self) -> ConformanceSink:
        self._server.start()
        return self

    def wait(self, stop: threading.Event) -> None:
        """Until `stop` is set or the count is reached."""
        received = self._received
        while not (stop.is_set() or received.done.is_set()):
            # (Short waits: a signal handler sets `stop` on the main thread between them.)
            stop.wait(0.2)

    def stop(self) -> list[trace_pb.ExportTraceServiceRequest]:
        """Stops (answering the requests already in), then the requests received, parsed. Raises
        ValueError on a request that is not an OTLP trace request."""
        self._server.stop(grace=5).wait(10)
        with self._received.lock:
            raw = list(self._received.requests)
        parsed = []
        for number, data in enumerate(raw, 1):
            try:
                parsed.append(trace_pb.ExportTraceServiceRequest.FromString(data))
            except Exception as exc:  # protobuf's DecodeError, or a RecursionError of a hostile request
                raise ValueError(f"request {number} is not an OTLP trace request: {exc}") from None
        return parsed


def listen_and_collect(
    listen: str,
    count: int,
    announce: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[trace_pb.ExportTraceServiceRequest]:
    """Runs the sink until SIGTERM/SIGINT or `count` requests (0: until a signal); the requests."""
    sink = ConformanceSink(listen, count).start()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # What a test or an operator waits for (port 0 picks a free one).
        announce(f"conformance: listening on {sink.host}:{sink.port}")
        sink.wait(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return sink.stop()
