"""Service tier factors the build report listed for review, as the shipped tables bill them
(hand-computed from the providers' prices)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.stages.cost.stage import CostStage
from tests.support.cost_helpers import process


def batch_call(provider: str, model: str) -> dict[str, object]:
    return {
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": 1_000_000,
        "gen_ai.usage.output_tokens": 1_000_000,
        "genops.service_tier": "batch",
    }


def test_vertex_claude_opus_5_5_batch_is_half_of_on_demand():
    stage = CostStage(CostConfig(reload_interval_seconds=0), CollectorRegistry(), watch=False)
    _, written = process(stage, [batch_call("gcp.vertex_ai", "claude-opus-5-5")], day="2026-12-01")
    # $4 input + $20 output on demand, batch prediction at 50% (LiteLLM's 0.625 corrected).
    assert written[0]["genops.cost.total"] == pytest.approx((4 + 20) * 0.5)
    assert written[0]["genops.cost.service_tier"] == "batch"
