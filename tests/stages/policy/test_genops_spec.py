"""GenOps Governance Specification v0.1 (issue 21, item 1 and 3): the required attributes and
events on every AI Workload Unit the sidecar forwards, and the conformance check of its output."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from processor.config import PolicyConfig, SidecarConfig
from processor.stages.assembly import build_stages
from processor.stages.policy import conformance
from processor.stages.policy.stage import build_policy_stage
from tests.support.collector_harness import running_sidecar
from tests.support.genai_spans import RESOURCE, genai_span
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import OtlpSink
from tests.support.pipeline_runs import request_of, written_spans


def export_through_sidecar(sink: OtlpSink, tmp_path, request) -> None:
    """`request` through a real `genops-sidecar serve` process on its defaults, into `sink`."""
    env = {"GENOPS_POLICY_STATE_BACKEND": "memory", "GENOPS_POLICY_STATE_PATH": str(tmp_path / "unused.sqlite")}
    with running_sidecar(sink.endpoint, extra_env=env) as sidecar, grpc.insecure_channel(sidecar.listen_endpoint) as ch:
        export_traces(ch, request)


def test_the_sidecar_output_carries_the_required_attributes_and_passes_the_partial_conformance_check(sink, tmp_path):
    request = trace_request(
        [
            genai_span("chat"),
            genai_span("text_completion", model="gpt-4o"),
            genai_span("embeddings", model="text-embedding-3-small"),
            span(name="GET /health", attributes={"http.route": "/health"}),
        ],
        resource=RESOURCE,
    )
    export_through_sidecar(sink, tmp_path, request)
    spans = [s.attributes for s in sink.spans()]
    awus = spans[:3]
    for attributes in awus:
        assert attributes["genops.spec.version"] == "0.1.0"
        assert (attributes["genops.team"], attributes["genops.project"], attributes["genops.environment"]) == (
            "ml",
            "chat-api",
            "production",
        )
        assert attributes["genops.policy.result"] == "ALLOWED"
        assert "genops.policy.reason_code" not in attributes
        assert attributes["genops.accounting.unit"] == "USD"
        assert attributes["genops.accounting.actual"] == attributes["genops.cost.total"] > 0
    assert [(a["genops.operation.name"], a["genops.operation.type"]) for a in awus] == [
        ("chat", "inference"),
        ("text_completion", "inference"),
        ("embeddings", "embedding"),
    ]
    assert not any(key.startswith("genops.") for key in spans[3])
    events = [[e.name for e in s.span.events] for s in sink.spans()]
    assert events == [["genops.policy.evaluated", "genops.cost.calculated"]] * 3 + [[]]

    report = conformance.check(sink.trace_requests(), conformance.PARTIAL)
    assert (report.units, report.violations) == (3, ())
    # Full compliance needs a reservation before execution (issue 21 item 2), which no span had.
    full = conformance.check(sink.trace_requests(), conformance.FULL)
    assert {v.problem for v in full.violations} == {
        "required attribute genops.accounting.reserved missing",
        "required event genops.budget.reservation missing",
        "required event genops.budget.reconciliation missing",
    }


def test_the_conformance_command_passes_the_sidecar_output_and_fails_the_dialect_it_spoke_before(sink, tmp_path):
    request = trace_request([genai_span("chat"), genai_span("embeddings")], resource=RESOURCE)
    export_through_sidecar(sink, tmp_path, request)
    output = tmp_path / "traces.jsonl"
    output.write_text("".join(json_format.MessageToJson(r, indent=None) + "\n" for r in sink.trace_requests()))
    passed = _conformance_command(output)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.splitlines()[-1].startswith("GenOps v0.1 — partial: conformant: 2 AWUs")

    # What the sidecar wrote before: lowercase results, its own reason codes, no spec attributes.
    before = span(
        name="chat gpt-4o",
        attributes={
            "gen_ai.request.model": "gpt-4o",
            "genops.team": "ml",
            "genops.cost.total": 0.5,
            "genops.policy.result": "warning",
            "genops.policy.reason_code": "budget_warning",
        },
    )
    old = tmp_path / "before.binpb"
    old.write_bytes(trace_request([before]).SerializeToString())
    failed = _conformance_command(old)
    assert failed.returncode == 1
    problems = {line.split(": ", 2)[-1] for line in failed.stdout.splitlines()[:-1]}
    assert problems == {
        "required attribute genops.spec.version missing",
        "required attribute genops.project missing",
        "required attribute genops.environment missing",
        "required attribute genops.operation.name missing",
        "required attribute genops.operation.type missing",
        "required attribute genops.accounting.actual missing",
        "required attribute genops.accounting.unit missing",
        "genops.policy.result 'warning' is not one of ALLOWED, BLOCKED, WARNING, RATE_LIMITED",
        "genops.policy.reason_code 'budget_warning' is neither a §5.2 code nor an x_ extension",
    }
    assert failed.stdout.splitlines()[-1].startswith("GenOps v0.1 — partial: NOT conformant: 1 AWUs, 1 with")

    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("{not json\n")
    unreadable = _conformance_command(garbage)
    assert unreadable.returncode == 2
    assert unreadable.stderr.count("\n") == 1 and "line 1 is not an OTLP/JSON trace request" in unreadable.stderr


def _conformance_command(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "processor", "conformance", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def policy_stage(tmp_path, text: str = ""):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    config = PolicyConfig(enabled=True, policy_file=str(path), state_backend="memory")
    return build_policy_stage(config, CollectorRegistry())


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ("chat", "inference"),
        ("text_completion", "inference"),
        ("generate_content", "inference"),
        ("embeddings", "embedding"),
        ("execute_tool", "tool"),
        ("invoke_agent", "agent"),
        ("Chat", "inference"),
        # An operation the mapping does not know is its own category, never a guess.
        ("moderation", "moderation"),
    ],
)
def test_operation_type_follows_the_gen_ai_operation_name(tmp_path, operation, expected):
    (got,) = written_spans(
        [policy_stage(tmp_path)], trace_request([genai_span(operation, **{"genops.cost.total": 0.1})])
    )
    assert (got["genops.operation.name"], got["genops.operation.type"]) == (operation, expected)


def test_a_span_without_attribution_gets_a_warning_and_no_placeholder(tmp_path):
    spans = written_spans(
        [policy_stage(tmp_path)],
        trace_request(
            [
                genai_span("chat", **{"genops.cost.total": 0.1}),
                genai_span("chat", **{"genops.cost.total": 0.1, "genops.team": "search"}),
            ],
            resource={"service.name": "chat-api"},
        ),
    )
    for got in spans:
        assert got["genops.policy.result"] == "WARNING"
        assert got["genops.policy.reason_code"] == "x_attribution_missing"
        assert got["genops.policy.violations"] == ["genops-spec-attribution"]
        assert "genops.environment" not in got
        assert ("genops.policy.evaluated", {"genops.policy.result": "WARNING", **_reason("x_attribution_missing")}) in (
            got["_events"]
        )
    assert "genops.team" not in spans[0]
    assert spans[1]["genops.team"] == "search"
    assert [s["genops.project"] for s in spans] == ["chat-api", "chat-api"]
    report = conformance.check([request_of(spans)], conformance.PARTIAL)
    assert {(v.span_id, v.problem) for v in report.violations} == {
        ("00", "required attribute genops.team missing"),
        ("00", "required attribute genops.environment missing"),
        ("01", "required attribute genops.environment missing"),
    }


def _reason(code: str) -> dict[str, str]:
    return {"genops.policy.reason_code": code}


POLICY = """
budgets:
  - {name: ml-daily, limit_usd: 1.0, period: daily, warn_at: [0.5], mode: enforced}
