"""Budgets, policy verdicts, shared budget state and the product metrics of the policy stage.

Spend comes from `genops.cost.total` on the spans (as an SDK that prices its own calls sends
it), so these tests do not depend on the pricing table. Costs are binary fractions (0.25) so
running sums are exact and the crossing span is unambiguous.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from processor.config import PolicyConfig
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.protos import budget_pb2
from processor.stages.policy.budget_api import BUDGETS_PATH, BudgetStatusReader, add_budget_service, http_budget_status
from processor.stages.policy.policy_file import PolicyFileError, parse_policy_file
from processor.stages.policy.stage import build_policy_stage, check_policy_config
from tests.support.collector_harness import running_sidecar
from tests.support.genai_spans import ATTRIBUTED, llm_span
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import attributes_to_dict
from tests.support.pipeline_runs import run_pipeline
from tests.support.policy_stages import (
    ML_BUDGET,
    stage_config,
)
from tests.support.sidecar_runner import RunningSidecar


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(ML_BUDGET)
    return path


def test_two_sidecar_processes_sharing_redis_tag_the_exact_span_that_crosses_the_budget(sink, policy_file, redis_url):
    env = {
        "GENOPS_POLICY_POLICY_FILE": str(policy_file),
        "GENOPS_POLICY_STATE_BACKEND": "redis",
        "GENOPS_POLICY_REDIS_URL": redis_url,
    }
    with (
        running_sidecar(sink.endpoint, extra_env=env) as first,
        running_sidecar(sink.endpoint, extra_env=env) as second,
    ):
        with grpc.insecure_channel(first.listen_endpoint) as channel:
            export_traces(channel, trace_request([llm_span(), llm_span()]))
        with grpc.insecure_channel(second.listen_endpoint) as channel:
            export_traces(channel, trace_request([llm_span(), llm_span(), llm_span(), llm_span()]))
    spans = [s.attributes for s in sink.spans()]
    assert [s["genops.budget.consumed"] for s in spans] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert [s["genops.budget.exceeded"] for s in spans] == [False, False, False, False, True, True]
    results = [s["genops.policy.result"] for s in spans]
    assert results == ["ALLOWED", "WARNING", "WARNING", "WARNING", "BLOCKED", "BLOCKED"]
    assert spans[4]["genops.policy.violations"] == ["budget:ml-daily"]
    assert spans[4]["genops.policy.reason_code"] == "BUDGET_EXCEEDED"
    assert spans[4]["genops.budget.remaining"] == 0.0
    alerts = [[e for e in s.span.events if e.name == "genops.budget.alert"] for s in sink.spans()]
    assert [len(found) for found in alerts] == [0, 1, 0, 0, 1, 0]
    exceeded = attributes_to_dict(alerts[4][0].attributes)
    assert exceeded["genops.budget.name"] == "ml-daily"
    assert exceeded["genops.budget.consumed"] == 1.25
    assert exceeded["genops.budget.allocated"] == 1.0
    assert exceeded["genops.budget.threshold"] == 1.0


def test_consumed_amount_survives_a_restart_with_the_sqlite_store(policy_file, tmp_path):
    config = stage_config(policy_file, state_backend="sqlite", state_path=str(tmp_path / "state" / "budgets.sqlite"))
    first = build_policy_stage(config, CollectorRegistry())
    run_pipeline(first, trace_request([llm_span(), llm_span()]))
    first.close()

    restarted = build_policy_stage(config, CollectorRegistry())
    spans = run_pipeline(restarted, trace_request([llm_span(0.5), llm_span()]))
    assert [s["genops.budget.consumed"] for s in spans] == [1.0, 1.25]
    assert [s["genops.budget.exceeded"] for s in spans] == [False, True]
    restarted.close()


def test_a_batch_retried_after_a_forward_failure_is_counted_once(sink, policy_file, tmp_path):
    registry = CollectorRegistry()
    config = stage_config(policy_file, state_backend="sqlite", state_path=str(tmp_path / "budgets.sqlite"))
    stage = build_policy_stage(config, registry)
    sidecar = RunningSidecar(sink.endpoint, stages=[stage]).start()
    request = trace_request([llm_span(), llm_span(), llm_span()])
    try:
        with sidecar.channel() as channel:
            sink.fail_code = grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError):
                export_traces(channel, request)
            sink.fail_code = None
            export_traces(channel, request)  # the Collector's retry: the same bytes
            export_traces(channel, trace_request([llm_span()]))
    finally:
        sidecar.stop()
    spans = [s.attributes for s in sink.spans()]
    assert [s["genops.budget.consumed"] for s in spans] == [0.25, 0.5, 0.75, 1.0]
    alerts = [[e for e in s.span.events if e.name == "genops.budget.alert"] for s in sink.spans()]
    assert [len(found) for found in alerts] == [0, 1, 0, 0]
    assert registry.get_sample_value("genops_operations_total", _labels(project="chat-api", team="ml")) == 4
    assert registry.get_sample_value("genops_cost_total_usd", _labels(project="chat-api", team="ml")) == 1.0


def _labels(**values: str) -> dict[str, str]:
    labels = dict.fromkeys(("team", "project", "cost_center", "feature", "provider"), "unknown")
    labels.update(model="gpt-4o-mini", environment="production")
    labels.update(values)
    return labels


EVERY_METRIC = (
    "genops_cost_total_usd",
    "genops_tokens_input_total",
    "genops_tokens_output_total",
    "genops_tokens_total",
    "genops_policy_violations_total",
    "genops_policy_evaluations_total",
    "genops_budget_utilization_ratio",
    "genops_budget_remaining_usd",
    "genops_budget_exceeded_total",
    "genops_operation_latency_seconds",
    "genops_operations_total",
    "genops_operation_errors_total",
)


def test_metrics_expose_every_product_series_after_traffic(policy_file):
    registry = CollectorRegistry()
    stage = build_policy_stage(stage_config(policy_file), registry)
    tokens = {"gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20, "gen_ai.provider.name": "openai"}
    run_pipeline(
        stage,
        trace_request([llm_span(0.75, **tokens), llm_span(0.5, **tokens, **{"error.type": "timeout"})]),
    )
    text = generate_latest(registry).decode()
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    for name in EVERY_METRIC:
        series = {name + "_bucket", name + "_count"} if name.endswith("_seconds") else {name}
        assert series <= exposed, f"{name} missing from /metrics"
    labels = _labels(team="ml", project="chat-api", provider="openai")
    assert registry.get_sample_value("genops_cost_total_usd", labels) == 1.25
    assert registry.get_sample_value("genops_tokens_input_total", labels) == 200
    assert registry.get_sample_value("genops_tokens_output_total", labels) == 40
    assert registry.get_sample_value("genops_tokens_total", labels) == 240
    assert registry.get_sample_value("genops_operation_errors_total", labels) == 1
    assert registry.get_sample_value("genops_operation_latency_seconds_count", labels) == 2
    assert registry.get_sample_value("genops_operation_latency_seconds_sum", labels) == pytest.approx(0.003)
    assert registry.get_sample_value("genops_budget_utilization_ratio", {"budget": "ml-daily", "subject": "ml"}) == 1.25
    assert registry.get_sample_value("genops_budget_remaining_usd", {"budget": "ml-daily", "subject": "ml"}) == 0
    assert registry.get_sample_value("genops_budget_exceeded_total", {"budget": "ml-daily", "mode": "enforced"}) == 1
    assert registry.get_sample_value("genops_policy_evaluations_total", {"result": "BLOCKED"}) == 1
    assert (
        registry.get_sample_value(
            "genops_policy_violations_total",
            {"policy": "budget:ml-daily", "reason_code": "BUDGET_EXCEEDED", "mode": "enforced"},
        )
        == 1
    )


def test_label_values_beyond_the_cap_become_other(policy_file):
    registry = CollectorRegistry()
    stage = build_policy_stage(stage_config(policy_file, metrics_max_label_values=2, metrics_labels="team"), registry)
    run_pipeline(stage, trace_request([llm_span(0.25, **{"genops.team": t}) for t in ("a", "b", "c", "d")]))
    run_pipeline(stage, trace_request([llm_span(0.25, **{"genops.team": "a"})]))
    assert registry.get_sample_value("genops_operations_total", {"team": "a"}) == 2
    assert registry.get_sample_value("genops_operations_total", {"team": "b"}) == 1
    assert registry.get_sample_value("genops_operations_total", {"team": "other"}) == 2
    assert registry.get_sample_value("genops_operations_total", {"team": "c"}) is None


def test_spans_labelled_unknown_and_unattributed_spans_share_one_series(policy_file):
    registry = CollectorRegistry()
    stage = build_policy_stage(stage_config(policy_file, metrics_labels="team"), registry)
    unattributed = span(attributes={"gen_ai.request.model": "gpt-4o-mini", "genops.cost.total": 0.1})
    named = [llm_span(0.2, **{"genops.team": "unknown"}), llm_span(0.4, **{"genops.team": "unknown"})]
    run_pipeline(stage, trace_request([named[0], unattributed, named[1], llm_span(1.0)]))
    assert registry.get_sample_value("genops_operations_total", {"team": "unknown"}) == 3
    assert registry.get_sample_value("genops_cost_total_usd", {"team": "unknown"}) == pytest.approx(0.7)
    assert registry.get_sample_value("genops_operations_total", {"team": "ml"}) == 1


RULES = """
policies:
  - name: cost-cap
    type: max_cost_per_operation
    max_usd: 1.0
    mode: advisory
  - name: ml-models
    type: model_access
    match: {team: ml}
    allow: ["gpt-4o-mini", "claude-*-haiku*"]
    mode: enforced
  - name: attributed
    type: required_attribution
    dimensions: [team, customer_id]
    mode: audit_only
  - name: no-pii
    type: pii_detected
    mode: advisory
  - name: token-cap
    type: max_tokens_per_request
    max_tokens: 1000
    mode: enforced
