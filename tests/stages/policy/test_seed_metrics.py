"""The GenOps seed metrics (issue 21 item 4): evaluation scores, cost per operation type, policy checks.

Through the stages `serve` builds, on real OTLP bytes, on both engines.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.config import PolicyConfig, SidecarConfig
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.assembly import build_stages, close_stages
from tests.support.otlp_builders import log_request, span, trace_request
from tests.support.sample_values import EMAIL

SCORE_VALUE = "gen_ai.evaluation.score.value"
POLICY = """
policies:
  - name: token-cap
    type: max_tokens_per_request
    max_tokens: 1500
    mode: advisory
"""
RESOURCE = {"service.name": "chat-api", "k8s.namespace.name": "ml", "deployment.environment.name": "prod"}


@pytest.fixture
def sidecar(tmp_path, engine):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    config = SidecarConfig(policy=PolicyConfig(policy_file=str(policy), state_backend="memory"))
    registry = CollectorRegistry()
    stages = build_stages(config, registry)
    yield Pipeline(stages, SidecarMetrics.create(registry).pipeline), registry
    close_stages(stages)


def llm(operation: str, tokens: int = 1000, events=None, **attributes: object):
    values: dict[str, object] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": tokens,
        "gen_ai.usage.output_tokens": 0,
        **attributes,
    }
    return span(attributes=values, events=events)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_cost_by_operation_type_sums_the_awus_and_a_retried_request_counts_once(sidecar):
    pipeline, registry = sidecar
    request = trace_request(
        [llm("chat"), llm("text_completion"), llm("embeddings"), span(name="GET /", attributes={"http.route": "/"})],
        resource=RESOURCE,
    ).SerializeToString()
    pipeline.process_traces(request)
    inference = sample(registry, "genops_cost_by_operation_usd", operation_type="inference")
    embedding = sample(registry, "genops_cost_by_operation_usd", operation_type="embedding")
    # gpt-4o-mini input: $0.15 per million tokens; 1000 tokens each.
    assert inference == pytest.approx(2 * 0.00015)
    assert embedding == pytest.approx(0.00015)
    assert inference + embedding == pytest.approx(sum_of(registry, "genops_cost_total_usd"))
    pipeline.process_traces(request)  # the Collector retrying it
    assert sample(registry, "genops_cost_by_operation_usd", operation_type="inference") == pytest.approx(inference)


def sum_of(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for family in registry.collect() for s in family.samples if s.name == name)


def test_policy_checks_count_compliant_and_violating_spans_per_policy_and_type(sidecar):
    pipeline, registry = sidecar
    spans = [llm("chat", tokens=1000), llm("chat", tokens=2000), llm("chat", tokens=3000)]
    pipeline.process_traces(trace_request(spans, resource=RESOURCE).SerializeToString())
    checks = {"policy_name": "token-cap", "policy_type": "max_tokens_per_request"}
    assert sample(registry, "genops_policy_checks_total", **checks, outcome="violated") == 2
    assert sample(registry, "genops_policy_checks_total", **checks, outcome="compliant") == 1
    # The built-in attribution check is a policy too: every span here is attributed.
    builtin = {"policy_name": "genops-spec-attribution", "policy_type": "required_attribution"}
    assert sample(registry, "genops_policy_checks_total", **builtin, outcome="compliant") == 3
    assert sample(registry, "genops_policy_checks_total", **builtin, outcome="violated") == 0


def test_evaluation_scores_from_genops_eval_attributes_span_events_and_log_events(sidecar):
    pipeline, registry = sidecar
    judged = llm(
        "chat",
        events=[
            ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "Relevance", SCORE_VALUE: 0.85}),
            ("genops.evaluation.complete", {"genops.eval.metric": "toxicity", "genops.eval.score": 0.05}),
            ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "Relevance"}),  # a label only: no score
        ],
    )
    scored = span(
        name="eval",
        attributes={"genops.eval.metric": "faithfulness", "genops.eval.score": 0.6, "genops.eval.evaluator": "judge"},
    )
    request = trace_request([judged, scored], resource=RESOURCE).SerializeToString()
    pipeline.process_traces(request)
    pipeline.process_traces(request)  # retried: not scored again
    relevance = {"evaluation_type": "Relevance", "evaluator": "chat-api"}
    assert sample(registry, "genops_evaluation_score_count", **relevance) == 1
    assert sample(registry, "genops_evaluation_score_sum", **relevance) == pytest.approx(0.85)
    assert sample(registry, "genops_evaluation_score_bucket", **relevance, le="0.9") == 1
    assert sample(registry, "genops_evaluation_score_bucket", **relevance, le="0.8") == 0
    toxicity = {"evaluation_type": "toxicity", "evaluator": "chat-api"}
    assert sample(registry, "genops_evaluation_score_sum", **toxicity) == pytest.approx(0.05)
    faithful = {"evaluation_type": "faithfulness", "evaluator": "judge"}
    assert sample(registry, "genops_evaluation_score_sum", **faithful) == pytest.approx(0.6)

    # The OTel event as a log record (its attributes on the record), from an evaluation service.
    logs = log_request(
        [""],
        attributes={"gen_ai.evaluation.name": "Relevance", "gen_ai.evaluation.score.value": "0.25"},
        resource={"service.name": "evaluator-svc"},
    )
    pipeline.process_logs(logs.SerializeToString())
    from_logs = {"evaluation_type": "Relevance", "evaluator": "evaluator-svc"}
    assert sample(registry, "genops_evaluation_score_sum", **from_logs) == pytest.approx(0.25)


def test_evaluation_labels_pass_the_outbound_redaction(sidecar):
    pipeline, registry = sidecar
    scored = span(name="eval", attributes={"genops.eval.metric": f"reviewed by {EMAIL}", "genops.eval.score": 1.0})
    pipeline.process_traces(trace_request([scored], resource={"service.name": EMAIL}).SerializeToString())
    labels = [
        s.labels for family in registry.collect() for s in family.samples if s.name == "genops_evaluation_score_count"
    ]
    assert len(labels) == 1
    assert EMAIL not in str(labels)
