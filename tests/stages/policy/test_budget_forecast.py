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


def test_the_kernels_forecast_tag_is_the_one_budget_forecast_computes(tmp_path, monkeypatch):
    """Differential: the native plan's forecast column (policy.rs `forecast_column`) against
    budget_forecast.forecast_column over the same tags at the same instant, batch by batch, as
    the budgets fill up from below their limits to past them."""
    from benchmarks import micro
    from benchmarks.workload import build_requests
    from processor.core.pipeline import Pipeline
    from processor.observability import SidecarMetrics
    from processor.stages.assembly import build_stages
    from processor.stages.policy import budgets
    from processor.stages.policy import stage as policy_stage
    from processor.stages.policy.budget_forecast import forecast_column, now_utc

    limits = (0.05, 0.5, 5.0, 50.0, 500.0)
    monkeypatch.setattr(
        micro,
        "POLICY_FILE",
        {
            "budgets": [
                *({"name": f"all-{limit}", "limit_usd": limit, "period": "daily"} for limit in limits),
                *(
                    {"name": f"team-{limit}", "limit_usd": limit, "period": "weekly", "dimension": "team"}
                    for limit in limits
                ),
            ]
        },
    )
    clock = [NOW_NS]
    monkeypatch.setattr(time, "time_ns", lambda: clock[0])
    pipeline = Pipeline(build_stages(micro.stage_config(True, tmp_path), CollectorRegistry()), SidecarMetrics.create())
    original = policy_stage._with_forecast
    seen: list[list[str | None]] = []

    def both(changes, listed, native=None):
        assert native is not None
        tags = changes.set_attributes
        want = forecast_column(
            tags[budgets.TAGS["name"]], tags[budgets.TAGS["consumed"]], tags[budgets.TAGS["limit"]], listed, now_utc()
        )
        got = original(changes, listed, native).set_attributes[want.name]
        assert (got.dtype, got.to_list()) == (want.dtype, want.to_list())
        seen.append(got.to_list())
        return original(changes, listed)

    monkeypatch.setattr(policy_stage, "_with_forecast", both)
    for request in build_requests(count=12, spans=400, genai_share=0.6, seed=11):
        clock[0] += 7 * 60 * 10**9 + 123_456_789  # a window's rate changes with the time gone by
        assert pipeline.process_traces(request.SerializeToString()).failed_stages == ()
    values = [value for column in seen for value in column]
    assert len(seen) == 12 and len({v for v in values if v is not None}) > 3 and None in values