"""


# Rules no span of these tests violates: with them a policy has more checks than the verdict
# lookup table takes, which must not change any verdict.
NEVER_VIOLATED = "".join(
    f"""
  - name: unreachable-{i}
    type: max_tokens_per_request
    max_tokens: 1000000000
    mode: {("enforced", "advisory", "audit_only")[i % 3]}
"""
    for i in range(8)
)


@pytest.mark.parametrize("extra_rules", ["", NEVER_VIOLATED], ids=["few-checks", "many-checks"])
def test_policy_rules_give_each_span_its_violations_result_and_reason(tmp_path, extra_rules):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES + extra_rules)
    stage = build_policy_stage(stage_config(path), CollectorRegistry())
    customer = {"genops.customer_id": "c-1"}
    spans = run_pipeline(
        stage,
        trace_request(
            [
                llm_span(0.25, **customer),
                llm_span(2.0, **customer),
                llm_span(0.25, **customer, **{"gen_ai.request.model": "gpt-4o"}),
                llm_span(0.25, **customer, **{"gen_ai.request.model": "Claude-3-5-Haiku-latest"}),
                llm_span(0.25, **{"genops.team": "search", "gen_ai.request.model": "gpt-4o"}),
                llm_span(0.25, **customer, **{"genops.redaction.detected": 2}),
                llm_span(0.25, **customer, **{"gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 200}),
                span(name="GET /health", attributes={"http.route": "/health"}),
            ]
        ),
    )
    verdicts = [
        (s.get("genops.policy.violations"), s.get("genops.policy.result"), s.get("genops.policy.reason_code"))
        for s in spans
    ]
    assert verdicts == [
        (None, "ALLOWED", None),
        (["cost-cap"], "WARNING", "x_max_cost_per_operation"),
        (["ml-models"], "BLOCKED", "POLICY_DENY_MODEL"),
        (None, "ALLOWED", None),
        # Audit-only: listed, but an ALLOWED span carries no reason code (spec §5.3).
        (["attributed"], "ALLOWED", None),
        (["no-pii"], "WARNING", "x_pii_detected"),
        (["token-cap"], "BLOCKED", "x_max_tokens_per_request"),
        (None, None, None),
    ]


def test_attribution_falls_back_to_resource_and_configured_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("budgets:\n  - {name: per-project, dimension: project, limit_usd: 10, period: monthly}\n")
    stage = build_policy_stage(stage_config(path), CollectorRegistry())
    request = trace_request(
        [llm_span(1.0), llm_span(1.0, **{"genops.project": "billing"}), llm_span(1.0)],
        resource={"service.name": "chat-api", "k8s.namespace.name": "ml"},
    )
    spans = run_pipeline(stage, request)
    assert [s["genops.budget.consumed"] for s in spans] == [1.0, 1.0, 2.0]
    statuses = stage.budget_status.status({"project": "chat-api"}, now=dt.datetime(2025, 10, 20, tzinfo=dt.UTC))
    assert [(s.subject, s.consumed_usd, s.window) for s in statuses] == [("chat-api", 2.0, "2025-10")]


def test_windows_follow_the_budget_timezone(tmp_path):
    (budget,) = parse_policy_file("budgets: [{name: b, limit_usd: 1, period: monthly, timezone: Asia/Tokyo}]").budgets
    label, start, end = budget.window(dt.datetime(2025, 10, 31, 16, 30, tzinfo=dt.UTC))
    assert (label, start.isoformat(), end.isoformat()) == (
        "2025-11",
        "2025-11-01T00:00:00+09:00",
        "2025-12-01T00:00:00+09:00",
    )
    (weekly,) = parse_policy_file("budgets: [{name: w, limit_usd: 1, period: weekly, timezone: Europe/Paris}]").budgets
    label, start, end = weekly.window(dt.datetime(2025, 10, 26, 23, 30, tzinfo=dt.UTC))  # Monday 00:30 in Paris
    assert (label, start.isoformat(), end.isoformat()) == (
        "2025-W44",
        "2025-10-27T00:00:00+01:00",
        "2025-11-03T00:00:00+01:00",
    )
    # Spans are bucketed the same way: 2025-10-31T16:30Z is November in Tokyo.
    path = tmp_path / "p.yaml"
    path.write_text("budgets: [{name: b, limit_usd: 1, period: monthly, timezone: Asia/Tokyo}]")
    stage = build_policy_stage(stage_config(path), CollectorRegistry())
    late_october = int(dt.datetime(2025, 10, 31, 16, 30, tzinfo=dt.UTC).timestamp()) * 10**9
    run_pipeline(stage, trace_request([span(attributes={"genops.cost.total": 0.5}, start_time_unix_nano=late_october)]))
    (status,) = stage.budget_status.status({}, now=dt.datetime(2025, 11, 15, tzinfo=dt.UTC))
    assert (status.window, status.consumed_usd) == ("2025-11", 0.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("budgets: [{name: a, limit_usd: 1, period: yearly}]", "period must be one of"),
        ("budgets: [{name: a, limit_usd: 0, period: daily}]", "limit_usd must be positive"),
        ("budgets: [{name: a, limit_usd: 1, period: daily, dimension: tenant}]", "unknown dimension 'tenant'"),
        ("budgets: [{name: a, limit_usd: 1, period: daily, timezone: Mars/Base}]", "unknown timezone"),
        ("budgets: [{name: a, limit_usd: 1, period: daily, warn_at: [1.2]}]", "between 0 and 1"),
        ("policies: [{name: p, type: model_access}]", "needs allow or deny"),
        ("policies: [{name: p, type: required_attribution, dimensions: []}]", "at least one dimension"),
        ("policies: [{name: p, type: max_tokens_per_request, max_usd: 1}]", "unknown field 'max_usd'"),
        ("budgets: [{name: a, limit_usd: 1, period: daily}, {name: a, limit_usd: 2, period: daily}]", "used twice"),
    ],
)
def test_policy_file_mistakes_are_named(text, message):
    with pytest.raises(PolicyFileError, match=message):
        parse_policy_file(text)


def test_policy_file_is_reloaded_and_a_broken_edit_keeps_the_last_good_one(policy_file):
    registry = CollectorRegistry()
    stage = build_policy_stage(stage_config(policy_file, reload_interval_seconds=0), registry)
    assert run_pipeline(stage, trace_request([llm_span()]))[0]["genops.budget.limit"] == 1.0
    policy_file.write_text(ML_BUDGET.replace("limit_usd: 1.0", "limit_usd: 2.0"))
    assert stage.source.watcher.check() is True
    assert run_pipeline(stage, trace_request([llm_span()]))[0]["genops.budget.limit"] == 2.0
    policy_file.write_text("budgets: [{name: broken")
    assert stage.source.watcher.check() is False
    assert run_pipeline(stage, trace_request([llm_span()]))[0]["genops.budget.limit"] == 2.0
    assert registry.get_sample_value("genops_policy_reload_success") == 0


def test_budget_status_over_http_says_when_a_gateway_should_block(policy_file):
    stage = build_policy_stage(stage_config(policy_file), CollectorRegistry())
    run_pipeline(stage, trace_request([llm_span(1.5, start_time_unix_nano=time.time_ns())]))
    status, body, content_type = http_budget_status(stage.budget_status, BUDGETS_PATH + "?team=ml")
    answer = json.loads(body)
    assert (status, content_type, answer["blocked"]) == (200, "application/json", True)
    (budget,) = answer["budgets"]
    assert budget["consumed_usd"] == 1.5
    assert budget["blocking"] is True
    assert budget["mode"] == "enforced"
    other = json.loads(http_budget_status(stage.budget_status, BUDGETS_PATH + "?team=search")[1])
    assert other == {"blocked": False, "budgets": []}
    assert http_budget_status(stage.budget_status, BUDGETS_PATH + "?tenant=x")[0] == 400


def test_budget_status_over_grpc(policy_file):
    stage = build_policy_stage(stage_config(policy_file), CollectorRegistry())
    run_pipeline(stage, trace_request([llm_span(0.75, start_time_unix_nano=time.time_ns())]))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def serve() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        add_budget_service(server, stage.budget_status)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                "/genops.budget.v1.BudgetService/GetBudgetStatus",
                request_serializer=budget_pb2.GetBudgetStatusRequest.SerializeToString,
                response_deserializer=budget_pb2.GetBudgetStatusResponse.FromString,
            )
            answer = call(budget_pb2.GetBudgetStatusRequest(attribution={"team": "ml"}), timeout=10)
            with pytest.raises(grpc.RpcError) as failure:
                call(budget_pb2.GetBudgetStatusRequest(attribution={"tenant": "x"}), timeout=10)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not answer.blocked
    (budget,) = answer.budgets
    assert (budget.name, budget.subject, budget.consumed_usd, budget.remaining_usd) == ("ml-daily", "ml", 0.75, 0.25)
    assert list(budget.warn_at) == [0.5]


def test_budget_status_reader_built_from_config_sees_the_stage_spend(policy_file, tmp_path):
    config = stage_config(policy_file, state_backend="sqlite", state_path=str(tmp_path / "b.sqlite"))
    stage = build_policy_stage(config, CollectorRegistry())
    run_pipeline(stage, trace_request([llm_span(0.5, start_time_unix_nano=time.time_ns())]))
    (budget,) = BudgetStatusReader.from_config(config).status({"team": "ml"})
    assert budget.consumed_usd == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"metrics_labels": "team,tenant"}, "unknown metrics label 'tenant'"),
        ({"attribution_fallbacks": {"tenant": "k8s.namespace.name"}}, "unknown dimension 'tenant'"),
        ({"policy_file": "/nonexistent/policy.yaml"}, "cannot read policy file"),
    ],
)
def test_policy_config_mistakes_are_reported_before_serving(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_policy_config(PolicyConfig(enabled=True, **overrides))


def test_spans_with_error_status_or_error_type_count_as_operation_errors(policy_file):
    from opentelemetry.proto.trace.v1 import trace_pb2

    registry = CollectorRegistry()
    stage = build_policy_stage(stage_config(policy_file, metrics_labels="team"), registry)
    failed = llm_span(0.0)
    failed.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    run_pipeline(stage, trace_request([failed, llm_span(0.0, **{"error.type": "429"}), llm_span(0.0)]))
    assert registry.get_sample_value("genops_operation_errors_total", {"team": "ml"}) == 2
    assert registry.get_sample_value("genops_operations_total", {"team": "ml"}) == 3


def test_spend_counts_sdk_costs_sent_as_strings_next_to_costs_the_sidecar_computed(policy_file):
    from processor.config import CostConfig
    from processor.stages.cost.stage import build_cost_stage

    registry = CollectorRegistry()
    cost = build_cost_stage(CostConfig(), registry, watch=False)
    policy = build_policy_stage(stage_config(policy_file), registry)
    common = {**ATTRIBUTED, "gen_ai.request.model": "gpt-4o-mini", "gen_ai.provider.name": "openai"}
    sdk = span(attributes={**common, "genops.cost.total": "0.5"})
    priced = span(attributes={**common, "gen_ai.usage.input_tokens": 1_000_000, "gen_ai.usage.output_tokens": 0})
    out = Pipeline([cost, policy], SidecarMetrics.create()).process_traces(
        trace_request([sdk, priced]).SerializeToString()
    )
    assert out.failed_stages == ()
    # $0.50 from the SDK (as a string) + 1M input tokens of gpt-4o-mini at $0.15/M.
    labels = _labels(team="ml", project="chat-api", provider="openai")
    assert registry.get_sample_value("genops_cost_total_usd", labels) == pytest.approx(0.65)


TWO_BUDGETS = ML_BUDGET.replace(
    "budgets:\n",
    """budgets:
  - name: everything
    limit_usd: 10.0
    period: monthly
    warn_at: [0.05]
    mode: audit_only