policies:
  - {name: audited-tokens, type: max_tokens_per_request, max_tokens: 10, mode: audit_only}
  - {name: gpt4o-denied, type: model_access, deny: ["gpt-4o"], mode: enforced}
  - {name: cost-cap, type: max_cost_per_operation, max_usd: 0.4, mode: advisory}
"""


def test_decisions_use_the_spec_states_and_reason_codes_with_an_evaluated_event_each(tmp_path):
    attributed = {"genops.team": "ml", "genops.environment": "production"}
    spans = written_spans(
        [policy_stage(tmp_path, POLICY)],
        trace_request(
            [
                genai_span("chat", **attributed, **{"genops.cost.total": 0.25}),
                genai_span("chat", **attributed, **{"genops.cost.total": 0.5}),
                genai_span("chat", model="gpt-4o", **attributed, **{"genops.cost.total": 0.125}),
                genai_span("chat", **attributed, **{"genops.cost.total": 0.25}),
            ]
        ),
    )
    decisions = [(s["genops.policy.result"], s.get("genops.policy.reason_code")) for s in spans]
    assert decisions == [
        # Over the audit-only token cap: listed as a violation, but ALLOWED carries no reason code.
        ("ALLOWED", None),
        ("WARNING", "x_max_cost_per_operation"),
        ("BLOCKED", "POLICY_DENY_MODEL"),
        ("BLOCKED", "BUDGET_EXCEEDED"),
    ]
    assert spans[0]["genops.policy.violations"] == ["audited-tokens"]
    for got, (result, reason) in zip(spans, decisions, strict=True):
        evaluated = [a for n, a in got["_events"] if n == "genops.policy.evaluated"]
        assert evaluated == [{"genops.policy.result": result, **(_reason(reason) if reason else {})}]
        calculated = [a for n, a in got["_events"] if n == "genops.cost.calculated"]
        assert calculated == [{"genops.cost.total": got["genops.cost.total"], "genops.cost.currency": "USD"}]
        assert got["genops.budget.allocated"] == got["genops.budget.limit"] == 1.0
    alerts = [(i, a) for i, s in enumerate(spans) for n, a in s["_events"] if n == "genops.budget.alert"]
    assert [(i, a["genops.budget.threshold"], a["genops.budget.consumed"]) for i, a in alerts] == [
        (1, 0.5, 0.75),
        (3, 1.0, 1.125),
    ]
    assert all(a["genops.budget.allocated"] == 1.0 and a["genops.budget.name"] == "ml-daily" for _, a in alerts)


def test_a_span_whose_cost_is_unknown_gets_no_accounting_values(tmp_path):
    config = SidecarConfig()
    stages = build_stages(config, CollectorRegistry())
    stages[-1] = policy_stage(tmp_path)
    (got,) = written_spans(
        stages,
        trace_request([genai_span("chat", model="no-such-model-9")], resource=RESOURCE),
    )
    assert got["genops.policy.result"] == "ALLOWED"
    assert "genops.accounting.actual" not in got and "genops.accounting.unit" not in got
    assert [n for n, _ in got["_events"]] == ["genops.policy.evaluated"]


def test_attribution_copied_onto_the_span_passes_outbound_redaction(tmp_path):
    stages = build_stages(SidecarConfig(), CollectorRegistry())
    stages[-1] = policy_stage(tmp_path)
    assert [s.name for s in stages] == ["cost", "redaction", "policy"]
    resource = {**RESOURCE, "k8s.namespace.name": "team of alice@example.com"}
    (got,) = written_spans(stages, trace_request([genai_span("chat")], resource=resource))
    assert "genops.team" in got
    assert "alice@example.com" not in got["genops.team"]
    assert got["genops.project"] == "chat-api"


scalars = st.one_of(
    st.text(max_size=300),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(max_size=80),
    time_unix_nano=st.integers(min_value=0, max_value=2**64 - 1),
    attributes=st.dictionaries(st.text(max_size=40), st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=6),
)
def test_span_events_are_written_as_the_protobuf_view_writes_them(name, time_unix_nano, attributes):
    """The events every GenAI span now gets are serialised by hand: the same message as protobuf's."""
    from processor.core.contract import SpanEventToAdd
    from processor.core.encode import _event_bytes, set_attribute
    from processor.protos import otlp_lean_pb2 as lean

    event = SpanEventToAdd(row=0, name=name, time_unix_nano=time_unix_nano, attributes=attributes)
    expected = lean.SpanEvent(name=name, time_unix_nano=time_unix_nano)
    for key, value in attributes.items():
        set_attribute(expected.attributes, key, value)
    assert _event_bytes(event) == expected.SerializeToString()
