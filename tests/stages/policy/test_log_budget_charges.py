"""GenAI calls reported only as log records are charged to budgets, once (processor/stages/policy/log_charges.py):
a record naming a span is that span's call and is charged by the span; a retried log request is
charged once; the budget keys are a span's. Real pipeline, cost and policy stages, SQLite state."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.cost.stage import CostStage
from processor.stages.policy.stage import build_policy_stage
from tests.support.genai_spans import llm_span
from tests.support.otlp_builders import any_value, key_values, trace_request
from tests.support.otlp_sink import attributes_to_dict
from tests.support.policy_stages import (
    ML_BUDGET,
    stage_config,
)

DAY = int(dt.datetime(2025, 10, 1, 12, tzinfo=dt.UTC).timestamp()) * 10**9
# o3 at $2/$8 since 2025-06-10: 10k input and 1k output tokens cost $0.028.
O3_CALL = 0.028


def o3_event(span_id: bytes = b"", trace_id: bytes = b"", **attributes: object) -> logs_pb2.LogRecord:
    return logs_pb2.LogRecord(
        time_unix_nano=DAY,
        trace_id=trace_id,
        span_id=span_id,
        body=any_value("inference details"),
        attributes=key_values(
            {
                "event.name": "gen_ai.client.inference.operation.details",
                "gen_ai.provider.name": "openai",
                "gen_ai.response.model": "o3-2025-04-16",
                "gen_ai.usage.input_tokens": 10_000,
                "gen_ai.usage.output_tokens": 1_000,
                "genops.team": "ml",
                "genops.environment": "production",
                **attributes,
            }
        ),
    )


def log_request(records: list[logs_pb2.LogRecord]) -> bytes:
    return logs_pb.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=resource_pb2.Resource(attributes=key_values({"service.name": "chat-api"})),
                scope_logs=[logs_pb2.ScopeLogs(log_records=records)],
            )
        ]
    ).SerializeToString()


@pytest.fixture(params=["1", "0"], ids=["native-decode", "python-decode"])
def pipeline(request, tmp_path, monkeypatch):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", request.param)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(ML_BUDGET)
    config = stage_config(policy_file, state_backend="sqlite", state_path=str(tmp_path / "budgets.sqlite"))
    policy = build_policy_stage(config, CollectorRegistry())
    cost = CostStage(CostConfig(reload_interval_seconds=0), CollectorRegistry(), watch=False)
    yield Pipeline([cost, policy], SidecarMetrics.create())
    policy.close()
    cost.close()


def logs_out(pipeline: Pipeline, raw: bytes) -> list[dict[str, object]]:
    out = pipeline.process_logs(raw)
    assert out.failed_stages == ()
    sent = logs_pb.ExportLogsServiceRequest.FromString(out.payload)
    return [attributes_to_dict(r.attributes) for r in sent.resource_logs[0].scope_logs[0].log_records]


def spans_out(pipeline: Pipeline, request) -> list[dict[str, object]]:
    out = pipeline.process_traces(request.SerializeToString())
    assert out.failed_stages == ()
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

    sent = trace_pb.ExportTraceServiceRequest.FromString(out.payload)
    return [attributes_to_dict(s.attributes) for s in sent.resource_spans[0].scope_spans[0].spans]


def test_a_call_seen_only_as_a_log_event_is_charged_to_the_spans_budget_once(pipeline):
    # A span and the event emitted inside it (same trace and span id): one call, charged by the span.
    traced = llm_span(0.25, start_time_unix_nano=DAY)
    (charged_span,) = spans_out(pipeline, trace_request([traced]))
    assert charged_span["genops.budget.consumed"] == 0.25
    inside, alone = logs_out(
        pipeline,
        log_request([o3_event(span_id=traced.span_id, trace_id=traced.trace_id), o3_event()]),
    )
    assert inside["genops.cost.total"] == pytest.approx(O3_CALL)  # priced, as before
    assert "genops.budget.consumed" not in inside and "genops.policy.result" not in inside
    # The event without a span is the only report of its call: charged to the same budget (team ml).
    assert alone["genops.budget.name"] == "ml-daily"
    assert alone["genops.budget.consumed"] == pytest.approx(0.25 + O3_CALL)
    assert alone["genops.policy.result"] == "ALLOWED"
    # The next span sees both charges, and no third.
    (later,) = spans_out(pipeline, trace_request([llm_span(0.25, start_time_unix_nano=DAY)]))
    assert later["genops.budget.consumed"] == pytest.approx(0.5 + O3_CALL)


def test_a_retried_log_request_is_charged_once(pipeline):
    raw = log_request([o3_event(), o3_event(span_id=b"\0" * 8)])  # an all-zero span id names no span
    first = logs_out(pipeline, raw)
    again = logs_out(pipeline, raw)  # the Collector's retry: the same bytes
    assert [r["genops.budget.consumed"] for r in first] == pytest.approx([O3_CALL, 2 * O3_CALL])
    assert [r["genops.budget.consumed"] for r in again] == [r["genops.budget.consumed"] for r in first]
    (later,) = spans_out(pipeline, trace_request([llm_span(0.25, start_time_unix_nano=DAY)]))
    assert later["genops.budget.consumed"] == pytest.approx(2 * O3_CALL + 0.25)


def test_log_batches_without_genai_usage_pass_the_policy_stage_untouched(pipeline):
    record = logs_pb2.LogRecord(
        time_unix_nano=DAY,
        span_id=os.urandom(8),
        body=any_value("hello"),
        attributes=key_values({"genops.team": "ml", "message": "hello"}),
    )
    raw = log_request([record])
    out = pipeline.process_logs(raw)
    assert out.payload == raw
