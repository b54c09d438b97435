"""The redaction stage: what leaves the sidecar after the default and custom rules ran."""

from __future__ import annotations

import hashlib
import hmac

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from prometheus_client import CollectorRegistry

from processor.config import RedactionConfig
from processor.stages.redaction.detectors import luhn_valid
from processor.stages.redaction.rules import parse_rules
from processor.stages.redaction.stage import COUNT_KEY, DETECTED_KEY, KEYS_KEY, RedactionStage, build_redaction_stage
from tests.oracle.redaction import OracleValueRedactor
from tests.support.otlp_builders import log_request, span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import OtlpSink, attributes_to_dict
from tests.support.pipeline_runs import run_logs, run_traces, spans_of
from tests.support.redaction_stages import custom_stage, default_stage
from tests.support.sidecar_runner import RunningSidecar

TRACES_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
EMAIL = "jane.roe@example.com"
CARD = "4111 1111 1111 1111"


def export_logs(channel, request: logs_pb.ExportLogsServiceRequest) -> None:
    channel.unary_unary(
        f"/{LOGS_SERVICE}/Export",
        request_serializer=logs_pb.ExportLogsServiceRequest.SerializeToString,
        response_deserializer=logs_pb.ExportLogsServiceResponse.FromString,
    )(request, timeout=10)


@pytest.fixture(scope="module")
def redacting_sidecar():
    sink = OtlpSink().start()
    registry = CollectorRegistry()
    sidecar = RunningSidecar(sink.endpoint, stages=[default_stage(registry)]).start()
    yield sidecar, sink, registry
    sidecar.stop()
    sink.stop()


def test_spans_events_resources_and_log_bodies_are_redacted_in_transit(redacting_sidecar):
    sidecar, sink, registry = redacting_sidecar
    traces = trace_request(
        [
            span(
                attributes={
                    "user.note": f"mail {EMAIL} please",
                    "gen_ai.prompt": [{"role": "user", "content": "my card is " + CARD}],
                    "gen_ai.usage.input_tokens": 12,
                    "gen_ai.request.model": "gpt-4o",
                },
                events=[("gen_ai.choice", {"gen_ai.completion.0.content": "sure", "detail": "card " + CARD})],
            )
        ],
        resource={"service.name": "chat-api", "client.address": "10.20.30.40"},
    )
    logs = log_request(["user SSN is 219-09-9999"], attributes={"auth": "Bearer abcDEF1234567890xyz"})
    with sidecar.channel() as channel:
        export_traces(channel, traces)
        export_logs(channel, logs)
    (got,) = sink.trace_requests()[-1:]
    (out_span,) = spans_of(got)
    attributes = attributes_to_dict(out_span.attributes)
    assert attributes["user.note"] == "mail [REDACTED:email] please"
    assert attributes["gen_ai.prompt"] == "[REDACTED:genai_content]"
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gen_ai.request.model"] == "gpt-4o"
    assert attributes_to_dict(out_span.events[0].attributes) == {
        "gen_ai.completion.0.content": "[REDACTED:genai_content]",
        "detail": "card [REDACTED:credit_card]",
    }
    assert attributes_to_dict(got.resource_spans[0].resource.attributes) == {
        "service.name": "chat-api",
        "client.address": "[REDACTED:ipv4]",
    }
    assert attributes[COUNT_KEY] == 5
    assert attributes[KEYS_KEY] == [
        "event:detail",
        "event:gen_ai.completion.0.content",
        "gen_ai.prompt",
        "resource:client.address",
        "user.note",
    ]
    record = sink.log_requests()[-1].resource_logs[0].scope_logs[0].log_records[0]
    assert record.body.string_value == "user SSN is [REDACTED:us_ssn]"
    log_attributes = attributes_to_dict(record.attributes)
    assert log_attributes["auth"] == "[REDACTED:bearer_token]"
    assert log_attributes[COUNT_KEY] == 2
    assert log_attributes[KEYS_KEY] == ["auth", "body"]
    for detector, signal, count in (("email", "traces", 1), ("genai_content", "traces", 2), ("us_ssn", "logs", 1)):
        labels = {"detector": detector, "action": "mask", "signal": signal}
        assert registry.get_sample_value("genops_redaction_total", labels) >= count


def test_a_clean_batch_is_forwarded_unchanged():
    request = trace_request([span(attributes={"gen_ai.request.model": "gpt-4o", "http.status_code": 200})])
    assert run_traces(default_stage(), request) == request


def test_summary_names_keys_but_never_values():
    secret = "ghp_" + "A1" * 18
    request = trace_request([span(attributes={"token.in.key": secret, "ok": "fine"})])
    (out,) = spans_of(run_traces(default_stage(), request))
    attributes = attributes_to_dict(out.attributes)
    assert attributes[KEYS_KEY] == ["token.in.key"]
    assert secret.encode() not in out.SerializeToString()
    assert "ok" not in attributes[KEYS_KEY]


