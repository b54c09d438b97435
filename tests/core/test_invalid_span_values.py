"""A bad cost, token count or time is ignored for its own span, counted, and changes nothing for
the other spans of its batch: on the native path and the polars path alike."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from processor.config import CostConfig, PolicyConfig
from processor.core.decode import decode_traces
from processor.stages.cost.stage import CostStage
from processor.stages.policy.stage import build_policy_stage
from tests.support.clock import BASE_NS
from tests.support.cost_helpers import process, write_small_table
from tests.support.otlp_builders import span, trace_request
from tests.support.policy_stages import (
    TEAM_BUDGET_AND_CAP,
)

OUTPUTS = ("genops.budget.consumed", "genops.policy.result", "genops.policy.violations", "genops.budget.exceeded")

good_span = st.fixed_dictionaries(
    {
        "genops.team": st.sampled_from(["ml", "search"]),
        "gen_ai.request.model": st.just("gpt-4o"),
        "genops.cost.total": st.sampled_from([0.125, 0.25, 0.5, 0.75]),
    }
)
# (attributes, start, end) of a span whose cost, tokens or time is unusable.
bad_span = st.one_of(
    st.tuples(
        st.fixed_dictionaries(
            {
                "genops.team": st.sampled_from(["ml", "search", "other"]),
                "gen_ai.request.model": st.just("gpt-4o"),
                "genops.cost.total": st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, "abc", "nan"]),
            }
        ),
        st.just(BASE_NS),
        st.just(BASE_NS + 10**6),
    ),
    st.tuples(
        st.fixed_dictionaries(
            {
                # Its cost is good, so it is charged (to its own team: the others' results stay theirs).
                "genops.team": st.just("other"),
                "gen_ai.request.model": st.just("gpt-4o"),
                "genops.cost.total": st.just(0.25),
                "gen_ai.usage.input_tokens": st.sampled_from([-5, "many", float("nan")]),
            }
        ),
        st.sampled_from([BASE_NS, 2**63, 2**64 - 10**7]),
        st.sampled_from([2**63, 2**64 - 1, BASE_NS - 1, 0]),
    ),
)


def build(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(TEAM_BUDGET_AND_CAP))
    config = PolicyConfig(enabled=True, policy_file=str(path), state_backend="memory")
    registry = CollectorRegistry()
    return build_policy_stage(config, registry), registry


def run(stage, spans) -> list[dict]:
    built = []
    for attributes, start, end in spans:
        one = span(attributes=attributes, start_time_unix_nano=min(start, 2**64 - 10**7))
        one.end_time_unix_nano = end
        built.append(one)
    changes = stage.process(decode_traces(trace_request(built).SerializeToString(), stage.wanted_keys()))
    columns = {key: changes.set_attributes[key].to_list() for key in OUTPUTS}
    return [{key: columns[key][i] for key in OUTPUTS} for i in range(len(spans))]


@pytest.mark.parametrize("native", ["1", "0"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(goods=st.lists(good_span, min_size=1, max_size=6), bad=bad_span, position=st.integers(0, 6))
def test_good_spans_get_the_same_results_with_a_bad_span_anywhere_in_their_batch(
    tmp_path_factory, monkeypatch, native, goods, bad, position
):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    good = [(attributes, BASE_NS, BASE_NS + 10**6) for attributes in goods]
    at = min(position, len(good))
    alone, _ = build(tmp_path_factory.mktemp("alone"))
    mixed, registry = build(tmp_path_factory.mktemp("mixed"))
    want = run(alone, good)
    got = run(mixed, [*good[:at], bad, *good[at:]])
    assert got[:at] + got[at + 1 :] == want
    assert "genops_invalid_values_total{" in generate_latest(registry).decode()
    alone.close()
    mixed.close()


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_nan_cost_and_a_huge_end_time_leave_the_other_teams_charged(tmp_path, monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    stage, registry = build(tmp_path)
    spans = [
        (
            {
                "genops.team": "ml",
                "genops.environment": "prod",
                "gen_ai.request.model": "gpt-4o",
                "genops.cost.total": 0.75,
            },
            BASE_NS,
            BASE_NS + 1,
        ),
        (
            {
                "genops.team": "x",
                "genops.environment": "prod",
                "gen_ai.request.model": "gpt-4o",
                "genops.cost.total": float("nan"),
            },
            BASE_NS,
            BASE_NS,
        ),
        (
            {
                "genops.team": "ml",
                "genops.environment": "prod",
                "gen_ai.request.model": "gpt-4o",
                "genops.cost.total": 0.5,
            },
            BASE_NS,
            2**64 - 1,
        ),
    ]
    got = run(stage, spans)
    assert [s["genops.budget.consumed"] for s in got] == [0.75, None, 1.25]
    assert [s["genops.policy.result"] for s in got] == ["BLOCKED", "ALLOWED", "BLOCKED"]
    text = generate_latest(registry).decode()
    assert 'genops_invalid_values_total{field="cost",reason="nan"} 1.0' in text
    assert 'genops_invalid_values_total{field="end_time",reason="out_of_range"} 1.0' in text
    stage.close()


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("sent", [float("nan"), float("inf"), -2.0, "abc"])
def test_the_cost_stage_prices_a_span_whose_sdk_cost_is_unusable(tmp_path, monkeypatch, native, sent):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    table = write_small_table(tmp_path / "p.yaml")
    stage = CostStage(CostConfig(pricing_file=str(table), reload_interval_seconds=0), CollectorRegistry())
    spans = [
        {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1_000_000, "genops.cost.total": sent},
        {"gen_ai.request.model": "gpt-4o", "genops.cost.total": sent},
        {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1_000_000, "genops.cost.total": 0.5},
    ]
    _, (priced, unpriceable, sdk) = process(stage, spans)
    assert priced["genops.cost.total"] == pytest.approx(2.5)
    assert unpriceable.get("genops.cost.status") == "invalid_sdk_cost"
    assert "genops.cost.total" not in unpriceable
    # A usable SDK cost stays what it was (written back as the same number when the column was text).
    assert sdk.get("genops.cost.total", 0.5) == 0.5


@pytest.mark.parametrize("native", ["1", "0"])
def test_the_cost_stage_writes_a_text_sdk_cost_as_a_number(tmp_path, monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    table = write_small_table(tmp_path / "p.yaml")
    stage = CostStage(CostConfig(pricing_file=str(table), reload_interval_seconds=0), CollectorRegistry())
    _, (written,) = process(stage, [{"gen_ai.request.model": "gpt-4o", "genops.cost.total": " 0.25 "}])
    assert written["genops.cost.total"] == 0.25
