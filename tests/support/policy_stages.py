"""Policy files and policy stages built for tests, and the stage's state read back."""

from __future__ import annotations

import functools
import json

from prometheus_client import CollectorRegistry

from processor.config import PolicyConfig, load_config
from processor.core.outbound import OutboundRedaction
from processor.stages.policy.stage import build_policy_stage
from processor.stages.redaction.stage import build_outbound
from tests.oracle.policy import oracle_of

ML_BUDGET = """
budgets:
  - name: ml-daily
    dimension: team
    value: ml
    limit_usd: 1.0
    period: daily
    warn_at: [0.5]
    mode: enforced
"""

# A daily team budget of $1 and a $0.60 cap per operation, both enforced (JSON-ready).
TEAM_BUDGET_AND_CAP = {
    "budgets": [{"name": "team", "dimension": "team", "limit_usd": 1.0, "period": "daily", "mode": "enforced"}],
    "policies": [{"name": "big", "type": "max_cost_per_operation", "max_usd": 0.6, "mode": "enforced"}],
}


def stage_config(policy_file, **overrides) -> PolicyConfig:
    values = {"enabled": True, "policy_file": str(policy_file), "state_backend": "memory"}
    values.update(overrides)
    return PolicyConfig(**values)


def policy_text(budgets: list[dict], rules: list[dict]) -> str:
    """A policy file (JSON) of these budgets and checks, named b0, b1, ... and r0, r1, ..."""
    named_budgets = [{"name": f"b{i}", **b} for i, b in enumerate(budgets)]
    named_rules = [{"name": f"r{i}", **r} for i, r in enumerate(rules)]
    return json.dumps({"budgets": named_budgets, "policies": named_rules})


@functools.cache
def default_outbound() -> OutboundRedaction:
    """The default redaction rules, as the sidecar publishes attribute budget subjects."""
    return build_outbound(load_config().redaction)


def labelled_stage(path, metrics_labels: str, max_values: int, oracle: bool = False) -> tuple:
    """The native stage (or its oracle) with metric labels and attribution fallbacks; and its registry."""
    registry = CollectorRegistry()
    config = PolicyConfig(
        enabled=True,
        policy_file=str(path),
        state_backend="memory",
        metrics_labels=metrics_labels,
        metrics_max_label_values=max_values,
        attribution_fallbacks={"project": "service.name", "team": "genops.project"},
    )
    stage = build_policy_stage(config, registry, default_outbound())
    return (oracle_of(stage) if oracle else stage), registry


def stored(stage) -> dict[str, float]:
    keys = list(stage.store._consumed)  # the memory store's windows, read through its API
    return stage.store.read(keys)
