"""Issue 22 item 3: each budget's burn-rate forecast, checked against hand-computed figures."""

from __future__ import annotations

import datetime as dt
import math
import time

import pytest
from prometheus_client import CollectorRegistry

from processor.stages.policy.budget_forecast import exhaustion_seconds
from processor.stages.policy.stage import build_policy_stage
from tests.support.genai_spans import llm_span
from tests.support.otlp_builders import trace_request
from tests.support.pipeline_runs import run_pipeline
from tests.support.policy_stages import (
    stage_config,
)

BUDGETS = """
budgets:
  - name: ml-daily
    dimension: team
    value: ml
    limit_usd: 1.0
    period: daily
  - name: ml-weekly
    dimension: team
    value: ml
    limit_usd: 4.0
    period: weekly
  - name: ads-daily
    dimension: team
    value: ads
    limit_usd: 0.5
    period: daily
"""
# Wednesday 2026-12-02, 06:00 UTC: a quarter of the day and 2.25 days of the (Monday) week gone.
NOW = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.UTC)
NOW_NS = int(NOW.timestamp()) * 10**9
DAY = dt.timedelta(days=1)


def test_hand_computed_projections():
    start, end = dt.datetime(2026, 12, 2, tzinfo=dt.UTC), dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    # 0.25 spent in 6 h: 0.75 left takes 18 h, the limit is reached exactly as the day ends.
    assert exhaustion_seconds(0.25, 1.0, start, end, NOW) == 18 * 3600
    # 0.5 in 6 h: the other 0.5 in 6 h more.
    assert exhaustion_seconds(0.5, 1.0, start, end, NOW) == 6 * 3600
    # 0.125 in 6 h: 42 h more, after the window closes (the budget starts over): never this window.
    assert exhaustion_seconds(0.125, 1.0, start, end, NOW) == math.inf
    assert exhaustion_seconds(0.0, 1.0, start, end, NOW) == math.inf
    assert exhaustion_seconds(1.0, 1.0, start, end, NOW) == 0.0
    assert exhaustion_seconds(1.5, 1.0, start, end, NOW) == 0.0


@pytest.mark.parametrize("native", ["1", "0"])
def test_the_stage_publishes_each_budgets_forecast_and_tags_spans_with_when_it_runs_out(tmp_path, monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    monkeypatch.setattr(time, "time_ns", lambda: NOW_NS)
    policy = tmp_path / "policy.yaml"
    policy.write_text(BUDGETS)
    registry = CollectorRegistry()
    stage = build_policy_stage(stage_config(policy), registry)
    try:
        spans = [llm_span(0.125, NOW_NS), llm_span(0.125, NOW_NS), llm_span(0.25, NOW_NS, **{"genops.team": "ads"})]
        written = run_pipeline(stage, trace_request(spans))
    finally:
        stage.close()

    def forecast(budget: str, subject: str) -> float | None:
        labels = {"budget": budget, "subject": subject}
        return registry.get_sample_value("genops_budget_forecast_exhaustion_seconds", labels)

    # ml-daily: 0.25 of 1.0 in 6 h -> 18 h. ml-weekly: 0.25 of 4.0 in 54 h -> 810 h, past the
    # week's end (Monday 2026-12-07, 114 h away): +Inf. ads-daily: 0.25 of 0.5 in 6 h -> 6 h.
    assert forecast("ml-daily", "ml") == 18 * 3600
    assert forecast("ml-weekly", "ml") == math.inf
    assert forecast("ads-daily", "ads") == 6 * 3600
    # Spans carry the forecast of the budget their tags name (the one nearest its limit), after them.
    assert [(s["genops.budget.name"], s.get("genops.budget.forecast")) for s in written] == [
        # 0.125 of 1.0 after the first span: 42 h, past midnight: not in this window.
        ("ml-daily", None),
        ("ml-daily", "2026-12-03T00:00:00Z"),
        ("ads-daily", "2026-12-02T12:00:00Z"),
    ]
