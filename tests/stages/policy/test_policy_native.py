"""The policy stage's native path (processor/stages/policy/native.py, processor/native/src/stages/policy.rs) and
the polars oracle (tests/oracle/policy.py) give the same changes, events, metrics and stored budget
totals.

Each example runs one random policy file over a few random batches (some retried) through two
stages with their own in-memory budget stores: the product's and the oracle. Everything must
agree exactly, floats to the last bit: both paths do the same IEEE operations in the same order
(the metric cost sums are compensated sums in span order, as polars sums a group of fewer than
128 spans).
"""

from __future__ import annotations

import time

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from processor.core.decode import WantedKeys, decode_logs, decode_traces
from tests.support.clock import BASE_NS, HOUR_NS
from tests.support.differential import metric_samples, same
from tests.support.otlp_builders import key_values, span, trace_request
from tests.support.policy_stages import (
    labelled_stage,
    policy_text,
    stored,
)

DAY_NS = 24 * HOUR_NS
# 2026-03-08 07:00 UTC: 02:00 in New York, where clocks went forward that night.
DST_NS = 1_772_953_200 * 10**9

mode = st.sampled_from(["enforced", "advisory", "audit_only"])
dimension = st.sampled_from(["team", "project", "customer_id", "environment"])
subject_value = st.sampled_from(["ml", "search", "chat", "7"])

budget_fields = {
    "limit_usd": st.sampled_from([0.3, 0.5, 1.0, 2.5]),
    "period": st.sampled_from(["daily", "weekly", "monthly"]),
    "timezone": st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]),
    "warn_at": st.lists(st.sampled_from([0.25, 0.5, 0.8, 0.95]), unique=True, max_size=3),
    "mode": mode,
}
# A budget keyed on a span attribute: its subjects redacted, capped in the store, else OVERFLOW.
CONVERSATION = "gen_ai.conversation.id"
EMAIL = "ada.lovelace@example.com"
conversation = st.sampled_from(["c-1", "c-2", "c-3", " c-1 ", "", EMAIL])
attribute_budget = st.fixed_dictionaries(
    {**budget_fields, "attribute": st.just(CONVERSATION), "max_subjects": st.sampled_from([1, 2, 100])},
    optional={"value": st.sampled_from(["c-1", "c-2", EMAIL])},
)
budget = st.one_of(
    st.fixed_dictionaries(budget_fields, optional={"dimension": dimension, "value": subject_value}).filter(
        lambda b: "value" not in b or "dimension" in b
    ),
    attribute_budget,
)

match = st.dictionaries(dimension, st.lists(subject_value, min_size=1), max_size=2)
rule = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("max_cost_per_operation"), "max_usd": st.sampled_from([0.1, 0.25, 1.0]), "mode": mode},
        optional={"match": match},
    ),
    st.fixed_dictionaries(
        {"type": st.just("max_tokens_per_request"), "max_tokens": st.sampled_from([0, 100, 1000]), "mode": mode},
        optional={"match": match},
    ),
    st.fixed_dictionaries({"type": st.just("pii_detected"), "mode": mode}, optional={"match": match}),
    st.fixed_dictionaries(
        {
            "type": st.just("required_attribution"),
            "mode": mode,
            "dimensions": st.lists(dimension, min_size=1, max_size=3),
        },
        optional={"match": match},
    ),
    st.fixed_dictionaries(
        {"type": st.just("model_access"), "mode": mode},
        optional={
            "match": match,
            "allow": st.lists(st.sampled_from(["gpt-4o-mini", "claude-*", "GPT-?o", "o1.*"]), min_size=1),
            "deny": st.lists(st.sampled_from(["*haiku*", "claude-3-opus", "*"]), min_size=1),
        },
    ).filter(lambda r: "allow" in r or "deny" in r),
)
policy = st.tuples(st.lists(budget, max_size=3), st.lists(rule, max_size=6)).filter(lambda p: p[0] or p[1])