def test_summary_level_info_gives_the_count_only_and_silent_nothing():
    request = trace_request([span(attributes={"note": EMAIL})])
    (info,) = spans_of(
        run_traces(custom_stage({"summary": "info", "rules": [{"name": "e", "detector": "email"}]}), request)
    )
    assert attributes_to_dict(info.attributes) == {"note": "[REDACTED:e]", COUNT_KEY: 1, DETECTED_KEY: 1}
    silent = custom_stage({"summary": "silent", "rules": [{"name": "e", "detector": "email"}]})
    (quiet,) = spans_of(run_traces(silent, request))
    assert attributes_to_dict(quiet.attributes) == {"note": "[REDACTED:e]"}


def hash_stage(key: bytes) -> RedactionStage:
    return custom_stage(
        {
            "rules": [
                {"name": "user_id", "keys": ["enduser.id"], "action": "hash"},
                {"name": "email", "detector": "email", "action": "hash"},
            ]
        },
        hash_key=key,
    )


def test_hashes_are_stable_keyed_hmacs_so_values_stay_joinable():
    request = trace_request([span(attributes={"enduser.id": "user-42", "note": f"from {EMAIL}"}) for _ in range(2)])
    first = [attributes_to_dict(s.attributes) for s in spans_of(run_traces(hash_stage(b"key-one"), request))]
    again = [attributes_to_dict(s.attributes) for s in spans_of(run_traces(hash_stage(b"key-one"), request))]
    other = [attributes_to_dict(s.attributes) for s in spans_of(run_traces(hash_stage(b"key-two"), request))]
    expected_id = "hmac-sha256:" + hmac.new(b"key-one", b"user-42", hashlib.sha256).hexdigest()
    expected_mail = "hmac-sha256:" + hmac.new(b"key-one", EMAIL.encode(), hashlib.sha256).hexdigest()
    assert first[0]["enduser.id"] == first[1]["enduser.id"] == again[0]["enduser.id"] == expected_id
    assert first[0]["note"] == again[1]["note"] == f"from {expected_mail}"
    assert other[0]["enduser.id"] != expected_id
    assert other[0]["note"] != first[0]["note"]


def test_drop_removes_the_attribute_for_key_and_value_rules():
    stage = custom_stage(
        {
            "rules": [
                {"name": "cookies", "keys": ["http.request.header.cookie"], "action": "drop"},
                {"name": "cards", "detector": "credit_card", "action": "drop"},
            ]
        }
    )
    request = trace_request(
        [span(attributes={"a": 1, "http.request.header.cookie": "sid=1", "note": f"card {CARD}", "b": "keep"})]
    )
    (out,) = spans_of(run_traces(stage, request))
    assert [kv.key for kv in out.attributes] == ["a", "b", COUNT_KEY, KEYS_KEY, DETECTED_KEY]
    # Only the card was a finding; the cookie went by its key.
    assert attributes_to_dict(out.attributes)[DETECTED_KEY] == 1
    assert attributes_to_dict(out.attributes)[KEYS_KEY] == ["http.request.header.cookie", "note"]


def test_truncate_shortens_long_values_only():
    stage = custom_stage({"rules": [{"name": "short", "keys": ["db.query.text"], "action": "truncate", "length": 6}]})
    request = trace_request(
        [span(attributes={"db.query.text": "SELECT * FROM t"}), span(attributes={"db.query.text": "SELECT"})]
    )
    long, short = (attributes_to_dict(s.attributes) for s in spans_of(run_traces(stage, request)))
    assert long == {"db.query.text": "SELECT", COUNT_KEY: 1, KEYS_KEY: ["db.query.text"]}
    assert short == {"db.query.text": "SELECT"}


