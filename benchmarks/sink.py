"""The benchmark's backend: an OTLP/gRPC trace sink in its own process that only counts.

It runs apart from the load generator so its work does not compete with the client's event loop
for the GIL, and it parses spans as opaque bytes (a three-level view of the request declared
below) so counting a 1k-span request costs next to nothing. The parent talks to it over a pipe:
`stats()`, `reset()`, and `last_request()` (raw bytes, to check what a target wrote).
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent import futures
from dataclasses import dataclass

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
MIB = 1024 * 1024


def _span_counter():
    """ExportTraceServiceRequest viewed as resource_spans(1) → scope_spans(2) → spans(2) as bytes."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="genops_bench_count.proto", package="genops_bench")
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    scope = file.message_type.add(name="Scope")
    scope.field.add(name="spans", number=2, label=repeated, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES)
    resource = file.message_type.add(name="Resource")
    resource.field.add(name="scope_spans", number=2, label=repeated, type=message, type_name=".genops_bench.Scope")
    request = file.message_type.add(name="Request")
    request.field.add(name="resource_spans", number=1, label=repeated, type=message, type_name=".genops_bench.Resource")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("genops_bench.Request"))


def count_spans(raw: bytes, counter=None) -> int:
    request = (counter or _span_counter()).FromString(raw)
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


def _serve(conn) -> None:
    import grpc

    counter = _span_counter()
    lock = threading.Lock()
    state = {"requests": 0, "spans": 0, "bytes": 0, "last": b""}

    def export(raw: bytes, context) -> bytes:
        spans = count_spans(raw, counter)
        with lock:
            state["requests"] += 1
            state["spans"] += spans
            state["bytes"] += len(raw)
            state["last"] = raw
        return b""  # an empty ExportTraceServiceResponse

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.max_receive_message_length", 256 * MIB), ("grpc.so_reuseport", 0)],
    )
    handler = grpc.unary_unary_rpc_method_handler(export, request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    while True:
        command = conn.recv()
        if command == "stop":
            break
        with lock:
            if command == "stats":
                conn.send((state["requests"], state["spans"], state["bytes"]))
            elif command == "reset":
                state.update(requests=0, spans=0, bytes=0, last=b"")
                conn.send(None)
            elif command == "last":
                conn.send(state["last"])
    server.stop(grace=None).wait()
    conn.send(None)


@dataclass(frozen=True)
class SinkStats:
    requests: int
    spans: int
    bytes: int


class CountingSink:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name="genops-bench-sink", daemon=True)
        self.port = 0

    def start(self) -> CountingSink:
        self._process.start()
        if not self._conn.poll(30):
            raise RuntimeError("benchmark sink did not start")
        self.port = self._conn.recv()
        return self

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def _ask(self, command: str):
        self._conn.send(command)
        return self._conn.recv()

    def stats(self) -> SinkStats:
        return SinkStats(*self._ask("stats"))

    def reset(self) -> None:
        self._ask("reset")

    def last_request(self) -> bytes:
        return self._ask("last")

    def stop(self) -> None:
        if self._process.is_alive():
            self._ask("stop")
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
