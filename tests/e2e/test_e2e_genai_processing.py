"""GenAI spans and logs go round the real Collector and arrive at the backend priced and redacted.

Same loop as test_e2e_collector.py (shipped Collector config, sidecar as a process, OtlpSink as the
backend); here the payload is what the sidecar exists for: prompts carrying emails, card numbers and
API keys, and token counts to price.
"""

from __future__ import annotations

import time

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from processor.stages.policy import conformance
from tests.support.collector_harness import sidecar_loop
from tests.support.otel_traffic import received_log_bodies, wait_for_items
from tests.support.otlp_builders import log_request
from tests.support.otlp_sink import OtlpSink

pytestmark = pytest.mark.e2e

EMAIL = "jane.doe@example.org"
CARD = "4111 1111 1111 1111"  # Luhn-valid test Visa number
OPENAI_KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0aBcDeFgH"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRETS = (EMAIL, CARD, OPENAI_KEY, AWS_KEY)
N_SPANS = 40


def send_chat_spans(endpoint: str) -> set[str]:
    resource = {"service.name": "support-bot", "genops.team": "support", "deployment.environment.name": "production"}
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10), schedule_delay_millis=50)
    )
    tracer = provider.get_tracer("genops.e2e.genai")
    names = set()
    for i in range(N_SPANS):
        name = f"chat gpt-4o-mini #{i}"
        with tracer.start_as_current_span(name) as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.provider.name", "openai")
            span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
            span.set_attribute("gen_ai.usage.input_tokens", 1_000_000)
            span.set_attribute("gen_ai.usage.output_tokens", 500_000)
            span.set_attribute(
                "gen_ai.user.message",
                f"I am {EMAIL}, my card is {CARD}; use key {OPENAI_KEY} or {AWS_KEY} to check order 12345",
            )
        names.add(name)
    provider.force_flush(timeout_millis=15000)
    provider.shutdown()
    return names


def test_prompts_arrive_redacted_and_priced_through_the_real_collector(sink: OtlpSink):
    with sidecar_loop(sink) as loop:
        sent = send_chat_spans(loop.apps_endpoint)
        wait_for_items(lambda: [r.span.name for r in sink.spans()], sent, 60.0)
    spans = {r.span.name: r.attributes for r in sink.spans()}
    assert set(spans) == sent
    raw = b"".join(sink.raw_requests["opentelemetry.proto.collector.trace.v1.TraceService"])
    for secret in SECRETS:
        assert secret.encode() not in raw, f"{secret} reached the backend"
    for attributes in spans.values():
        message = attributes["gen_ai.user.message"]
        # Only the sensitive substrings are masked; the rest of the prompt is still useful.
        assert "check order 12345" in message
        assert attributes["genops.redaction.count"] >= 1
        assert "gen_ai.user.message" in attributes["genops.redaction.keys"]
        # gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens.
        assert attributes["genops.cost.input"] == pytest.approx(0.15)
        assert attributes["genops.cost.output"] == pytest.approx(0.30)
        assert attributes["genops.cost.total"] == pytest.approx(0.45)
        assert attributes["genops.cost.status"] == "priced"
        # Token counts are never redacted.
        assert attributes["gen_ai.usage.input_tokens"] == 1_000_000
    # Every span is a GenOps v0.1 AI Workload Unit with the required attributes (partial compliance:
    # there is no reservation before execution).
    report = conformance.check(sink.trace_requests(), conformance.PARTIAL)
    assert (report.units, report.violations) == (N_SPANS, ())


def test_log_bodies_arrive_redacted_through_the_real_collector(sink: OtlpSink):
    bodies = [f"user {EMAIL} pasted {CARD} (ticket {i})" for i in range(5)]
    with sidecar_loop(sink) as loop, grpc.insecure_channel(loop.apps_endpoint) as channel:
        channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            request_serializer=logs_pb.ExportLogsServiceRequest.SerializeToString,
            response_deserializer=logs_pb.ExportLogsServiceResponse.FromString,
        )(log_request(bodies), timeout=10)
        # Redacted bodies differ from what was sent, so wait on how they end instead.
        endings = {f"(ticket {i})" for i in range(len(bodies))}
        received = received_log_bodies(sink)
        deadline = time.monotonic() + 60
        while {b[b.rfind("(") :] for b in received} != endings and time.monotonic() < deadline:
            time.sleep(0.1)
            received = received_log_bodies(sink)
    assert len(received) == len(bodies)
    for body in received:
        assert EMAIL not in body and CARD not in body
        assert body.startswith("user ")
