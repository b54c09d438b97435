"""The cache-savings sums per (team, model) agree with the polars group_by they replaced
(tests/oracle/cache_metrics.py), on batches through the real cost and policy stages: the same
groups in the same order, the same sums.

The sums are compared to 1e-12, not to the bit: polars adds a group's floats in an order that
varies from one run of the same query to the next (even on one thread), so the old last bit was
never reproducible; the new sums add in row order, the same every run.
"""

from __future__ import annotations

import random

import polars as pl
import pytest
from prometheus_client import CollectorRegistry

from processor.config import CostConfig, PolicyConfig, load_config
from processor.core.attribution import Attribution
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.cost import cache_metrics
from processor.stages.cost.stage import build_cost_stage
from processor.stages.policy.stage import build_policy_stage
from processor.stages.redaction.stage import build_outbound
from tests.oracle.cache_metrics import savings_sums
from tests.support.cache_pricing import TABLE, call
from tests.support.otlp_builders import trace_request

# Blank, padded (with what polars trims and what it does not), numeric and absent teams.
TEAMS = ("ml", " ml ", "ads", "", "  ", "\u3000ads\u2009", "\x1cml", 42, None)


def _request(rng: random.Random, spans: int):
    calls = []
    for _ in range(spans):
        team = rng.choice(TEAMS)
        extra: dict[str, object] = {}
        if rng.random() < 0.2:
            extra["genops.service_tier"] = "batch"
        if rng.random() < 0.3:
            extra["service.name"] = rng.choice(("checkout", " search "))
        tokens_in = rng.choice((1_000, 10_000, 300_000)) + rng.randrange(1_000)
        cache_read = rng.choice((0, 0, rng.randrange(1, tokens_in)))
        model = rng.choice(("claude-x", "free-cache", "unknown-model"))
        made = call("", model, tokens_in, cache_read=cache_read, **extra)
        keep = [a for a in made.attributes if a.key != "genops.team"]
        del made.attributes[:]
        made.attributes.extend(keep)
        if isinstance(team, str):
            made.attributes.add(key="genops.team").value.string_value = team
        elif isinstance(team, int):
            made.attributes.add(key="genops.team").value.int_value = team
        calls.append(made)
    return trace_request(calls)


@pytest.mark.parametrize("seed", range(4))
def test_savings_sums_match_the_polars_group_by(tmp_path, seed):
    table = tmp_path / "prices.yaml"
    table.write_text(TABLE)
    registry = CollectorRegistry()
    outbound = build_outbound(load_config().redaction)
    cost = build_cost_stage(CostConfig(pricing_file=str(table), reload_interval_seconds=0), registry, outbound=outbound)
    policy = build_policy_stage(PolicyConfig(state_backend="memory"), registry, outbound)
    attribution = Attribution.from_config({"team": "service.name"})
    compared: list[tuple[dict, dict]] = []
    original = cache_metrics.CacheMetrics.record

    def record(self, batch, now_ns=None):
        compared.append(
            (cache_metrics.savings_by_team_and_model(batch, attribution), savings_sums(batch.frame, attribution))
        )
        return original(self, batch, now_ns)

    rng = random.Random(seed)
    try:
        cache_metrics.CacheMetrics.record = record  # type: ignore[method-assign]
        pipeline = Pipeline([cost, policy], SidecarMetrics.create())
        for spans in (1, 7, 300, 1000):
            pipeline.process_traces(_request(rng, spans).SerializeToString())
    finally:
        cache_metrics.CacheMetrics.record = original  # type: ignore[method-assign]
        cost.close()
        policy.close()
    assert len(compared) == 4 and any(new for new, _ in compared)
    for new, old in compared:
        assert list(new) == list(old)  # the same groups, in the same order
        assert list(new.values()) == pytest.approx(list(old.values()), rel=1e-12, abs=0)


def test_the_trimmed_characters_are_those_polars_trims():
    trimmed = [c for c in map(chr, range(0x3100)) if pl.Series([f"{c}a{c}"]).str.strip_chars()[0] == "a"]
    assert "".join(trimmed) == cache_metrics.WHITESPACE
