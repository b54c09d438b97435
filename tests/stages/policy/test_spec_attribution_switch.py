"""`policy.spec_attribution_check`: the built-in GenOps attribution check can be switched off."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.config import load_config
from processor.stages.policy import conformance
from processor.stages.policy.stage import build_policy_stage
from tests.support.genai_spans import genai_span
from tests.support.otlp_builders import trace_request
from tests.support.pipeline_runs import request_of, written_spans

MISSING = {"genops.cost.total": 0.1}


def stage(tmp_path, environ: dict[str, str], policy: str = ""):
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    config = load_config(
        None, {"GENOPS_POLICY_STATE_BACKEND": "memory", "GENOPS_POLICY_POLICY_FILE": str(path), **environ}
    )
    return build_policy_stage(config.policy, CollectorRegistry())


@pytest.fixture(params=["native", "polars"])
def engine(request, monkeypatch):
    if request.param == "polars":
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", "0")
    return request.param


def test_switched_off_a_span_without_attribution_stays_allowed(tmp_path, engine):
    (got,) = written_spans(
        [stage(tmp_path, {"GENOPS_POLICY_SPEC_ATTRIBUTION_CHECK": "false"})],
        trace_request([genai_span("chat", **MISSING)]),
    )
    assert got["genops.policy.result"] == "ALLOWED"
    assert "genops.policy.reason_code" not in got and "genops.policy.violations" not in got
    assert ("genops.policy.evaluated", {"genops.policy.result": "ALLOWED"}) in got["_events"]
    # The spec still asks for the attribution: the conformance check reports what is missing.
    report = conformance.check([request_of([got])], conformance.PARTIAL)
    assert {v.problem for v in report.violations} == {
        f"required attribute genops.{dimension} missing" for dimension in ("team", "environment")
    }


def test_on_by_default_and_a_policy_s_own_attribution_rule_still_applies_when_off(tmp_path, engine):
    (default,) = written_spans([stage(tmp_path, {})], trace_request([genai_span("chat", **MISSING)]))
    assert (default["genops.policy.result"], default["genops.policy.reason_code"]) == (
        "WARNING",
        "x_attribution_missing",
    )
    own = """
policies:
  - name: needs-team
    type: required_attribution
    mode: enforced
    dimensions: [team]
"""
    (got,) = written_spans(
        [stage(tmp_path, {"GENOPS_POLICY_SPEC_ATTRIBUTION_CHECK": "false"}, own)],
        trace_request([genai_span("chat", **MISSING)]),
    )
    assert got["genops.policy.result"] == "BLOCKED"
    assert got["genops.policy.violations"] == ["needs-team"]
