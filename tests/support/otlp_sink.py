"""A real OTLP/gRPC server on 127.0.0.1 that records what it is sent.

Tests use it as the "backend" downstream of the sidecar (or of the Collector).
It can be told to fail with a status code to simulate an outage.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

_SERVICES = {
    "opentelemetry.proto.collector.trace.v1.TraceService": (
        trace_pb.ExportTraceServiceRequest,
        trace_pb.ExportTraceServiceResponse,
    ),
    "opentelemetry.proto.collector.logs.v1.LogsService": (
        logs_pb.ExportLogsServiceRequest,
        logs_pb.ExportLogsServiceResponse,
    ),
    "opentelemetry.proto.collector.metrics.v1.MetricsService": (
        metrics_pb.ExportMetricsServiceRequest,
        metrics_pb.ExportMetricsServiceResponse,
    ),
}


@dataclass
class ReceivedSpan:
    span: trace_pb2.Span
    resource_attributes: dict[str, object]

    @property
    def attributes(self) -> dict[str, object]:
        return attributes_to_dict(self.span.attributes)


def any_value_to_python(value: common_pb2.AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_to_dict(value.kvlist_value.values)
    if kind is None:
        return None
    return getattr(value, kind)


def attributes_to_dict(kvs) -> dict[str, object]:
    return {kv.key: any_value_to_python(kv.value) for kv in kvs}


@dataclass
class OtlpSink:
    port: int = 0
    requests: dict[str, list] = field(default_factory=lambda: {name: [] for name in _SERVICES})
    raw_requests: dict[str, list[bytes]] = field(default_factory=lambda: {name: [] for name in _SERVICES})
    fail_code: grpc.StatusCode | None = None
    response_override: bytes | None = None
    delay_seconds: float = 0.0
    # (certificate chain PEM, private key PEM, client CA PEM or None): serve TLS, mTLS with a CA.
    tls: tuple[bytes, bytes, bytes | None] | None = None
    # False: record the raw bytes only (for requests protobuf's recursive parser cannot read).
    parse: bool = True

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def start(self) -> OtlpSink:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        for service, (request_type, response_type) in _SERVICES.items():
            handler = grpc.unary_unary_rpc_method_handler(
                self._make_export(service, request_type, response_type),
                request_deserializer=None,
                response_serializer=None,
            )
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
        if self.tls is None:
            self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            chain, key, client_ca = self.tls
            credentials = grpc.ssl_server_credentials(
                [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
            )
            self.port = server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _make_export(self, service, request_type, response_type):
        def export(raw: bytes, context: grpc.ServicerContext) -> bytes:
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            if self.fail_code is not None:
                context.abort(self.fail_code, "sink told to fail")
            request = request_type.FromString(raw) if self.parse else None
            with self._lock:
                if request is not None:
                    self.requests[service].append(request)
                self.raw_requests[service].append(raw)
            if self.response_override is not None:
                return self.response_override
            return response_type().SerializeToString()

        return export

    def trace_requests(self) -> list[trace_pb.ExportTraceServiceRequest]:
        with self._lock:
            return list(self.requests["opentelemetry.proto.collector.trace.v1.TraceService"])

    def log_requests(self) -> list[logs_pb.ExportLogsServiceRequest]:
        with self._lock:
            return list(self.requests["opentelemetry.proto.collector.logs.v1.LogsService"])

    def metric_requests(self) -> list[metrics_pb.ExportMetricsServiceRequest]:
        with self._lock:
            return list(self.requests["opentelemetry.proto.collector.metrics.v1.MetricsService"])

    def spans(self) -> list[ReceivedSpan]:
        out = []
        for request in self.trace_requests():
            for rs in request.resource_spans:
                resource = attributes_to_dict(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend(ReceivedSpan(span, resource) for span in ss.spans)
        return out

    def wait_for_spans(self, count: int, timeout: float = 30.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans()
            if len(spans) >= count:
                return spans
            time.sleep(0.05)
        return self.spans()
