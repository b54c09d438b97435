"""Calling a sidecar's (or any OTLP receiver's) TraceService Export as a Collector would."""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def export_traces(channel: grpc.Channel, request, **kwargs) -> trace_pb.ExportTraceServiceResponse:
    stub = channel.unary_unary(
        TRACE_METHOD,
        request_serializer=trace_pb.ExportTraceServiceRequest.SerializeToString,
        response_deserializer=trace_pb.ExportTraceServiceResponse.FromString,
    )
    return stub(request, timeout=10, **kwargs)
