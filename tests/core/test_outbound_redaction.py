"""Nothing the sidecar makes from span values leaves it unredacted: metric labels, the attributes
and events the stages write, budget API answers and error texts meet the redaction rules first,
and label values are capped in length.

Each test runs the stages as `serve` builds them (processor/transport/server.py `build_stages`), on both
the native and the pure-Python path.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from prometheus_client import CollectorRegistry, generate_latest

from processor.config import PolicyConfig, SidecarConfig
from processor.core.contract import BatchChanges
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.assembly import build_stages, close_stages
from processor.stages.policy.budget_api import http_budget_status
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_sink import attributes_to_dict
from tests.support.sample_values import EMAIL

CARD = "4111111111111111"
OPENAI_KEY = "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1aC3eG5"

# The documented cap of a label value.
LABEL_CAP_BYTES = 128

BUDGET_PER_TEAM = """
budgets:
  - name: per-team
    dimension: team
    limit_usd: 0.5
    period: daily
    warn_at: [0.5]
    mode: enforced
"""


@pytest.fixture
def sidecar(tmp_path, engine):
    """The stages `serve` runs on its defaults, with a per-team budget; yields (pipeline, registry)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(BUDGET_PER_TEAM)
    config = SidecarConfig(policy=PolicyConfig(policy_file=str(policy), state_backend="memory"))
    registry = CollectorRegistry()
    stages = build_stages(config, registry)
    metrics = SidecarMetrics.create(registry)
    yield Pipeline(stages, metrics.pipeline), registry, stages
    close_stages(stages)


def llm(**attributes: object):
    values: dict[str, object] = {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 200,
    }
    values.update(attributes)
    return span(attributes=values)


def forwarded(pipeline: Pipeline, request: trace_pb.ExportTraceServiceRequest) -> bytes:
    out = pipeline.process_traces(request.SerializeToString())
    return out.payload


