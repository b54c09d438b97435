"""Issue 20's open items: what a span says about itself decides how its texts are sanitised and
which rules act on them. Span names meet the sanitisers (a database span's as SQL, a URL's query in
any other's), MySQL and MariaDB read double-quoted text as a string, and `when`/`skip` conditions
read the item's (span's, log record's, data point's) own attributes. Each runs on both decoders;
the native redactor and the polars oracle agree on random batches of such spans."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from processor.core.decode import WantedKeys, decode_logs, decode_traces, native_module
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.redaction.rules import load_rules, parse_rules
from processor.stages.redaction.sanitizers import sanitize_sql, sanitize_urls_in_text
from processor.stages.redaction.stage import COUNT_KEY, DETECTED_KEY, KEYS_KEY
from tests.support.otlp_builders import key_values, log_request, span
from tests.support.otlp_sink import attributes_to_dict
from tests.support.pipeline_runs import run_logs, run_traces, spans_of
from tests.support.redaction_stages import PairedStages, custom_stage, default_stage


@pytest.fixture(params=["1", "0"], ids=["native-decoder", "python-decoder"])
def engine(request, monkeypatch):
    if request.param == "1" and native_module() is None:
        pytest.skip("native module not built")
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", request.param)
    return request.param


def sent_spans(stage, spans: list, service: str = "shop") -> list:
    request = trace_pb.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=key_values({"service.name": service})),
                scope_spans=[trace_pb2.ScopeSpans(spans=spans)],
            )
        ]
    )
    return spans_of(run_traces(stage, request))


def sent_name(stage, name: str, attributes: dict) -> str:
    (out,) = sent_spans(stage, [span(name=name, attributes=attributes)])
    return out.name


# --- span names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "database",
    [
        {"db.system.name": "postgresql"},
        {"db.system": "postgresql"},
        {"db.query.text": "SELECT 1"},
        {"db.statement": "SELECT 1"},
    ],
    ids=["db.system.name", "db.system", "db.query.text", "db.statement"],
)
def test_a_database_span_named_by_its_statement_keeps_the_statement_not_its_literals(engine, database):
    name = "SELECT * FROM users WHERE email = 'jane@example.org' AND id = 42"
    (out,) = sent_spans(default_stage(), [span(name=name, attributes=database)])
    assert out.name == "SELECT * FROM users WHERE email = ? AND id = ?"
    got = attributes_to_dict(out.attributes)
    # A rewrite, not a finding: the literal never reached the detectors.
    assert "span_name" in got[KEYS_KEY] and DETECTED_KEY not in got


def test_a_span_named_by_its_url_keeps_its_path_and_parameter_names(engine):
    name = "GET https://shop.example/search?q=jane@example.org&token=abc#top HTTP/1.1"
    assert (
        sent_name(default_stage(), name, {}) == "GET https://shop.example/search?q=REDACTED&token=REDACTED#top HTTP/1.1"
    )
    assert sent_name(default_stage(), "GET /search?user=42", {}) == "GET /search?user=REDACTED"


@pytest.mark.parametrize(
    "name",
    [
        "GET /users/{id}",  # a route: no query
        "checkout a=b",  # a parameter outside any URL is prose
        "retry? maybe",  # a question mark that is no URL's
        "SELECT * FROM t WHERE id = 7",  # statement-like, but not a database span
        "chat gpt-4o",
    ],
)
def test_span_names_without_a_url_query_on_other_spans_are_left_to_the_value_rules(engine, name):
    assert sent_name(default_stage(), name, {"http.request.method": "GET"}) == name


def test_the_value_rules_still_run_on_a_sanitised_span_name(engine):
    # The URL sanitiser masks only the query; an email in the path is the detectors' to find.
    name = "GET /users/jane@example.org?page=2"
    (out,) = sent_spans(default_stage(), [span(name=name)])
    assert out.name == "GET /users/[REDACTED:email]?page=REDACTED"
    assert attributes_to_dict(out.attributes)[DETECTED_KEY] == 1


def test_sanitize_span_name_false_leaves_span_names_to_the_value_rules(engine):
    rules = {
        "url_sanitizer": {"enabled": True, "sanitize_span_name": False},
        "db_sanitizer": {"sanitize_span_name": False, "sql": {"enabled": True}},
        "rules": [{"name": "email", "detector": "email"}],
    }
    stage = custom_stage(rules)
    assert sent_name(stage, "GET /s?q=1", {}) == "GET /s?q=1"
    db = {"db.system.name": "postgresql", "db.query.text": "SELECT 'a@b.io'"}
    (out,) = sent_spans(stage, [span(name="SELECT 'a@b.io'", attributes=db)])
    assert out.name == "SELECT '[REDACTED:email]'"
    # The attributes are still sanitised.
    assert attributes_to_dict(out.attributes)["db.query.text"] == "SELECT ?"


def test_a_disabled_sanitiser_sanitises_no_span_name_either(engine):
    stage = custom_stage({"url_sanitizer": {"enabled": False}, "db_sanitizer": {"sql": {"enabled": False}}})
    assert sent_name(stage, "GET /s?q=1", {}) == "GET /s?q=1"
    assert sent_name(stage, "SELECT 5", {"db.system.name": "mysql"}) == "SELECT 5"


def test_span_names_can_be_sanitised_without_any_attribute(engine):
    stage = custom_stage({"db_sanitizer": {"sql": {"enabled": True, "attributes": []}}})
    (out,) = sent_spans(stage, [span(name="SELECT 5", attributes={"db.statement": "SELECT 5"})])
    assert out.name == "SELECT ?"
    assert attributes_to_dict(out.attributes)["db.statement"] == "SELECT 5"


def test_span_name_rewrites_are_counted_under_their_sanitiser(engine):
    stage = default_stage()
    sent_spans(stage, [span(name="SELECT 5", attributes={"db.system.name": "mysql"}), span(name="GET /a?b=c")])
    counted = {
        sample.labels["detector"]: sample.value
        for metric in stage.redactions.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    assert counted == {"db_sanitizer": 1.0, "url_sanitizer": 1.0}


def test_the_span_name_option_of_sql_sits_where_the_collector_has_it():
    with pytest.raises(ValueError, match="db_sanitizer: sql: unknown field 'sanitize_span_name'"):
        parse_rules({"db_sanitizer": {"sql": {"enabled": True, "sanitize_span_name": False}}})


def test_the_defaults_sanitise_span_names():
    assert all(s.span_names for s in load_rules().sanitizers)


# --- MySQL and MariaDB double-quoted strings -------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "key"),
    [("mysql", "db.system.name"), ("mariadb", "db.system.name"), ("mysql", "db.system"), ("MySQL", "db.system.name")],
)
def test_mysql_and_mariadb_double_quoted_text_is_a_literal(engine, system, key):
    statement = 'SELECT `name` FROM users WHERE email = "jane@example.org" AND note = "say ""hi"" \\" ok"'
    attributes = {key: system, "db.statement": statement}
    (out,) = sent_spans(default_stage(), [span(name=statement, attributes=attributes)])
    expected = "SELECT `name` FROM users WHERE email = ? AND note = ?"
    assert attributes_to_dict(out.attributes)["db.statement"] == expected
    assert out.name == expected


@pytest.mark.parametrize("attributes", [{"db.system.name": "postgresql"}, {}, {"db.system.name": "mysql-proxy"}])
def test_other_systems_keep_double_quotes_as_identifiers(engine, attributes):
    statement = 'SELECT "Name" FROM "Users" WHERE id = 1'
    got = attributes_to_dict(
        sent_spans(default_stage(), [span(attributes={**attributes, "db.statement": statement})])[0].attributes
    )
    assert got["db.statement"] == 'SELECT "Name" FROM "Users" WHERE id = ?'


def test_the_current_system_key_decides_over_the_deprecated_one(engine):
    statement = 'SELECT "a"'
    attributes = {"db.system.name": "postgresql", "db.system": "mysql", "db.query.text": statement}
    got = attributes_to_dict(sent_spans(default_stage(), [span(attributes=attributes)])[0].attributes)
    assert got["db.query.text"] == statement


def test_the_dialect_comes_from_the_statements_own_span(engine):
    statement = 'SELECT "x"'
    spans = [
        span(attributes={"db.system.name": "mysql", "db.statement": statement}),
        span(attributes={"db.system.name": "postgresql", "db.statement": statement}),
    ]
    mysql, postgres = (attributes_to_dict(s.attributes)["db.statement"] for s in sent_spans(default_stage(), spans))
    assert (mysql, postgres) == ("SELECT ?", statement)


def test_ignored_system_keys_still_name_the_dialect(engine):
    # db.system.name itself is never touched, but the sanitiser reads it.
    stage = custom_stage({"ignored_keys": ["db.system.name"], "db_sanitizer": {"sql": {"enabled": True}}})
    got = attributes_to_dict(
        sent_spans(stage, [span(attributes={"db.system.name": "mariadb", "db.statement": 'SELECT "x"'})])[0].attributes
    )
    assert got["db.statement"] == "SELECT ?"


# --- conditions on item attributes ---------------------------------------------------------------


ITEM_CONDITIONS = {
    "summary": "silent",
    "rules": [
        {"name": "email", "detector": "email", "skip": {"attributes": {"db.system.name": "sqlite"}}},
        {"name": "ticket", "pattern": "TICKET-[0-9]+", "when": {"attributes": {"tenant": ["acme", "globex"]}}},
        {"name": "user", "keys": ["user.id"], "when": {"attributes": {"tenant": "acme", "tier": "gold"}}},
    ],
}


def test_rules_act_only_on_spans_whose_attributes_their_conditions_let_them(engine):
    note = "pat@example.com TICKET-1"
    spans = [
        span(name="local", attributes={"db.system.name": "sqlite", "note": note, "user.id": "u1"}),
        span(name="acme", attributes={"tenant": "acme", "tier": "gold", "note": note, "user.id": "u2"}),
        span(name="acme-basic", attributes={"tenant": "acme", "tier": "basic", "note": note, "user.id": "u3"}),
        span(name="none", attributes={"note": note, "user.id": "u4"}),
    ]
    got = [attributes_to_dict(s.attributes) for s in sent_spans(custom_stage(ITEM_CONDITIONS), spans)]
    assert [(g["note"], g["user.id"]) for g in got] == [
        ("pat@example.com TICKET-1", "u1"),
        ("[REDACTED:email] [REDACTED:ticket]", "[REDACTED:user]"),
        # Every `when` attribute must hold.
        ("[REDACTED:email] [REDACTED:ticket]", "u3"),
        ("[REDACTED:email] TICKET-1", "u4"),
    ]


def test_a_spans_name_status_and_events_follow_the_spans_attributes(engine):
    event = ("query", {"detail": "pat@example.com"})
    local = span(name="pat@example.com", attributes={"db.system.name": "sqlite"}, events=[event])
    local.status.message = "pat@example.com"
    other = span(name="pat@example.com", attributes={"db.system.name": "postgresql"}, events=[event])
    other.status.message = "pat@example.com"
    out = sent_spans(custom_stage(ITEM_CONDITIONS), [local, other])
    assert (out[0].name, out[0].status.message, attributes_to_dict(out[0].events[0].attributes)["detail"]) == (
        "pat@example.com",
        "pat@example.com",
        "pat@example.com",
    )
    assert out[1].name == out[1].status.message == "[REDACTED:email]"


def test_item_conditions_never_keep_a_rule_off_resource_or_scope_attributes(engine):
    rules = {
        "summary": "silent",
        "rules": [{"name": "email", "detector": "email", "skip": {"attributes": {"db.system.name": "sqlite"}}}],
    }
    request = trace_pb.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=key_values({"owner": "a@b.io"})),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(name="s", attributes=key_values({"owner": "a@b.io"})),
                        spans=[span(attributes={"db.system.name": "sqlite", "note": "a@b.io"})],
                    )
                ],
            )
        ]
    )
    sent = run_traces(custom_stage(rules), request)
    resource_spans = sent.resource_spans[0]
    assert attributes_to_dict(resource_spans.resource.attributes) == {"owner": "[REDACTED:email]"}
    assert attributes_to_dict(resource_spans.scope_spans[0].scope.attributes) == {"owner": "[REDACTED:email]"}
    assert attributes_to_dict(resource_spans.scope_spans[0].spans[0].attributes)["note"] == "a@b.io"


def test_item_conditions_read_a_log_records_own_attributes(engine):
    request = log_request(["pat@example.com"], attributes={"db.system.name": "sqlite", "note": "pat@example.com"})
    other = log_request(["pat@example.com"], attributes={"note": "pat@example.com"})
    request.resource_logs.extend(other.resource_logs)
    sent = run_logs(custom_stage(ITEM_CONDITIONS), request)
    records = [rl.scope_logs[0].log_records[0] for rl in sent.resource_logs]
    assert [(r.body.string_value, attributes_to_dict(r.attributes)["note"]) for r in records] == [
        ("pat@example.com", "pat@example.com"),
        ("[REDACTED:email]", "[REDACTED:email]"),
    ]


def test_item_conditions_read_a_data_points_own_attributes(engine):
    points = [
        metrics_pb2.NumberDataPoint(as_int=1, attributes=key_values({"db.system.name": "sqlite", "user": "p@e.io"})),
        metrics_pb2.NumberDataPoint(as_int=2, attributes=key_values({"user": "p@e.io"})),
    ]
    request = metrics_pb.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=resource_pb2.Resource(attributes=key_values({"service.name": "db"})),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(
                        metrics=[metrics_pb2.Metric(name="m", gauge=metrics_pb2.Gauge(data_points=points))]
                    )
                ],
            )
        ]
    )
    stage = custom_stage(ITEM_CONDITIONS)
    out = Pipeline([stage], SidecarMetrics.create().pipeline).process_metrics(request.SerializeToString())
    sent = metrics_pb.ExportMetricsServiceRequest.FromString(out.payload)
    users = [
        attributes_to_dict(p.attributes)["user"]
        for p in sent.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points
    ]
    assert users == ["p@e.io", "[REDACTED:email]"]


def test_what_the_sidecar_writes_meets_item_conditions_as_a_value_of_no_item(engine):
    stage = custom_stage(ITEM_CONDITIONS)
    # `when` on item attributes cannot be decided for it, so the rule acts (never out by doubt).
    assert stage.redact_one("genops.team", "pat@example.com TICKET-1") == "[REDACTED:email] [REDACTED:ticket]"


def test_item_conditions_of_the_rule_set_are_inherited_part_by_part(engine):
    rules = {
        "summary": "silent",
        "skip": {"attributes": {"db.system.name": "sqlite"}, "keys": ["debug.*"]},
        "rules": [
            {"name": "email", "detector": "email"},
            # Its own skip.attributes wins over the set's; the set's skip.keys still holds.
            {"name": "ticket", "pattern": "TICKET-[0-9]+", "skip": {"attributes": {"tenant": "acme"}}},
        ],
    }
    attributes = {"note": "a@b.io TICKET-1", "debug.note": "a@b.io TICKET-2"}
    local, acme = (
        attributes_to_dict(s.attributes)
        for s in sent_spans(
            custom_stage(rules),
            [
                span(attributes={**attributes, "db.system.name": "sqlite"}),
                span(attributes={**attributes, "tenant": "acme"}),
            ],
        )
    )
    assert (local["note"], local["debug.note"]) == ("a@b.io [REDACTED:ticket]", "a@b.io TICKET-2")
    assert (acme["note"], acme["debug.note"]) == ("[REDACTED:email] TICKET-1", "a@b.io TICKET-2")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"skip": {"attributes": {"db.system.name": []}}}, "skip: attributes: db.system.name needs at least one value"),
        ({"when": {"attributes": "db.system.name"}}, "when: attributes must map attribute keys to values"),
        ({"when": {"attributes": {"tier": 1}}}, "when: attributes: tier must be a list of strings"),
        ({"when": {"span": {"a": "b"}}}, "when: unknown field 'span' (known: attributes, keys, resource)"),
        ({"url_sanitizer": {"sanitize_span_name": "yes"}}, "url_sanitizer: sanitize_span_name must be true or false"),
        ({"db_sanitizer": {"sanitize_span_name": 1}}, "db_sanitizer: sanitize_span_name must be true or false"),
    ],
)
def test_invalid_item_conditions_and_span_name_options_are_one_clear_error(raw, message):
    rules = {"url_sanitizer", "db_sanitizer"}.isdisjoint(raw)
    wrapped = {"rules": [{"name": "e", "detector": "email", **raw}]} if rules else raw
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_rules(wrapped)


def test_validate_config_reports_a_bad_item_condition_in_one_line(tmp_path):
    from tests.support.cli import base_env, run_cli

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: e, detector: email, skip: {attributes: {db.system.name: []}}}\n")
    config = tmp_path / "sidecar.yaml"
    config.write_text(f"redaction: {{rules_file: {rules}}}\n")
    result = run_cli(base_env(tmp_path), "validate-config", str(config))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "db.system.name needs at least one value" in lines[0], result.stderr


# --- the native redactor and its references agree -------------------------------------------------


def test_native_and_python_sanitisers_agree_on_dialects_and_span_names():
    native = native_module()
    if native is None:
        pytest.skip("native module not built")
    alphabet = [*list("'\"`$-/*\\\n\t #?&=:@.+eE0159ab_é€;()"), "://", "/a", "http://h/p?"]
    rng = random.Random(21)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert native.sanitize("sql", text, "", True) == sanitize_sql(text, True), text
        assert native.sanitize("url_query", text, "M", False, True) == sanitize_urls_in_text(text, "M"), text


SPAN_CONTEXT_RULES = parse_rules(
    {
        "summary": "debug",
        "url_sanitizer": {"enabled": True},
        "db_sanitizer": {"sql": {"enabled": True}},
        "rules": [
            {"name": "email", "detector": "email", "skip": {"attributes": {"db.system.name": "sqlite"}}},
            {"name": "ticket", "pattern": "TICKET-[0-9]+", "when": {"attributes": {"tenant": ["acme"]}}},
            {"name": "user", "keys": ["user.id"], "skip": {"attributes": {"tenant": "acme"}}},
            {"name": "any_user", "keys": ["user.id"], "mask": "[u]", "when": {"resource": {"service.name": "a"}}},
        ],
    }
)
_texts = st.sampled_from(
    [
        'SELECT * FROM t WHERE e = "a@b.io" AND n = 5',
        "SELECT 'TICKET-9' -- x@y.io",
        "GET https://h.io/s?q=a@b.io&t=TICKET-3 HTTP/1.1",
        "GET /a?b=c",
        "chat gpt-4o",
        "TICKET-1 a@b.io",
        "",
    ]
)
_span_attributes = st.dictionaries(
    st.sampled_from(
        ["db.system.name", "db.system", "db.statement", "db.query.text", "tenant", "user.id", "note", "url.full"]
    ),
    st.one_of(st.sampled_from(["mysql", "MariaDB", "sqlite", "postgresql", "acme"]), _texts, st.integers(0, 3)),
    max_size=5,
)


@pytest.fixture(scope="module")
def paired_context() -> PairedStages:
    return PairedStages(SPAN_CONTEXT_RULES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    resources=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.lists(st.tuples(_texts, _span_attributes, st.lists(_span_attributes, max_size=2)), max_size=4),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_random_spans_with_context_are_redacted_the_same(paired_context, monkeypatch, resources):
    request = trace_pb.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=key_values({"service.name": service})),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        spans=[
                            span(name=name, attributes=a, events=[(f"e{i}", e) for i, e in enumerate(events)])
                            for name, a, events in spans
                        ]
                    )
                ],
            )
            for service, spans in resources
        ]
    )
    paired_context.check(decode_traces(request.SerializeToString(), WantedKeys(values=True)), monkeypatch)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(_texts, min_size=1, max_size=3), attributes=_span_attributes)
def test_random_logs_with_context_are_redacted_the_same(paired_context, monkeypatch, bodies, attributes):
    request = log_request(bodies, attributes=attributes)
    paired_context.check(decode_logs(request.SerializeToString(), WantedKeys(values=True)), monkeypatch)


def test_counted_and_summarised_the_same_for_a_fixed_batch(paired_context, monkeypatch):
    request = trace_pb.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=key_values({"service.name": "a"})),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        spans=[
                            span(name='SELECT "a@b.io"', attributes={"db.system.name": "mysql", "user.id": "u"}),
                            span(name="GET /s?q=TICKET-1", attributes={"tenant": "acme", "user.id": "u"}),
                            span(name="x@y.io", attributes={"db.system.name": "sqlite"}),
                        ]
                    )
                ],
            )
        ]
    )
    changes = paired_context.check(decode_traces(request.SerializeToString(), WantedKeys(values=True)), monkeypatch)
    assert changes.rewrites is not None
    names = changes.rewrites.filter(changes.rewrites["scope"] == "span_name")["new_value"].to_list()
    assert sorted(names) == ["GET /s?q=REDACTED", "SELECT ?"]
    assert COUNT_KEY in changes.set_attributes
