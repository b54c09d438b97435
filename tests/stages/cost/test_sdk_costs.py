"""Costs an SDK reports under any of the conventions are read as genops.cost.total; ours and the
difference are written beside them, so price drift shows; unusable ones are ignored and counted."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from processor.config import CostConfig
from processor.stages.cost.stage import CostStage
from tests.support.cost_helpers import process, write_small_table

# gpt-4o at $2.50/M input in the small table: 1M input tokens cost $2.50 by our prices.
TOKENS = {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1_000_000}


def stage_for(tmp_path, override: bool = False) -> tuple[CostStage, CollectorRegistry]:
    table = write_small_table(tmp_path / "p.yaml")
    registry = CollectorRegistry()
    config = CostConfig(pricing_file=str(table), reload_interval_seconds=0, override_sdk_costs=override)
    return CostStage(config, registry, watch=False), registry


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("key", ["gen_ai.usage.cost", "gen_ai.usage.cost.amount", "llm.cost.total"])
def test_an_sdk_cost_under_another_convention_is_the_spans_cost(tmp_path, monkeypatch, native, key):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    stage, _ = stage_for(tmp_path)
    _, (sdk, text, without_tokens, plain) = process(
        stage,
        [
            {**TOKENS, key: 2.2},
            {**TOKENS, key: " 3 "},
            {"gen_ai.request.model": "gpt-4o", key: 0.4},
            TOKENS,
        ],
    )
    assert sdk == {
        "genops.cost.total": 2.2,
        "genops.cost.computed_total": pytest.approx(2.5),
        "genops.cost.sdk_difference": pytest.approx(-0.3),
    }
    assert text["genops.cost.total"] == 3.0 and text["genops.cost.sdk_difference"] == pytest.approx(0.5)
    assert without_tokens == {"genops.cost.total": 0.4}  # nothing of ours to compare it with
    assert plain["genops.cost.total"] == pytest.approx(2.5) and "genops.cost.sdk_difference" not in plain


@pytest.mark.parametrize("native", ["1", "0"])
def test_the_first_usable_sdk_cost_wins(tmp_path, monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    stage, _ = stage_for(tmp_path)
    _, (ours_first, past_a_bad_one, openinference) = process(
        stage,
        [
            {**TOKENS, "genops.cost.total": 1.0, "gen_ai.usage.cost": 9.0},
            {**TOKENS, "genops.cost.total": "n/a", "gen_ai.usage.cost": -1.0, "llm.cost.total": 2.0},
            {**TOKENS, "gen_ai.usage.cost.amount": float("nan"), "llm.cost.total": 2.75},
        ],
    )
    assert ours_first.get("genops.cost.total", 1.0) == 1.0  # already there as that number
    assert ours_first["genops.cost.sdk_difference"] == pytest.approx(-1.5)
    assert past_a_bad_one["genops.cost.total"] == 2.0
    assert openinference["genops.cost.total"] == 2.75
    assert openinference["genops.cost.sdk_difference"] == pytest.approx(0.25)


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("sent", [float("nan"), float("inf"), float("-inf"), -0.01, "abc", ""])
@pytest.mark.parametrize("key", ["gen_ai.usage.cost", "llm.cost.total"])
def test_an_unusable_sdk_cost_is_never_the_cost(tmp_path, monkeypatch, native, sent, key):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    stage, registry = stage_for(tmp_path)
    _, (priced, unpriceable, good) = process(
        stage,
        [
            {**TOKENS, key: sent},
            {"gen_ai.request.model": "gpt-4o", key: sent},
            {**TOKENS, key: 0.5},
        ],
    )
    assert priced["genops.cost.total"] == pytest.approx(2.5)
    assert priced["genops.cost.status"] == "priced"
    assert "genops.cost.sdk_difference" not in priced
    assert unpriceable == {"genops.cost.status": "invalid_sdk_cost"}
    assert 'genops_invalid_values_total{field="cost"' in generate_latest(registry).decode()
    assert good["genops.cost.total"] == 0.5


def test_with_override_ours_is_the_cost_and_the_difference_still_shows(tmp_path):
    stage, _ = stage_for(tmp_path, override=True)
    _, (sdk, only_sdk) = process(stage, [{**TOKENS, "llm.cost.total": 2.0}, {"gen_ai.usage.cost": 0.1}])
    assert sdk["genops.cost.total"] == pytest.approx(2.5)
    assert sdk["genops.cost.status"] == "priced"
    assert sdk["genops.cost.sdk_difference"] == pytest.approx(-0.5)
    assert only_sdk == {"genops.cost.total": 0.1}


def test_a_budget_is_charged_the_sdk_cost_reported_under_another_convention(tmp_path, monkeypatch):
    import json

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    from processor.config import PolicyConfig
    from processor.core.pipeline import Pipeline
    from processor.observability import SidecarMetrics
    from processor.stages.policy.stage import build_policy_stage
    from tests.support.otlp_builders import span, trace_request
    from tests.support.policy_stages import TEAM_BUDGET_AND_CAP

    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(TEAM_BUDGET_AND_CAP))
    cost, _ = stage_for(tmp_path)
    policy = build_policy_stage(
        PolicyConfig(enabled=True, policy_file=str(policy_file), state_backend="memory"), CollectorRegistry()
    )
    spans = [
        span(attributes={"genops.team": "ml", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.cost": 0.25}),
        span(attributes={"genops.team": "ml", "gen_ai.request.model": "gpt-4o", "llm.cost.total": "0.5"}),
        span(attributes={"genops.team": "ml", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.cost": float("nan")}),
    ]
    for native in ("1", "0"):
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
        out = Pipeline([cost, policy], SidecarMetrics.create()).process_traces(trace_request(spans).SerializeToString())
        parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(out.payload)
        found = [{kv.key: kv.value for kv in item.attributes} for item in parsed.resource_spans[0].scope_spans[0].spans]
        first, second = (f["genops.budget.consumed"].double_value for f in found[:2])
        assert second - first == pytest.approx(0.5)
        assert [f["genops.cost.total"].double_value for f in found[:2]] == [0.25, 0.5]
        assert "genops.cost.total" not in found[2]
        assert found[2]["genops.cost.status"].string_value == "invalid_sdk_cost"
    policy.close()
