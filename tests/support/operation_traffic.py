"""Traffic for the per-operation metrics: more teams and projects than the label cap, and a
policy stage labelling by them. Importable by the multiprocess test's worker script too."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry

from processor.config import PolicyConfig
from processor.stages.policy.stage import build_policy_stage
from tests.support.clock import BASE_NS
from tests.support.otlp_builders import span, trace_request

# Latencies on, between and past the histogram's bounds; negative and missing ones are not observed.
DURATIONS_NS = [None, -10, 0, 50_000_000, 100_000_000, 250_000_001, 2 * 10**9, 300 * 10**9, 400 * 10**9]


def operation_requests(seed: int = 7, batches: int = 4, spans: int = 250) -> list[bytes]:
    """Batches with more teams and projects than the label cap, unlabelled spans, errors and
    costs whose sums round differently in another order."""
    rng = random.Random(seed)
    out = []
    for _ in range(batches):
        built = []
        for _ in range(spans):
            attributes = {
                "gen_ai.request.model": rng.choice(["gpt-4o", "gpt-4o-mini", "claude-3-haiku"]),
                "gen_ai.provider.name": rng.choice(["openai", "anthropic"]),
                "genops.cost.total": rng.choice([rng.uniform(0, 1), 0.1, 1e-9, 0.0]),
                "gen_ai.usage.input_tokens": rng.randrange(0, 5000),
                "gen_ai.usage.output_tokens": rng.randrange(0, 900),
                "genops.project": f"p-{rng.randrange(40)}",
            }
            if rng.random() < 0.9:
                attributes["genops.team"] = rng.choice(
                    ["ml", "search", "chat", "unknown"] + [f"t{i}" for i in range(9)]
                )
            if rng.random() < 0.1:
                attributes["error.type"] = "timeout"
            start = BASE_NS + rng.randrange(10**12)
            one = span(attributes=attributes, start_time_unix_nano=start)
            duration = rng.choice(DURATIONS_NS)
            one.end_time_unix_nano = 0 if duration is None else max(start + duration, 0)
            built.append(one)
        out.append(trace_request(built).SerializeToString())
    return out


def operation_stage(path, labels: str = "team,project,model,provider", max_values: int = 8):
    registry = CollectorRegistry()
    config = PolicyConfig(
        enabled=True,
        policy_file=str(path),
        state_backend="memory",
        metrics_labels=labels,
        metrics_max_label_values=max_values,
    )
    return build_policy_stage(config, registry), registry