text_value = st.one_of(subject_value, st.sampled_from([" ml ", "", "  ", "\u00a0search\u2003", "é"]))
genai_attributes = st.fixed_dictionaries(
    {},
    optional={
        "genops.team": st.one_of(text_value, st.integers(0, 9)),
        "genops.project": text_value,
        "genops.customer_id": st.sampled_from(["c-1", "c-2", "c-3"]),
        "genops.environment": st.one_of(text_value, st.booleans()),
        "service.name": st.sampled_from(["chat-api", "", "search-api"]),
        "gen_ai.request.model": st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude-3-haiku", "Claude-3-opus", "o1.x"]),
        "gen_ai.provider.name": st.sampled_from(["openai", "anthropic"]),
        "genops.cost.model": st.sampled_from(["gpt-4o", " "]),
        "genops.cost.status": st.sampled_from(["priced", "unpriced", ""]),
        "genops.cost.total": st.one_of(
            # Binary fractions land running sums exactly on a threshold (the boundary cases).
            st.sampled_from([0.125, 0.25, 0.5]),
            st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0, -0.1]),
            st.floats(min_value=0, max_value=3, allow_nan=False),
            st.sampled_from(["0.2", " 0.75 ", "n/a", "1e-1", "inf", "nan"]),
            # Ignored for their span alone (counted in genops_invalid_values_total).
            st.sampled_from([float("nan"), float("inf"), float("-inf"), -3.0]),
            st.integers(0, 2),
        ),
        "gen_ai.usage.input_tokens": st.integers(0, 900),
        "gen_ai.usage.output_tokens": st.integers(0, 300),
        "genops.redaction.detected": st.one_of(st.integers(0, 2), st.sampled_from(["1", " 2 ", "x"])),
        "error.type": st.sampled_from(["timeout", " "]),
        CONVERSATION: st.one_of(conversation, st.integers(6, 7)),
    },
)
start_time = st.one_of(
    st.sampled_from([0, BASE_NS, BASE_NS + DAY_NS // 2, BASE_NS + DAY_NS, BASE_NS + 40 * DAY_NS, 2**63, 2**64 - 10**7]),
    st.integers(DST_NS - 12 * HOUR_NS, DST_NS + 12 * HOUR_NS),
)
one_span = st.tuples(
    genai_attributes,
    start_time,
    # End minus start (None: no end; "huge": an end past 2^63 ns).
    st.sampled_from([None, 0, 1_500_000, 2 * 10**9, -10, "huge"]),
    st.sampled_from([0, 1, 2]),  # status code
)
resource = st.fixed_dictionaries(
    {},
    optional={
        "service.name": st.sampled_from(["chat-api", "search-api"]),
        "genops.team": text_value,
        CONVERSATION: conversation,
    },
)
# Batches, their resource and whether each is sent a second time (a Collector retry).
batches = st.lists(
    st.tuples(st.lists(one_span, min_size=1, max_size=12), resource, st.booleans()), min_size=1, max_size=3
)
labels = st.sampled_from(["team,model", "team,project,cost_center,feature,environment,model,provider", ""])


# No shrinking: an example runs a dozen stage calls, and shrinking one took minutes.
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.generate],
)
@given(policy=policy, batches=batches, metrics_labels=labels, max_values=st.sampled_from([1, 3, 100]))
def test_native_and_polars_paths_agree(tmp_path_factory, monkeypatch, policy, batches, metrics_labels, max_values):
    # Spans without a start are charged (and get events) at the time they arrive: one clock for both.
    monkeypatch.setattr(time, "time_ns", lambda: BASE_NS + 7 * HOUR_NS)
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(policy_text(*policy))
    (native, native_registry) = labelled_stage(path, metrics_labels, max_values)
    (fallback, fallback_registry) = labelled_stage(path, metrics_labels, max_values, oracle=True)
    for spans, resource_attributes, retried in batches:
        built = []
        for attributes, start, duration, status in spans:
            one = span(attributes=attributes, start_time_unix_nano=start) if attributes else span(name="GET /")
            if duration == "huge":
                one.end_time_unix_nano = 2**64 - 1
            else:
                one.end_time_unix_nano = 0 if duration is None else min(max(start + duration, 0), 2**64 - 1)
            one.status.code = status
            built.append(one)
        raw = trace_request(built, resource_attributes or None).SerializeToString()
        wanted = WantedKeys.union((native.wanted_keys(), fallback.wanted_keys()))
        for _ in range(2 if retried else 1):
            compare(native, fallback, decode_traces(raw, wanted))
    same(metric_samples(native_registry), metric_samples(fallback_registry), "metrics")
    same(stored(native), stored(fallback), "stored totals")
    native.close()
    fallback.close()


def compare(native, fallback, batch) -> None:
    """Both stages on `batch`: the same changes and events."""
    got = native.process(batch)
    want = fallback.process(batch)
    # (No engine: a log batch without GenAI usage, left as it is.)
    assert (got.engine, want.engine) in {("native", "polars"), (None, None)}
    assert list(got.set_attributes) == list(want.set_attributes)
    for key, series in want.set_attributes.items():
        assert got.set_attributes[key].dtype == series.dtype, key
        assert got.set_attributes[key].name == series.name, key
        same(got.set_attributes[key].to_list(), series.to_list(), key)
    same(
        [(e.row, e.name, e.time_unix_nano, e.attributes) for e in got.all_events()],
        [(e.row, e.name, e.time_unix_nano, e.attributes) for e in want.all_events()],
        "events",
    )


