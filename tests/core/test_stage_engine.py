"""Which engine ran a stage is never silent: each batch counts its stage's engine in
genops_sidecar_stage_engine{stage, signal, engine}, and the first batch on an engine (or a switch
of engine) logs one `stage engine` line. There is one engine at run time, the native one (issue
19): the polars per-span implementations are the differential oracles under tests/oracle/."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import structlog
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.logs.v1 import logs_pb2
from prometheus_client import CollectorRegistry

import processor
from processor.config import PolicyConfig, SidecarConfig
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.assembly import build_stages, close_stages
from tests.support.otlp_builders import key_values, span, trace_request
from tests.support.otlp_sink import attributes_to_dict

LLM = {
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 100,
    "gen_ai.usage.output_tokens": 20,
    "note": "mail ada@example.com",
}


def policy_with(checks: int) -> str:
    lines = ["policies:"]
    for index in range(checks):
        lines.append(f"  - {{name: cap-{index}, type: max_cost_per_operation, max_usd: {index + 1}, mode: advisory}}")
    return "\n".join(lines) + "\n"


def run(tmp_path, checks: int, batches: int = 2):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_with(checks))
    config = SidecarConfig(policy=PolicyConfig(policy_file=str(policy), state_backend="memory"))
    registry = CollectorRegistry()
    stages = build_stages(config, registry)
    metrics = SidecarMetrics.create(registry)
    pipeline = Pipeline(stages, metrics.pipeline)
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(batches):
                out = pipeline.process_traces(
                    trace_request([span(attributes=LLM), span(attributes=LLM)]).SerializeToString()
                )
                assert out.failed_stages == ()
    finally:
        close_stages(stages)
    return registry, [line for line in logs if line["event"] == "stage engine"]


def batches_on(registry: CollectorRegistry, stage: str, engine: str) -> float:
    labels = {"stage": stage, "signal": "traces", "engine": engine}
    return registry.get_sample_value("genops_sidecar_stage_engine_total", labels) or 0.0


@pytest.mark.parametrize("decoder", ["1", "0"])
def test_every_stage_runs_on_the_native_engine_whatever_the_decoder(tmp_path, monkeypatch, decoder):
    """One engine at run time: GENOPS_NATIVE_DECODE=0 switches the decoder and encoder to pure
    Python (their oracle), never a stage to polars."""
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", decoder)
    registry, lines = run(tmp_path, checks=1, batches=3)
    for stage in ("cost", "redaction", "policy"):
        assert batches_on(registry, stage, "native") == 3, stage
        assert batches_on(registry, stage, "polars") == 0, stage
    # One line per stage: the first batch; the same engine again is not news.
    logged = sorted((line["stage"], line["engine"]) for line in lines)
    assert logged == [("cost", "native"), ("policy", "native"), ("redaction", "native")]


def test_a_policy_file_of_many_checks_stays_on_the_native_engine(tmp_path, monkeypatch):
    # More checks than the native verdict table once took (the polars path then ran the stage).
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
    registry, lines = run(tmp_path, checks=200)
    assert batches_on(registry, "policy", "native") == 2
    assert batches_on(registry, "policy", "polars") == 0
    assert {line["engine"] for line in lines} == {"native"}


def test_no_stage_runs_polars():
    """The cost, redaction and policy polars per-span implementations live under tests/oracle/
    only: no module of the package but the one defining the label names it."""
    package = Path(processor.__file__).parent
    naming = sorted(
        str(path.relative_to(package)) for path in package.rglob("*.py") if "ENGINE_POLARS" in path.read_text()
    )
    assert naming == ["core/contract.py"]


ATTRIBUTE_BUDGET = """
budgets:
  - name: per-conversation
    attribute: gen_ai.conversation.id
    max_subjects: 1
    limit_usd: 1.0
    period: daily
    mode: advisory
"""


def test_attribute_budgets_and_log_only_calls_run_on_the_native_engine(tmp_path, monkeypatch):
    """The two cases the policy stage once ran on its polars queries: a budget keyed on a span
    attribute (subjects capped in the store) and GenAI calls seen only as log records."""
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
    policy = tmp_path / "policy.yaml"
    policy.write_text(ATTRIBUTE_BUDGET)
    config = SidecarConfig(
        policy=PolicyConfig(policy_file=str(policy), state_backend="memory", budget_attributes="gen_ai.conversation.id")
    )
    registry = CollectorRegistry()
    stages = build_stages(config, registry)
    pipeline = Pipeline(stages, SidecarMetrics.create(registry).pipeline)
    try:
        calls = [span(attributes={**LLM, "gen_ai.conversation.id": f"c-{i}"}) for i in range(2)]
        assert pipeline.process_traces(trace_request(calls).SerializeToString()).failed_stages == ()
        record = logs_pb2.LogRecord(
            time_unix_nano=1_760_000_000_000_000_000,
            attributes=key_values({**LLM, "gen_ai.conversation.id": "c-0"}),
        )
        raw = logs_pb.ExportLogsServiceRequest(
            resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=[record])])]
        ).SerializeToString()
        out = pipeline.process_logs(raw)
        assert out.failed_stages == ()
        (charged,) = logs_pb.ExportLogsServiceRequest.FromString(out.payload).resource_logs[0].scope_logs[0].log_records
        assert attributes_to_dict(charged.attributes)["genops.budget.name"] == "per-conversation"
    finally:
        close_stages(stages)
    for signal in ("traces", "logs"):
        labels = {"stage": "policy", "signal": signal, "engine": "native"}
        assert registry.get_sample_value("genops_sidecar_stage_engine_total", labels) == 1.0, signal
        labels["engine"] = "polars"
        assert registry.get_sample_value("genops_sidecar_stage_engine_total", labels) is None, signal


def test_the_native_extension_is_required_by_the_build():
    """A failed build of the extension fails the install (setuptools-rust's `optional` would
    install a package without its engine)."""
    pyproject = tomllib.loads((Path(processor.__file__).parent.parent / "pyproject.toml").read_text())
    (extension,) = pyproject["tool"]["setuptools-rust"]["ext-modules"]
    assert extension["target"] == "processor._otlp_native"
    assert extension.get("optional", False) is False