""",
)


def test_a_span_under_two_budgets_is_tagged_with_the_one_nearest_its_limit(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TWO_BUDGETS)
    stage = build_policy_stage(stage_config(path), CollectorRegistry())
    spans = run_pipeline(
        stage,
        trace_request([llm_span(0.25, **{"genops.team": "search"}), llm_span(0.5), llm_span(0.75)]),
    )
    assert [s["genops.budget.name"] for s in spans] == ["everything", "ml-daily", "ml-daily"]
    assert [s["genops.budget.consumed"] for s in spans] == [0.25, 0.5, 1.25]
    assert [s["genops.policy.result"] for s in spans] == ["ALLOWED", "WARNING", "BLOCKED"]
    assert [s.get("genops.policy.reason_code") for s in spans] == [None, "x_budget_warning", "BUDGET_EXCEEDED"]
    # Each budget's crossings land on the span that reached them, in budget order.
    assert [[(n, a["genops.budget.name"]) for n, a in s["_events"] if n == "genops.budget.alert"] for s in spans] == [
        [],
        [("genops.budget.alert", "everything"), ("genops.budget.alert", "ml-daily")],
        [("genops.budget.alert", "ml-daily")],
    ]


def test_the_sqlite_store_adds_many_windows_of_one_batch_like_the_memory_store(tmp_path):
    from processor.stages.policy.budget_state import MemoryStore, SqliteStore

    # More windows than one upsert statement takes, some of them seen before.
    first = {f"team:{i}": 0.25 + i / 1000 for i in range(450)}
    second = {f"team:{i}": 1.0 for i in range(300, 1000)}
    expires = {key: 4_000_000_000 for key in {**first, **second}}
    path = str(tmp_path / "budgets.sqlite")
    sqlite, memory = SqliteStore(path), MemoryStore()
    for fingerprint, increments in (("a", first), ("b", second), ("a", first)):
        got, want = sqlite.apply(fingerprint, increments, expires), memory.apply(fingerprint, increments, expires)
        assert got.repeated == want.repeated
        assert list(got.totals) == list(increments)
        assert got.totals == pytest.approx(want.totals)
    sqlite.close()
    reopened = SqliteStore(path)
    assert reopened.read(["team:0", "team:350", "team:999", "team:x"]) == pytest.approx(
        {"team:0": 0.25, "team:350": 0.25 + 0.35 + 1.0, "team:999": 1.0, "team:x": 0.0}
    )
    reopened.close()


def _open_and_apply(path: str, batch: str, barrier, outcomes) -> None:
    from processor.stages.policy.budget_state import SqliteStore

    barrier.wait()
    try:
        store = SqliteStore(path)
        store.apply(batch, {"team:ml": 0.25}, {})
        store.close()
        outcomes.put("ok")
    except Exception as exc:  # reported to the test, which names it
        outcomes.put(f"{type(exc).__name__}: {exc}")


def test_worker_processes_opening_a_new_sqlite_state_file_together_all_start_and_count(tmp_path):
    import multiprocessing

    from processor.stages.policy.budget_state import SqliteStore

    # The workers of a pod start at the same moment on one state file that does not exist yet.
    context = multiprocessing.get_context("spawn")
    workers = 6
    for attempt in range(3):
        path = str(tmp_path / f"start-{attempt}" / "budgets.sqlite")
        barrier, outcomes = context.Barrier(workers), context.Queue()
        children = [
            context.Process(target=_open_and_apply, args=(path, f"batch-{i}", barrier, outcomes))
            for i in range(workers)
        ]
        for child in children:
            child.start()
        results = [outcomes.get(timeout=120) for _ in children]
        for child in children:
            child.join(timeout=60)
        assert results == ["ok"] * workers
        store = SqliteStore(path)
        assert store.read(["team:ml"]) == {"team:ml": 0.25 * workers}
        store.close()


class InTurn:
    """The same stage without `start`: the pipeline runs it in its turn, on the batch."""

    def __init__(self, stage) -> None:
        self.stage = stage
        self.name, self.signals = stage.name, stage.signals

    def wanted_keys(self):
        return self.stage.wanted_keys()

    def process(self, batch):
        return self.stage.process(batch)


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_pii_policy_sees_what_redaction_found_on_its_own_thread_as_in_turn(tmp_path, monkeypatch, native):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

    from processor.stages.redaction.rules import load_rules
    from processor.stages.redaction.stage import RedactionStage

    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    path = tmp_path / "rules.yaml"
    path.write_text("policies:\n  - {name: no-pii, type: pii_detected, mode: advisory}\n")
    request = trace_request(
        [
            llm_span(0.25, **{"gen_ai.prompt": "hello", "note": "mail ada@example.com please"}),
            llm_span(0.25, **{"gen_ai.prompt": "hello", "note": "nothing to see"}),
            llm_span(0.25, **{"note": "nothing to see"}),
        ],
        resource={"service.name": "chat-api"},
    ).SerializeToString()
    outputs = []
    for wrap in (lambda stage: stage, InTurn):
        redaction = wrap(RedactionStage(load_rules(), None, CollectorRegistry()))
        policy = build_policy_stage(stage_config(path), CollectorRegistry())
        out = Pipeline([redaction, policy], SidecarMetrics.create()).process_traces(request)
        assert out.failed_stages == ()
        outputs.append(out.payload)
    assert outputs[0] == outputs[1]
    sent = trace_pb.ExportTraceServiceRequest.FromString(outputs[0])
    spans = [attributes_to_dict(s.attributes) for s in sent.resource_spans[0].scope_spans[0].spans]
    # A prompt masked by its key is counted but found no PII: only the detected email violates.
    assert [s.get("genops.redaction.count") for s in spans] == [2, 1, None]
    assert [s.get("genops.redaction.detected") for s in spans] == [1, None, None]
    assert [s.get("genops.policy.violations") for s in spans] == [["no-pii"], None, None]
    assert spans[0]["note"] == "mail [REDACTED:email] please"


# A string that claims 9 bytes where 1 follows, the lengths around it left right: in the first
# element of an array value, or as a value of its own.
CORRUPTIONS = {"nested": (b"\x0a\x03\x0a\x01a", b"\x0a\x03\x0a\x09a"), "value": (b"\x0a\x01z", b"\x0a\x09z")}


@pytest.mark.parametrize("where", sorted(CORRUPTIONS))
def test_a_request_with_a_corrupt_value_is_refused_as_malformed_with_redaction_on(where):
    from processor.core.decode import MalformedRequest
    from processor.stages.redaction.rules import load_rules
    from processor.stages.redaction.stage import RedactionStage

    attributes = {"tags": ["a", "b"], "user.email": "a@b.co", "note": "z"}
    raw = trace_request([span(attributes=attributes)]).SerializeToString()
    good, bad = CORRUPTIONS[where]
    assert raw.count(good) == 1
    corrupt = raw.replace(good, bad)
    pipeline = Pipeline([RedactionStage(load_rules(), None, CollectorRegistry())], SidecarMetrics.create())
    with pytest.raises(MalformedRequest):
        pipeline.process_traces(corrupt)
    # The stage's thread is free again: the next request goes through.
    assert pipeline.process_traces(raw).failed_stages == ()


def test_the_sqlite_store_copies_its_log_into_the_database_in_the_background_not_in_apply(tmp_path):
    import os

    from processor.stages.policy.budget_state import SqliteStore

    def fill(store: SqliteStore) -> None:
        for i in range(400):
            store.apply(f"batch-{i}", {f"team:t{j}": 0.25 for j in range(8)}, {})

    # Without the background copy, the log grows past the 1000 pages at which SQLite would copy it
    # in the middle of an apply, and the database file keeps only its empty tables.
    waiting = str(tmp_path / "waiting.sqlite")
    store = SqliteStore(waiting, checkpoint_seconds=3600)
    fill(store)
    page_size = store._db.execute("PRAGMA page_size").fetchone()[0]
    assert os.path.getsize(waiting + "-wal") > 1000 * page_size
    assert os.path.getsize(waiting) < 16 * page_size
    store.close()

    copied = str(tmp_path / "copied.sqlite")
    store = SqliteStore(copied, checkpoint_seconds=0.05)
    fill(store)
    deadline = time.monotonic() + 10
    while os.path.getsize(copied) < 16 * page_size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.getsize(copied) >= 16 * page_size
    assert store.read(["team:t0"]) == {"team:t0": 100.0}
    store.close()