def test_allow_list_drops_other_item_and_event_keys_but_keeps_resources_ignored_and_token_counts():
    stage = custom_stage(
        {
            "allow_all_keys": False,
            "allowed_keys": ["gen_ai.request.*", "http.route"],
            "ignored_keys": ["debug.raw"],
            "rules": [{"name": "email", "detector": "email"}],
        }
    )
    request = trace_request(
        [
            span(
                attributes={
                    "gen_ai.request.model": "gpt-4o",
                    "user.email": EMAIL,
                    "http.route": "/chat",
                    "debug.raw": EMAIL,
                    "gen_ai.usage.output_tokens": 7,
                    "genops.cost.total": 0.25,
                    "custom.flag": True,
                },
                events=[("e", {"http.route": f"/u/{EMAIL}", "other": "x"})],
            )
        ],
        resource={"service.name": "chat-api", "owner": EMAIL},
    )
    got = run_traces(stage, request)
    (out,) = spans_of(got)
    attributes = attributes_to_dict(out.attributes)
    assert attributes == {
        "gen_ai.request.model": "gpt-4o",
        "http.route": "/chat",
        "debug.raw": EMAIL,
        "gen_ai.usage.output_tokens": 7,
        "genops.cost.total": 0.25,
        COUNT_KEY: 5,
        KEYS_KEY: ["custom.flag", "event:http.route", "event:other", "resource:owner", "user.email"],
        # The two emails the detector found; the allow list's drops are not findings.
        DETECTED_KEY: 2,
    }
    assert attributes_to_dict(out.events[0].attributes) == {"http.route": "/u/[REDACTED:email]"}
    assert attributes_to_dict(got.resource_spans[0].resource.attributes) == {
        "service.name": "chat-api",
        "owner": "[REDACTED:email]",
    }


def test_non_string_values_are_replaced_whole_when_a_rule_applies():
    stage = default_stage()
    traces = trace_request(
        [span(attributes={"gen_ai.completion": 42, "tags": ["ok", f"to {EMAIL}"], "numbers": [1, 2]})]
    )
    (out,) = spans_of(run_traces(stage, traces))
    attributes = attributes_to_dict(out.attributes)
    assert attributes["gen_ai.completion"] == "[REDACTED:genai_content]"
    assert attributes["tags"] == '["ok","to [REDACTED:email]"]'
    assert attributes["numbers"] == [1, 2]
    logs = log_request([{"event": "login", "user": EMAIL, "attempts": 3}, {"event": "logout"}])
    records = run_logs(stage, logs).resource_logs[0].scope_logs[0].log_records
    assert records[0].body.string_value == '{"event":"login","user":"[REDACTED:email]","attempts":3}'
    assert records[1].body == logs.resource_logs[0].scope_logs[0].log_records[1].body


def test_redact_all_types_scans_numbers_too():
    card_number = 4111111111111111
    request = trace_request([span(attributes={"payment.ref": card_number, "count": 3})])
    (plain,) = spans_of(run_traces(default_stage(), request))
    assert attributes_to_dict(plain.attributes)["payment.ref"] == card_number
    stage = custom_stage({"redact_all_types": True, "rules": [{"name": "cc", "detector": "credit_card"}]})
    (out,) = spans_of(run_traces(stage, request))
    assert attributes_to_dict(out.attributes)["payment.ref"] == "[REDACTED:cc]"
    assert attributes_to_dict(out.attributes)["count"] == 3


