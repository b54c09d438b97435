"""The native policy plan takes any number of checks (it once took at most 12 with the spec's
attribution check, a table of 2^(checks+1) verdicts, and the polars path took the rest): policies
of 12, 40 and 200 checks give the same changes, events, metrics and stored totals as the polars
oracle (tests/oracle/policy.py)."""

from __future__ import annotations

import random
import time

import pytest

from processor.core.decode import WantedKeys, decode_traces
from tests.support.clock import BASE_NS, HOUR_NS
from tests.support.differential import metric_samples, same
from tests.support.otlp_builders import span, trace_request
from tests.support.policy_stages import (
    labelled_stage,
    policy_text,
    stored,
)

MODES = ("enforced", "advisory", "audit_only")
DIMENSIONS = ("team", "project", "customer_id", "environment")
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-haiku", "o1.x")


def rules(count: int, seed: int) -> list[dict]:
    """`count` rules of every type and mode, with thresholds spread so spans violate some of them."""
    pick = random.Random(seed)
    made: list[dict] = []
    for index in range(count):
        mode = MODES[index % 3]
        kind = index % 5
        if kind == 0:
            made.append({"type": "max_cost_per_operation", "max_usd": pick.choice([0.05, 0.2, 0.6]), "mode": mode})
        elif kind == 1:
            made.append({"type": "max_tokens_per_request", "max_tokens": pick.choice([50, 300, 900]), "mode": mode})
        elif kind == 2:
            made.append({"type": "pii_detected", "mode": mode, "match": {"team": [pick.choice(["ml", "search"])]}})
        elif kind == 3:
            made.append({"type": "required_attribution", "mode": mode, "dimensions": pick.sample(DIMENSIONS, 2)})
        else:
            made.append({"type": "model_access", "mode": mode, "deny": [pick.choice(["*haiku*", "gpt-4o", "o1*"])]})
    return made


def spans(seed: int) -> list:
    pick = random.Random(seed)
    built = []
    for _ in range(30):
        attributes = {
            "gen_ai.request.model": pick.choice(MODELS),
            "gen_ai.provider.name": "openai",
            "genops.cost.total": pick.choice([0.01, 0.1, 0.3, 0.9]),
            "gen_ai.usage.input_tokens": pick.randrange(0, 800),
            "gen_ai.usage.output_tokens": pick.randrange(0, 300),
            "genops.redaction.detected": pick.randrange(0, 2),
        }
        for dimension in pick.sample(DIMENSIONS, pick.randrange(0, 4)):
            attributes[f"genops.{dimension}"] = pick.choice(["ml", "search", "chat"])
        built.append(span(attributes=attributes, start_time_unix_nano=BASE_NS + pick.randrange(0, HOUR_NS)))
    return built


# Checks of the policy file: its rules and two budgets (the spec's attribution check comes on top).
@pytest.mark.parametrize("checks", [12, 40, 200])
def test_a_policy_of_any_number_of_checks_runs_natively_as_the_oracle_does(tmp_path, monkeypatch, checks):
    monkeypatch.setattr(time, "time_ns", lambda: BASE_NS + 7 * HOUR_NS)
    budgets = [
        {"limit_usd": 2.0, "period": "daily", "timezone": "UTC", "warn_at": [0.5], "mode": "enforced"},
        {"limit_usd": 1.0, "period": "weekly", "timezone": "UTC", "dimension": "team", "mode": "advisory"},
    ]
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(budgets, rules(checks - 2, seed=checks)))
    native, native_registry = labelled_stage(path, "team,model", 100)
    oracle, oracle_registry = labelled_stage(path, "team,model", 100, oracle=True)
    for seed in range(3):
        raw = trace_request(spans(seed)).SerializeToString()
        wanted = WantedKeys.union((native.wanted_keys(), oracle.wanted_keys()))
        batch = decode_traces(raw, wanted)
        got, want = native.process(batch), oracle.process(batch)
        assert (got.engine, want.engine) == ("native", "polars")
        assert list(got.set_attributes) == list(want.set_attributes)
        for key, series in want.set_attributes.items():
            assert got.set_attributes[key].dtype == series.dtype, key
            same(got.set_attributes[key].to_list(), series.to_list(), key)
        same(
            [(e.row, e.name, e.time_unix_nano, e.attributes) for e in got.events],
            [(e.row, e.name, e.time_unix_nano, e.attributes) for e in want.events],
            "events",
        )
    # Many spans violate several checks at once (the verdicts are not all alike).
    violations = got.set_attributes["genops.policy.violations"].to_list()
    assert max(len(v or ()) for v in violations) >= 3
    same(metric_samples(native_registry), metric_samples(oracle_registry), "metrics")
    same(stored(native), stored(oracle), "stored totals")
    native.close()
    oracle.close()