# A log record: its attributes, span id (empty or all zero: it names no span, so it is a call of
# its own), time and observed time (its time when it has none).
log_record = st.tuples(
    genai_attributes, st.sampled_from([b"", b"\0" * 8, b"\x01" * 8]), start_time, st.sampled_from([0, BASE_NS])
)
log_batches = st.lists(
    st.tuples(st.lists(log_record, min_size=1, max_size=12), resource, st.booleans()), min_size=1, max_size=3
)


def log_request(records: list, resource_attributes: dict) -> bytes:
    built = [
        logs_pb2.LogRecord(
            time_unix_nano=at,
            observed_time_unix_nano=observed,
            span_id=span_id,
            trace_id=b"\x02" * 16 if span_id else b"",
            attributes=key_values(attributes),
        )
        for attributes, span_id, at, observed in records
    ]
    return logs_pb.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=resource_pb2.Resource(attributes=key_values(resource_attributes)),
                scope_logs=[logs_pb2.ScopeLogs(log_records=built)],
            )
        ]
    ).SerializeToString()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.generate],
)
@given(policy=policy, batches=log_batches, metrics_labels=labels, max_values=st.sampled_from([1, 100]))
def test_native_and_polars_paths_agree_on_log_only_calls(
    tmp_path_factory, monkeypatch, policy, batches, metrics_labels, max_values
):
    """Log records that are GenAI calls of their own (log_charges.py) are charged alike, records
    naming a span are left to the span, and no event is added to a log record."""
    monkeypatch.setattr(time, "time_ns", lambda: BASE_NS + 7 * HOUR_NS)
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(policy_text(*policy))
    (native, native_registry) = labelled_stage(path, metrics_labels, max_values)
    (fallback, fallback_registry) = labelled_stage(path, metrics_labels, max_values, oracle=True)
    wanted = WantedKeys.union((native.wanted_keys(), fallback.wanted_keys()))
    for records, resource_attributes, retried in batches:
        raw = log_request(records, resource_attributes)
        for _ in range(2 if retried else 1):
            compare(native, fallback, decode_logs(raw, wanted))
    same(metric_samples(native_registry), metric_samples(fallback_registry), "metrics")
    same(stored(native), stored(fallback), "stored totals")
    native.close()
    fallback.close()


# The attribution the GenOps spec asks of every GenAI span.
ATTRIBUTED = {"genops.team": "ml", "genops.project": "chat", "genops.environment": "production"}


def test_native_path_tags_and_verdicts_a_crossing_span(tmp_path):
    """A known case for the native path alone: the span reaching the warn level and the one past the limit."""
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text([{"limit_usd": 1.0, "period": "daily", "warn_at": [0.5], "mode": "enforced"}], []))
    stage, _ = labelled_stage(path, "team,model", 100)
    attributes = {"gen_ai.request.model": "gpt-4o", "genops.cost.total": 0.5}
    batch = decode_traces(trace_request([span(attributes=attributes)] * 3).SerializeToString(), stage.wanted_keys())
    changes = stage.process(batch)
    assert changes.set_attributes["genops.budget.consumed"].to_list() == [0.5, 1.0, 1.5]
    assert changes.set_attributes["genops.policy.result"].to_list() == ["WARNING", "WARNING", "BLOCKED"]
    assert changes.set_attributes["genops.policy.violations"].dtype == pl.List(pl.String)
    assert [(e.row, e.name) for e in changes.events if e.name == "genops.budget.alert"] == [
        (0, "genops.budget.alert"),
        (2, "genops.budget.alert"),
    ]
    stage.close()


@pytest.mark.parametrize("oracle", [False, True])
def test_budgets_tied_on_utilization_tag_the_first_budget_listed(tmp_path, oracle):
    """2.033393344266797 / 2.5 and 2.033393344266797 * (1 / 2.5) differ in the last bit: however a
    path divides, two budgets at the same spend and limit stay tied, and the first listed wins."""
    path = tmp_path / "policy.yaml"
    weekly = {"limit_usd": 2.5, "period": "weekly", "mode": "advisory"}
    path.write_text(policy_text([{**weekly, "dimension": "environment"}, weekly], []))
    stage, _ = labelled_stage(path, "team", 100, oracle)
    call = {"gen_ai.request.model": "gpt-4o"}
    spans = [
        span(attributes={**call, "genops.cost.total": 2.033393344266797, "genops.environment": "prod"}),
        # Charged to the global budget only: the per-environment budget's column has a gap here.
        span(attributes={**call, "genops.cost.total": 0.25}),
    ]
    changes = stage.process(decode_traces(trace_request(spans).SerializeToString(), stage.wanted_keys()))
    assert changes.set_attributes["genops.budget.name"].to_list() == ["b0", "b1"]
    stage.close()
