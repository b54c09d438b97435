"""Issue 20's last redaction options: URL query-string sanitising, SQL literal sanitising and
rules that skip by attribute (`when` / `skip`). Each runs on the native path and the polars path;
the Python sanitisers and their Rust twins give the same text on the same (odd) input."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from processor.core.decode import native_module
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from processor.stages.redaction.rules import load_rules, parse_rules
from processor.stages.redaction.sanitizers import sanitize_sql, sanitize_url_query
from processor.stages.redaction.stage import COUNT_KEY, DETECTED_KEY
from tests.support.otlp_builders import key_values, span
from tests.support.otlp_sink import attributes_to_dict
from tests.support.pipeline_runs import run_traces, spans_of
from tests.support.redaction_stages import custom_stage, default_stage


# The redactor is native either way (the polars path is the oracle, test_redaction_native.py): the
# decoder differs, which hands the values over from its scan or as a frame.
@pytest.fixture(params=["1", "0"], ids=["native-decoder", "python-decoder"])
def engine(request, monkeypatch):
    if request.param == "1" and native_module() is None:
        pytest.skip("native module not built")
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", request.param)
    return request.param


def traced(stage, spans_by_service: dict[str, list]) -> list[dict]:
    request = trace_pb.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=key_values({"service.name": service})),
                scope_spans=[trace_pb2.ScopeSpans(spans=spans)],
            )
            for service, spans in spans_by_service.items()
        ]
    )
    return [attributes_to_dict(s.attributes) for s in spans_of(run_traces(stage, request))]


def one(stage, attributes: dict, name: str = "chat gpt-4o") -> dict:
    (out,) = traced(stage, {"chat-api": [span(name=name, attributes=attributes)]})
    return out


# --- URL query strings -------------------------------------------------------------------------


def test_default_rules_replace_query_values_of_url_attributes_and_keep_the_keys(engine):
    got = one(
        default_stage(),
        {
            "url.full": "https://shop.example/search?q=red+shoes&session=8f2c1e&page=2#top",
            "url.query": "user=jane&tok=abc123&empty=",
            "http.url": "http://api.internal/v1/items?id=42",
            "http.route": "/v1/items",
            "note": "see https://docs.example/page?ref=mail",
        },
    )
    assert got["url.full"] == "https://shop.example/search?q=REDACTED&session=REDACTED&page=REDACTED#top"
    assert got["url.query"] == "user=REDACTED&tok=REDACTED&empty="
    assert got["http.url"] == "http://api.internal/v1/items?id=REDACTED"
    # Only the configured keys: a URL in free text meets the value rules alone.
    assert got["http.route"] == "/v1/items"
    assert got["note"] == "see https://docs.example/page?ref=mail"
    # A rewrite, not a finding: the pii_detected policy does not fire on every HTTP span.
    assert got[COUNT_KEY] == 3 and DETECTED_KEY not in got


def test_url_sanitizer_attributes_and_mask_are_configurable_and_value_rules_still_run(engine):
    rules = {
        "summary": "silent",
        "url_sanitizer": {"enabled": True, "attributes": ["link.target"], "mask": "x"},
        "rules": [{"name": "email", "detector": "email"}],
    }
    got = one(
        custom_stage(rules),
        {"link.target": "https://jane@example.org/a?to=bob@example.org&n=1", "url.full": "https://a.io/?k=v"},
    )
    assert got == {"link.target": "https://[REDACTED:email]/a?to=x&n=x", "url.full": "https://a.io/?k=v"}


def test_url_query_values_in_fragments_and_hash_routes_are_replaced_too():
    assert sanitize_url_query("https://app.example/cb#access_token=ya29.secret&state=1", "R") == (
        "https://app.example/cb#access_token=R&state=R"
    )
    assert sanitize_url_query("https://app.example/#/reset?token=abc", "R") == "https://app.example/#/reset?token=R"
    assert sanitize_url_query("https://app.example/no/query", "R") == "https://app.example/no/query"
    assert sanitize_url_query("?flag&a==b&=c", "R") == "?flag&a=R&=R"


# --- SQL literals ------------------------------------------------------------------------------

SQL_CASES = [
    (
        "SELECT * FROM users WHERE email = 'jane@example.org' AND age > 42 AND id = $1",
        "SELECT * FROM users WHERE email = ? AND age > ? AND id = $1",
    ),
    ("INSERT INTO t (a, b) VALUES ('it''s', -3.5e+2), (N'x', 0xFF)", "INSERT INTO t (a, b) VALUES (?, -?), (?, ?)"),
    ('SELECT "Card Number", `pin`, t2.c1 FROM "T" WHERE c = :1 AND d = @p1', None),
    ("SELECT ? , %s, %(name)s FROM orders LIMIT 20 OFFSET .5", "SELECT ? , %s, %(name)s FROM orders LIMIT ? OFFSET ?"),
    ("SELECT $$secret body$$, $tag$ also 'secret' $tag$ FROM x", "SELECT ?, ? FROM x"),
    (
        "SELECT a -- where b = 'x'\nFROM t /* id=7 */ WHERE c = 'o\\'brien'",
        "SELECT a -- where b = ?\nFROM t /* id=? */ WHERE c = ?",
    ),
    ("UPDATE u SET pw = 'hunter2", "UPDATE u SET pw = ?"),
    ("SELECT 1 /* never closed 'token' ", "SELECT ? /* never closed ? "),
    ("SELECT 'ünïcödé' AS naïve FROM café WHERE x = E'\\x41'", "SELECT ? AS naïve FROM café WHERE x = ?"),
]


@pytest.mark.parametrize(("statement", "expected"), SQL_CASES)
def test_sql_literals_become_placeholders_and_the_structure_stays(statement, expected):
    assert sanitize_sql(statement) == (statement if expected is None else expected)
    if native_module() is not None:
        assert native_module().sanitize("sql", statement, "") == sanitize_sql(statement)


def test_default_rules_sanitise_db_statements_on_both_paths(engine):
    got = one(
        default_stage(),
        {
            "db.query.text": "SELECT id FROM users WHERE ssn = '123-45-6789' AND card = 4111111111111111",
            "db.statement": "DELETE FROM s WHERE token = 'sk_live_abc'",
            "db.operation.name": "SELECT",
        },
    )
    assert got["db.query.text"] == "SELECT id FROM users WHERE ssn = ? AND card = ?"
    assert got["db.statement"] == "DELETE FROM s WHERE token = ?"
    assert got["db.operation.name"] == "SELECT"
    assert DETECTED_KEY not in got


def test_a_parameterised_statement_goes_out_as_it_came(engine):
    statement = "SELECT id, status FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT $2"
    # Named as the conventions name a database span: no literal in the name either.
    assert one(default_stage(), {"db.query.text": statement}, name="SELECT orders") == {"db.query.text": statement}


def test_a_huge_or_broken_statement_never_raises_and_never_leaks_its_literal(engine):
    secret = "s3cr3t-" + "x" * 200_000
    statement = "SELECT * FROM t WHERE a = '" + secret  # unterminated, 200 kB
    got = one(default_stage(), {"db.query.text": statement, "db.statement": "/*" * 50_000 + "'" + secret})
    assert got["db.query.text"] == "SELECT * FROM t WHERE a = ?"
    assert "s3cr3t" not in got["db.statement"]


def test_native_and_python_sanitisers_agree_on_random_input():
    native = native_module()
    if native is None:
        pytest.skip("native module not built")
    alphabet = list("'\"`$-/*\\\n #?&=:@.+eExX0159abNn_é€ ;()")
    rng = random.Random(20)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert native.sanitize("sql", text, "") == sanitize_sql(text), text
        assert native.sanitize("url_query", text, "M") == sanitize_url_query(text, "M"), text


# --- rule conditions ---------------------------------------------------------------------------


CONDITIONAL = {
    "summary": "silent",
    "rules": [
        # Only one service's user ids are personal data.
        {"name": "user_ids", "keys": ["user.id"], "when": {"resource": {"service.name": "checkout"}}},
        {"name": "any_id", "keys": ["user.id"], "mask": "[any]", "skip": {"resource": {"service.name": ["batch"]}}},
        # Not on keys with a prefix.
        {"name": "email", "detector": "email", "skip": {"keys": ["internal.*"]}},
        {"name": "ticket", "pattern": "TICKET-[0-9]+", "when": {"keys": ["note"]}},
    ],
}


def test_rules_act_only_where_their_conditions_let_them(engine):
    stage = custom_stage(CONDITIONAL)
    attributes = {
        "user.id": "u-1",
        "internal.owner": "ops@corp.io",
        "note": "ops@corp.io TICKET-7",
        "other": "TICKET-8",
    }
    checkout, web, batch = traced(
        stage,
        {
            "checkout": [span(attributes=attributes)],
            "web": [span(attributes=attributes)],
            "batch": [span(attributes=attributes)],
        },
    )
    assert checkout == {
        "user.id": "[REDACTED:user_ids]",
        "internal.owner": "ops@corp.io",
        "note": "[REDACTED:email] [REDACTED:ticket]",
        "other": "TICKET-8",
    }
    # A key rule its conditions skip leaves the value to the next key rule that matches.
    assert web["user.id"] == "[any]"
    assert batch["user.id"] == "u-1"
    assert batch["note"] == "[REDACTED:email] [REDACTED:ticket]"


def test_resource_conditions_apply_to_metric_data_points(engine):
    rules = {
        "summary": "silent",
        "rules": [{"name": "email", "detector": "email", "skip": {"resource": {"service.name": "ops"}}}],
    }
    stage = custom_stage(rules)

    def resource_metrics(service: str) -> metrics_pb2.ResourceMetrics:
        point = metrics_pb2.NumberDataPoint(as_int=1, attributes=key_values({"user": "pat@example.com"}))
        return metrics_pb2.ResourceMetrics(
            resource=resource_pb2.Resource(attributes=key_values({"service.name": service})),
            scope_metrics=[
                metrics_pb2.ScopeMetrics(
                    metrics=[metrics_pb2.Metric(name="m", gauge=metrics_pb2.Gauge(data_points=[point]))]
                )
            ],
        )

    request = metrics_pb.ExportMetricsServiceRequest(
        resource_metrics=[resource_metrics("ops"), resource_metrics("web")]
    )
    out = Pipeline([stage], SidecarMetrics.create().pipeline).process_metrics(request.SerializeToString())
    sent = metrics_pb.ExportMetricsServiceRequest.FromString(out.payload)
    users = [
        attributes_to_dict(rm.scope_metrics[0].metrics[0].gauge.data_points[0].attributes)["user"]
        for rm in sent.resource_metrics
    ]
    assert users == ["pat@example.com", "[REDACTED:email]"]


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"url_sanitizer": True}, "url_sanitizer must be a mapping"),
        ({"url_sanitizer": {"enabled": "yes"}}, "url_sanitizer: enabled must be true or false"),
        ({"url_sanitizer": {"enabled": True, "keys": ["a"]}}, "url_sanitizer: unknown field 'keys'"),
        ({"url_sanitizer": {"enabled": True, "mask": 1}}, "url_sanitizer: mask must be a string"),
        ({"db_sanitizer": {"mysql": {}}}, "db_sanitizer: unknown field 'mysql'"),
        (
            {"db_sanitizer": {"sql": {"enabled": True, "attributes": "db.statement"}}},
            "db_sanitizer: sql: attributes must be a list",
        ),
        (
            {"rules": [{"name": "e", "detector": "email", "when": {"service": "x"}}]},
            "rule 'e': when: unknown field 'service'",
        ),
        (
            {"rules": [{"name": "e", "detector": "email", "skip": {"resource": {"service.name": []}}}]},
            "needs at least one value",
        ),
        ({"rules": [{"name": "e", "detector": "email", "skip": []}]}, "rule 'e': skip must be a mapping"),
        ({"rules": [{"name": "db_sanitizer", "detector": "email"}]}, "the name is reserved"),
    ],
)
def test_invalid_sanitiser_and_condition_options_are_one_clear_error(raw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_rules(raw)


def test_validate_config_reports_a_bad_option_in_one_line(tmp_path):
    from tests.support.cli import base_env, run_cli

    rules = tmp_path / "rules.yaml"
    rules.write_text("url_sanitizer: {enabled: maybe}\nrules: []\n")
    config = tmp_path / "sidecar.yaml"
    config.write_text(f"redaction: {{rules_file: {rules}}}\n")
    result = run_cli(base_env(tmp_path), "validate-config", str(config))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "url_sanitizer: enabled must be true or false" in lines[0], result.stderr


def test_the_defaults_enable_both_sanitisers():
    kinds = [s.kind for s in load_rules().sanitizers]
    assert kinds == ["url_query", "sql"]


def test_what_the_sidecar_writes_meets_conditional_rules_as_an_attribute_of_no_resource(engine):
    # A metric label made from an email: a `when` on a resource cannot be decided, so the rule acts;
    # a `when` on keys is decided by the label's key, as for an attribute.
    rules = {
        "summary": "silent",
        "rules": [
            {"name": "email", "detector": "email", "when": {"resource": {"service.name": "checkout"}}},
            {"name": "ticket", "pattern": "TICKET-[0-9]+", "when": {"keys": ["note"]}},
        ],
    }
    stage = custom_stage(rules)
    assert stage.redact_one("genops.team", "pat@example.com TICKET-1") == "[REDACTED:email] TICKET-1"


def test_when_and_skip_of_the_rule_set_apply_to_every_rule_that_gives_none_of_its_own(engine):
    rules = {
        "summary": "silent",
        "skip": {"resource": {"service.name": "load-test"}, "keys": ["debug.*"]},
        "rules": [
            {"name": "email", "detector": "email"},
            # Its own skip.resource wins over the set's; the set's skip.keys still holds.
            {"name": "ticket", "pattern": "TICKET-[0-9]+", "skip": {"resource": {"service.name": "web"}}},
        ],
    }
    attributes = {"note": "a@b.io TICKET-1", "debug.note": "a@b.io TICKET-2"}
    load, web = traced(
        custom_stage(rules), {"load-test": [span(attributes=attributes)], "web": [span(attributes=attributes)]}
    )
    assert load == {"note": "a@b.io [REDACTED:ticket]", "debug.note": "a@b.io TICKET-2"}
    assert web == {"note": "[REDACTED:email] TICKET-1", "debug.note": "a@b.io TICKET-2"}


def test_resource_conditions_never_keep_a_rule_off_scope_attributes(engine):
    rules = {
        "summary": "silent",
        "rules": [{"name": "email", "detector": "email", "skip": {"resource": {"service.name": "web"}}}],
    }
    request = trace_pb.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=key_values({"service.name": "web"})),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(name="s", attributes=key_values({"owner": "a@b.io"})),
                        spans=[span(attributes={"note": "a@b.io"})],
                    )
                ],
            )
        ]
    )
    sent = run_traces(custom_stage(rules), request)
    scope_spans = sent.resource_spans[0].scope_spans[0]
    assert attributes_to_dict(scope_spans.scope.attributes) == {"owner": "[REDACTED:email]"}
    assert attributes_to_dict(scope_spans.spans[0].attributes) == {"note": "a@b.io"}
