"""One request through a real `Pipeline` of the stages under test, and what it forwards."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.trace.v1 import trace_pb2

from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from tests.support.otlp_builders import key_values, trace_request
from tests.support.otlp_sink import attributes_to_dict


def run_traces(stage, request: trace_pb.ExportTraceServiceRequest) -> trace_pb.ExportTraceServiceRequest:
    out = Pipeline([stage], SidecarMetrics.create()).process_traces(request.SerializeToString())
    assert out.failed_stages == ()
    return trace_pb.ExportTraceServiceRequest.FromString(out.payload)


def run_logs(stage, request: logs_pb.ExportLogsServiceRequest) -> logs_pb.ExportLogsServiceRequest:
    out = Pipeline([stage], SidecarMetrics.create()).process_logs(request.SerializeToString())
    assert out.failed_stages == ()
    return logs_pb.ExportLogsServiceRequest.FromString(out.payload)


def spans_of(request: trace_pb.ExportTraceServiceRequest) -> list:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def written_spans(stages, request: trace_pb.ExportTraceServiceRequest) -> list[dict[str, object]]:
    """Every forwarded span's attributes as written, its events under "_events" as (name, attributes)."""
    out = Pipeline(stages, SidecarMetrics.create()).process_traces(request.SerializeToString())
    assert out.failed_stages == ()
    sent = trace_pb.ExportTraceServiceRequest.FromString(out.payload)
    return [
        {**attributes_to_dict(s.attributes), "_events": [(e.name, attributes_to_dict(e.attributes)) for e in s.events]}
        for s in spans_of(sent)
    ]


def run_pipeline(stage, request: trace_pb.ExportTraceServiceRequest) -> list[dict[str, object]]:
    """Processes one request through a real pipeline of one stage; the spans as `written_spans` gives them."""
    return written_spans([stage], request)


def request_of(spans: list[dict[str, object]]) -> trace_pb.ExportTraceServiceRequest:
    """`written_spans` output as a request again (the conformance check reads requests), span ids
    0, 1, ... (hex). Takes the "_events" entry out of each dict."""
    built = []
    for index, attributes in enumerate(spans):
        events = attributes.pop("_events")
        built.append(
            trace_pb2.Span(
                trace_id=b"\x01" * 16,
                span_id=bytes([index]),
                name="s",
                attributes=key_values(attributes),
                events=[trace_pb2.Span.Event(name=n, attributes=key_values(a)) for n, a in events],
            )
        )
    return trace_request(built)
