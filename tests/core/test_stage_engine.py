"""Which engine ran a stage is never silent: each batch counts its stage's engine in
genops_sidecar_stage_engine{stage, signal, engine}, and the first batch on an engine (or a switch
of engine) logs one `stage engine` line. The polars path taking over a stage (native path off, or a
policy file with more checks than the native verdict table takes) shows there."""

from __future__ import annotations

import pytest
import structlog
from prometheus_client import CollectorRegistry

from processor.config import PolicyConfig, SidecarConfig
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.assembly import build_stages, close_stages
from processor.stages.policy.rules import MAX_TABLE_CHECKS
from tests.support.otlp_builders import span, trace_request

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


@pytest.mark.parametrize(("native", "engine"), [("1", "native"), ("0", "polars")])
def test_each_batch_counts_the_engine_of_each_stage_and_the_first_logs_it(tmp_path, monkeypatch, native, engine):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    registry, lines = run(tmp_path, checks=1, batches=3)
    for stage in ("cost", "redaction", "policy"):
        assert batches_on(registry, stage, engine) == 3, stage
        assert batches_on(registry, stage, "polars" if engine == "native" else "native") == 0, stage
    # One line per stage: the first batch; the same engine again is not news.
    logged = sorted((line["stage"], line["engine"]) for line in lines)
    assert logged == [("cost", engine), ("policy", engine), ("redaction", engine)]


def test_a_policy_file_too_large_for_the_native_table_shows_as_polars_policy_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
    registry, lines = run(tmp_path, checks=MAX_TABLE_CHECKS + 1)
    assert batches_on(registry, "policy", "polars") == 2
    assert batches_on(registry, "policy", "native") == 0
    assert batches_on(registry, "cost", "native") == 2
    assert ("policy", "polars") in {(line["stage"], line["engine"]) for line in lines}
