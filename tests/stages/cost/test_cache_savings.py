"""Issue 22 item 4: prompt-cache savings per span and by team and model, and cache writes never
read; every figure computed by hand from the table below."""

from __future__ import annotations

import time

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from prometheus_client import CollectorRegistry

from processor.config import CostConfig, PolicyConfig, load_config
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.cost.stage import build_cost_stage
from processor.stages.policy.stage import build_policy_stage
from processor.stages.redaction.stage import build_outbound
from tests.support.cache_pricing import TABLE, call
from tests.support.clock import NOON_NS
from tests.support.otlp_builders import trace_request
from tests.support.otlp_sink import attributes_to_dict


@pytest.fixture
def pipeline(tmp_path, monkeypatch, request):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", request.param)
    table = tmp_path / "prices.yaml"
    table.write_text(TABLE)
    registry = CollectorRegistry()
    outbound = build_outbound(load_config().redaction)
    cost = build_cost_stage(CostConfig(pricing_file=str(table), reload_interval_seconds=0), registry, outbound=outbound)
    policy = build_policy_stage(PolicyConfig(state_backend="memory"), registry, outbound)
    yield Pipeline([cost, policy], SidecarMetrics.create()), registry
    cost.close()
    policy.close()


def _written(pipeline: Pipeline, request) -> list[dict]:
    out = pipeline.process_traces(request.SerializeToString())
    assert out.failed_stages == ()
    sent = trace_pb.ExportTraceServiceRequest.FromString(out.payload)
    return [attributes_to_dict(s.attributes) for s in sent.resource_spans[0].scope_spans[0].spans]


@pytest.mark.parametrize("pipeline", ["1", "0"], indirect=True)
def test_cache_savings_per_span_and_by_team_and_model(pipeline):
    pipeline, registry = pipeline
    request = trace_request(
        [
            # 8,000 cached tokens at $3 instead of $0.30: 8000 x 2.70 / 1e6.
            call("ml", "claude-x", 10_000, cache_read=8_000, **{"gen_ai.conversation.id": "c1"}),
            # A 300,000-token prompt is past the tier: 100,000 x (6 - 0.60) / 1e6.
            call("ml", "claude-x", 300_000, cache_read=100_000),
            # The batch tier halves both prices: 10,000 x 2.70 x 0.5 / 1e6.
            call("ads", "claude-x", 10_000, cache_read=10_000, **{"genops.service_tier": "batch"}),
            # Free cache reads save the whole input price: 4,000 x 2 / 1e6.
            call("ads", "free-cache", 5_000, cache_read=4_000),
            call("ads", "claude-x", 1_000),
        ]
    )
    written = _written(pipeline, request)
    savings = [s.get("genops.cost.cache_savings") for s in written]
    assert savings == pytest.approx([0.0216, 0.54, 0.0135, 0.008, None])
    assert written[4].get("genops.cost.cache_savings") is None
    # What the cached tokens cost, beside it: 8,000 x 0.30 / 1e6.
    assert written[0]["genops.cost.cache_read"] == pytest.approx(0.0024)

    def metric(team: str, model: str) -> float | None:
        return registry.get_sample_value("genops_cost_cache_savings_usd", {"team": team, "model": model})

    assert metric("ml", "claude-x") == pytest.approx(0.5616)
    assert metric("ads", "claude-x") == pytest.approx(0.0135)
    assert metric("ads", "free-cache") == pytest.approx(0.008)
    # A Collector retry of the same request is not counted again.
    _written(pipeline, request)
    assert metric("ml", "claude-x") == pytest.approx(0.5616)


@pytest.mark.parametrize("pipeline", ["0"], indirect=True)
def test_cache_writes_no_later_span_of_the_conversation_read_are_counted_unread(pipeline):
    pipeline, registry = pipeline
    conversation = "gen_ai.conversation.id"
    written = _written(
        pipeline,
        trace_request(
            [
                # Written (2,000 x 3.75 / 1e6 = 0.0075) and never read again in c2.
                call("ml", "claude-x", 3_000, cache_write=2_000, **{conversation: "c2"}),
                # Written in c3 and read by the next call, 10 s later: not waste.
                call("ml", "claude-x", 3_000, cache_write=1_000, **{conversation: "c3"}),
                call("ml", "claude-x", 3_000, cache_read=1_000, at=10, **{conversation: "c3"}),
                # No conversation id: nothing tells whether it was read, so it is not counted.
                call("ml", "claude-x", 3_000, cache_write=1_000),
            ]
        ),
    )
    assert written[0]["genops.cost.cache_write"] == pytest.approx(0.0075)
    # The spans started days ago: their caches expired long before this batch was swept.
    unread = registry.get_sample_value("genops_cost_cache_write_unread_usd", {"model": "claude-x"})
    assert unread == pytest.approx(0.0075)


@pytest.mark.parametrize("pipeline", ["1"], indirect=True)
def test_a_write_is_followed_across_batches_until_a_later_batch_reads_it(pipeline):
    pipeline, registry = pipeline
    cache = pipeline.stages[1].cache
    conversation = "gen_ai.conversation.id"
    now = (time.time_ns() - NOON_NS) // 10**9  # spans that start now: their caches are live

    def send(at: int, conversation_id: str, **tokens) -> None:
        _written(
            pipeline,
            trace_request([call("ml", "claude-x", 3_000, at=now + at, **tokens, **{conversation: conversation_id})]),
        )

    send(0, "c4", cache_write=2_000)
    assert list(cache._followed) == [("c4", "claude-x")]
    # Neither writes nor reads: the followed write stands.
    send(1, "c4")
    assert list(cache._followed) == [("c4", "claude-x")]
    # A read in another conversation leaves it too; one in its own takes it off.
    send(2, "c9", cache_read=10)
    assert list(cache._followed) == [("c4", "claude-x")]
    send(3, "c4", cache_read=10)
    assert not cache._followed
    assert registry.get_sample_value("genops_cost_cache_write_unread_usd", {"model": "claude-x"}) is None