def test_custom_patterns_and_masks():
    stage = custom_stage({"rules": [{"name": "ticket", "pattern": "TICKET-[0-9]{6}", "mask": "TICKET-$1****"}]})
    (out,) = spans_of(run_traces(stage, trace_request([span(attributes={"t": "see TICKET-123456 now"})])))
    assert attributes_to_dict(out.attributes)["t"] == "see TICKET-$1**** now"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "broken", "pattern": "(unclosed"}, "rule 'broken': invalid regex"),
        ({"name": "lookbehind", "pattern": "(?<=a)b"}, "rule 'lookbehind': invalid regex"),
        ({"name": "empty", "pattern": "x*"}, "rule 'empty': pattern 'x*' matches the empty string"),
        ({"name": "nodet", "detector": "passport"}, "rule 'nodet': unknown detector 'passport'"),
        ({"name": "act", "detector": "email", "action": "encrypt"}, "rule 'act': unknown action 'encrypt'"),
        ({"name": "cut", "keys": ["a"], "action": "truncate"}, "rule 'cut': truncate needs a non-negative integer"),
        ({"name": "cutv", "detector": "email", "action": "truncate", "length": 3}, "rule 'cutv': truncate applies"),
        ({"name": "both", "keys": ["a"], "detector": "email"}, "rule 'both': give exactly one of"),
        ({"name": "badkey", "key_patterns": ["[a-"]}, "rule 'badkey': invalid regex"),
        ({"name": "typo", "detector": "email", "actoin": "drop"}, "rule 'typo': unknown field 'actoin'"),
    ],
)
def test_invalid_rules_are_rejected_at_load_with_the_rule_name(rule, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*").replace("?", r"\?")):
        parse_rules({"rules": [rule]})


def test_rules_file_and_hash_key_come_from_config(tmp_path, monkeypatch):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("rules:\n  - {name: ids, keys: [enduser.id], action: hash}\n")
    config = RedactionConfig(rules_file=str(rules_file), hash_key_env="TEST_REDACTION_KEY")
    monkeypatch.delenv("TEST_REDACTION_KEY", raising=False)
    with pytest.raises(ValueError, match=r"uses action hash but \$TEST_REDACTION_KEY is empty"):
        build_redaction_stage(config, CollectorRegistry())
    monkeypatch.setenv("TEST_REDACTION_KEY", "s3cret")
    stage = build_redaction_stage(config, CollectorRegistry())
    (out,) = spans_of(run_traces(stage, trace_request([span(attributes={"enduser.id": "u1"})])))
    expected = "hmac-sha256:" + hmac.new(b"s3cret", b"u1", hashlib.sha256).hexdigest()
    assert attributes_to_dict(out.attributes)["enduser.id"] == expected
    with pytest.raises(ValueError, match="cannot read redaction rules file"):
        build_redaction_stage(RedactionConfig(rules_file=str(tmp_path / "missing.yaml")), CollectorRegistry())


def test_the_embedded_defaults_load():
    stage = build_redaction_stage(RedactionConfig(), CollectorRegistry())
    assert {"email", "credit_card", "genai_content"} <= {
        r.name for r in (*stage.rules.key_rules, *stage.rules.value_rules)
    }


# --- property: no generated secret survives in the bytes that reach the backend -------------------

_alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _with_luhn_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def _iban_de(bban: str) -> str:
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
    return f"DE{check:02d}{bban}"


_card = st.builds(
    lambda prefix, body: _with_luhn_digit((prefix + body)[:15]),
    st.sampled_from(["4", "51", "55", "6011"]),
    st.text("0123456789", min_size=14, max_size=14),
)
_card_formatted = st.tuples(_card, st.sampled_from(["", " ", "-"])).map(
    lambda t: t[1].join(t[0][i : i + 4] for i in range(0, 16, 4))
)
SECRETS = st.one_of(
    st.builds(
        lambda user, domain, tld: f"{user}@{domain}.{tld}",
        st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12),
        st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12),
        st.sampled_from(["com", "org", "io", "co.uk", "example"]),
    ),
    _card_formatted,
    st.builds(
        lambda a, g, s: f"{a:03d}-{g:02d}-{s:04d}",
        st.integers(1, 665),
        st.integers(1, 99),
        st.integers(1, 9999),
    ),
    st.builds(lambda bban: _iban_de(bban), st.text("0123456789", min_size=18, max_size=18)),
    st.builds(lambda o: "{}.{}.{}.{}".format(*o), st.tuples(st.integers(1, 126), *[st.integers(0, 255)] * 3)),
    st.builds(lambda s: "sk-proj-" + s, st.text(_alnum + "_-", min_size=24, max_size=48)),
    st.builds(lambda s: "sk-ant-api03-" + s, st.text(_alnum + "_-", min_size=24, max_size=48)),
    st.builds(lambda s: "AKIA" + s, st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16)),
    st.builds(lambda s: "ghp_" + s, st.text(_alnum, min_size=36, max_size=36)),
    st.builds(
        lambda cc, n: f"+{cc} {n[:3]} {n[3:6]} {n[6:]}",
        st.integers(1, 99),
        st.text("0123456789", min_size=10, max_size=10),
    ),
)
FILLER = st.text("abcdefghij klmnopqrstuvwxyz,;!?", max_size=20)
PROMPT = st.text(min_size=0, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=SECRETS, before=FILLER, after=FILLER, prompt=PROMPT, marker=st.text(_alnum, min_size=16, max_size=16))
def test_no_configured_secret_survives_in_forwarded_bytes(redacting_sidecar, secret, before, after, prompt, marker):
    sidecar, sink, _ = redacting_sidecar
    text = f"{before} {secret} {after}"
    blocked = prompt + marker
    traces = trace_request(
        [span(attributes={"note": text, "gen_ai.input.messages": blocked}, events=[("e", {"detail": text})])],
        resource={"service.name": "chat-api", "deployment.note": text},
    )
    logs = log_request([text], attributes={"gen_ai.prompt": [blocked], "msg": text})
    with sidecar.channel() as channel:
        export_traces(channel, traces)
        export_logs(channel, logs)
    for service in (TRACES_SERVICE, LOGS_SERVICE):
        forwarded = sink.raw_requests[service][-1]
        assert secret.encode() not in forwarded
        assert marker.encode() not in forwarded


def test_value_redactor_scans_only_prefilter_hits():
    """The polars oracle's scan (tests/oracle/redaction.py) runs only the values its prefilter hits."""
    rules = default_stage().rules
    values = OracleValueRedactor(rules.value_rules, None, rules.hash_prefix)
    result = values.scan(pl.Series(["nothing here", f"x {EMAIL}", None, ""], dtype=pl.String))
    assert result.index.to_list() == [1]
    assert result.rules.to_list() == [["email"]]