def spans_of(payload: bytes) -> list[dict[str, object]]:
    sent = trace_pb.ExportTraceServiceRequest.FromString(payload)
    return [
        {**attributes_to_dict(s.attributes), "_events": [(e.name, attributes_to_dict(e.attributes)) for e in s.events]}
        for rs in sent.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_an_email_as_service_or_namespace_is_masked_in_the_project_and_team_labels(sidecar):
    pipeline, registry, _ = sidecar
    payload = forwarded(
        pipeline,
        trace_request([llm(), llm()], resource={"service.name": EMAIL, "k8s.namespace.name": "x" + EMAIL}),
    )
    assert EMAIL.encode() not in payload
    text = exposition(registry)
    assert "genops_cost_total_usd{" in text
    assert EMAIL not in text
    assert 'project="[REDACTED:email]"' in text


def test_an_api_key_sent_as_the_model_name_reaches_neither_the_trace_nor_a_label(sidecar):
    pipeline, registry, _ = sidecar
    payload = forwarded(
        pipeline,
        trace_request([llm(**{"gen_ai.request.model": OPENAI_KEY, "gen_ai.provider.name": "openai"})]),
    )
    assert OPENAI_KEY.encode() not in payload
    text = exposition(registry)
    assert "genops_cost_unpriced_spans_total{" in text
    assert OPENAI_KEY not in text
    assert OPENAI_KEY[:20] not in text


def test_genops_attribution_values_meet_the_detectors_in_the_trace_and_in_labels(sidecar):
    pipeline, registry, _ = sidecar
    payload = forwarded(pipeline, trace_request([llm(**{"genops.project": f"card {CARD}", "genops.team": EMAIL})]))
    assert CARD.encode() not in payload
    assert EMAIL.encode() not in payload
    (only,) = spans_of(payload)
    assert only["genops.project"] == "card [REDACTED:credit_card]"
    # Still attributed and priced: only the detected part changed.
    assert only["genops.cost.status"] == "priced"
    text = exposition(registry)
    assert CARD not in text
    assert EMAIL not in text


def test_budget_events_carry_the_subject_as_the_trace_shows_it(sidecar):
    pipeline, _, _ = sidecar
    expensive = {"gen_ai.usage.input_tokens": 2_000_000, "genops.team": EMAIL}
    payload = forwarded(pipeline, trace_request([llm(**expensive), llm(**expensive)]))
    assert EMAIL.encode() not in payload
    events = [attrs for s in spans_of(payload) for name, attrs in s["_events"] if name.startswith("genops.budget")]
    assert events, "the budget was crossed: events expected"
    assert {e["genops.budget.subject"] for e in events} == {"[REDACTED:email]"}


def test_label_values_are_capped_in_bytes(sidecar):
    pipeline, registry, _ = sidecar
    teams = [f"team-{i}-" + "é" * 10_000 for i in range(3)]
    forwarded(pipeline, trace_request([llm(**{"genops.team": team}) for team in teams]))
    text = exposition(registry)
    values = [part.split('"')[1] for line in text.splitlines() for part in line.split("team=")[1:]]
    assert values
    assert max(len(value.encode()) for value in values) <= LABEL_CAP_BYTES
    assert len(text) < 200_000


def test_an_error_text_written_to_spans_is_redacted(sidecar):
    pipeline, _, stages = sidecar

    class Failing:
        name = "failing"
        signals = frozenset({"traces"})

        def wanted_keys(self):
            return stages[0].wanted_keys()

        def process(self, batch) -> BatchChanges:
            raise ValueError(f"cannot reach {EMAIL} with card {CARD}")

    with_failing = Pipeline([*stages, Failing()], pipeline.metrics)
    payload = forwarded(with_failing, trace_request([llm()]))
    (only,) = spans_of(payload)
    error = only["genops.processing.error"]
    assert "ValueError" in error
    assert EMAIL not in error
    assert CARD not in error


def test_budget_api_answers_show_subjects_as_the_trace_shows_them(sidecar):
    pipeline, _, stages = sidecar
    forwarded(pipeline, trace_request([llm(**{"genops.team": EMAIL})]))
    reader = stages[-1].budget_status
    status, body, _ = http_budget_status(reader, f"/v1/budgets?team={EMAIL}")
    assert status == 200
    answer = json.loads(body)
    assert [b["subject"] for b in answer["budgets"]] == ["[REDACTED:email]"]
    assert EMAIL.encode() not in body


_LOGGING_RUN = """
import sys
from prometheus_client import CollectorRegistry
from processor.config import SidecarConfig, PolicyConfig
from processor.observability import SidecarMetrics, configure_logging
from processor.core.pipeline import Pipeline
from processor.stages.assembly import build_stages
from tests.support.otlp_builders import span, trace_request

configure_logging("info", "json")
stages = build_stages(SidecarConfig(policy=PolicyConfig(state_backend="memory")), CollectorRegistry())


class Failing:
    name = "failing"
    signals = frozenset({"traces"})

    def wanted_keys(self):
        return stages[0].wanted_keys()

    def process(self, batch):
        raise ValueError("cannot reach " + sys.argv[1] + " " + "x" * 100_000)


request = trace_request([span(attributes={"gen_ai.request.model": "gpt-4o"})]).SerializeToString()
Pipeline([*stages, Failing()], SidecarMetrics.create().pipeline).process_traces(request)
"""


def test_log_lines_are_redacted_and_bounded(engine):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _LOGGING_RUN, EMAIL], capture_output=True, text=True, timeout=120, check=True
    )
    lines = [line for line in done.stderr.splitlines() if "stage failed" in line]
    assert len(lines) == 1
    assert "cannot reach [REDACTED:email]" in lines[0]
    assert EMAIL not in done.stderr
    assert len(lines[0]) < 20_000


def test_a_written_column_is_redacted_value_by_value_and_stays_text():
    from processor.core.outbound import OutboundRedaction

    outbound = OutboundRedaction(lambda _key, value: value.replace(EMAIL, "[REDACTED:email]"))
    column = pl.Series("genops.cost.model", [f"m {EMAIL}", None, "plain", f"m {EMAIL}"])
    redacted = outbound.strings("genops.cost.model", column)
    assert redacted is not None
    assert redacted.dtype == pl.String
    assert redacted.to_list() == ["m [REDACTED:email]", None, "plain", "m [REDACTED:email]"]
    assert outbound.strings("genops.cost.model", pl.Series("genops.cost.model", ["plain", None])) is None
