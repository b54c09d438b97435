"""GenAI events sent as logs (gen_ai.client.inference.operation.details) are priced like spans,
by the record's time, on the native and the polars path."""

from __future__ import annotations

import datetime as dt

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.logs.v1 import logs_pb2
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.cost.stage import CostStage
from tests.support.otlp_builders import any_value, key_values

EVENT = {"event.name": "gen_ai.client.inference.operation.details"}


def at(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()) * 10**9


def record(attributes: dict[str, object], time_ns: int = 0, observed_ns: int = 0) -> logs_pb2.LogRecord:
    return logs_pb2.LogRecord(
        time_unix_nano=time_ns,
        observed_time_unix_nano=observed_ns,
        body=any_value("inference details"),
        attributes=key_values(attributes),
    )


def run(records: list[logs_pb2.LogRecord]) -> list[dict[str, object]]:
    stage = CostStage(CostConfig(reload_interval_seconds=0), CollectorRegistry(), watch=False)
    request = logs_pb.ExportLogsServiceRequest(
        resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=records)])]
    )
    out = Pipeline([stage], SidecarMetrics.create()).process_logs(request.SerializeToString())
    parsed = logs_pb.ExportLogsServiceRequest.FromString(out.payload)
    got = []
    for item in parsed.resource_logs[0].scope_logs[0].log_records:
        assert item.body.string_value == "inference details"
        values = {}
        for kv in item.attributes:
            kind = kv.value.WhichOneof("value")
            values[kv.key] = getattr(kv.value, kind)
        got.append(values)
    return got


def o3(tokens_in: int, tokens_out: int) -> dict[str, object]:
    return {
        **EVENT,
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": "o3-2025-04-16",
        "gen_ai.usage.input_tokens": tokens_in,
        "gen_ai.usage.output_tokens": tokens_out,
    }


@pytest.mark.parametrize("native", ["1", "0"])
def test_genai_log_events_are_priced_by_their_own_time(monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    before, after, observed, other = run(
        [
            record(o3(10_000, 1_000), time_ns=at("2025-05-01T12:00:00")),  # o3 at $10/$40
            record(o3(10_000, 1_000), time_ns=at("2025-10-01T12:00:00")),  # $2/$8 since 2025-06-10
            record(o3(10_000, 1_000), observed_ns=at("2025-05-02T08:00:00")),  # no time: the observed one
            record({"event.name": "app.log", "message": "hello"}, time_ns=at("2025-10-01T12:00:00")),
        ]
    )
    assert before["genops.cost.total"] == pytest.approx(0.1 + 0.04)
    assert after["genops.cost.total"] == pytest.approx(0.02 + 0.008)
    assert observed["genops.cost.total"] == pytest.approx(0.14)
    assert before["genops.cost.status"] == "priced" and before["genops.cost.model"] == "o3"
    assert other == {"event.name": "app.log", "message": "hello"}


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_log_batch_without_usage_passes_unchanged(monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    (plain,) = run([record({"message": "hello", "gen_ai.request.model": "gpt-4o"}, time_ns=at("2025-10-01"))])
    assert plain == {"message": "hello", "gen_ai.request.model": "gpt-4o"}
