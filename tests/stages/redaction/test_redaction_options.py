"""The options users of the Collector's redaction processor expect, in our rules YAML: allowed
values that win over a rule, ignored key patterns, the HMAC's hash, a default mask string. Each
runs on the native path and the polars path alike."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from processor.stages.redaction.rules import parse_rules
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_sink import attributes_to_dict
from tests.support.pipeline_runs import run_traces, spans_of
from tests.support.redaction_stages import custom_stage


def redacted(rules: dict, attributes: dict, hash_key: bytes | None = b"test-key") -> dict:
    (out,) = spans_of(run_traces(custom_stage(rules, hash_key), trace_request([span(attributes=attributes)])))
    return attributes_to_dict(out.attributes)


def test_allowed_values_keep_what_a_detector_or_pattern_would_redact(engine):
    rules = {
        "summary": "silent",
        "allowed_values": [r".+@example\.com", "TICKET-0{3}"],
        "rules": [
            {"name": "email", "detector": "email"},
            {"name": "ticket", "pattern": "TICKET-[0-9]{3}"},
            {"name": "mail_hash", "pattern": "h@[a-z]+", "action": "hash"},
        ],
    }
    got = redacted(rules, {"note": "from ops@example.com and jane@corp.io TICKET-000 TICKET-123 h@abc"})
    assert got["note"] == "from ops@example.com and [REDACTED:email] TICKET-000 [REDACTED:ticket] " + (
        "hmac-sha256:" + hmac.new(b"test-key", b"h@abc", hashlib.sha256).hexdigest()
    )


def test_an_allowed_value_matches_the_whole_finding_not_a_part_of_it(engine):
    rules = {"summary": "silent", "allowed_values": ["example"], "rules": [{"name": "email", "detector": "email"}]}
    assert redacted(rules, {"note": "ops@example.com"})["note"] == "[REDACTED:email]"


def test_ignored_key_patterns_are_never_touched(engine):
    rules = {
        "summary": "silent",
        "ignored_key_patterns": ["debug\\..*", ".*\\.safe"],
        "rules": [
            {"name": "secrets", "key_patterns": ["(?i).*token.*"]},
            {"name": "email", "detector": "email"},
        ],
    }
    got = redacted(
        rules,
        {"debug.token": "t-1", "note.safe": "a@b.io", "note": "a@b.io", "auth.token": "t-2", "xdebug.token": "t-3"},
    )
    assert got == {
        "debug.token": "t-1",
        "note.safe": "a@b.io",
        "note": "[REDACTED:email]",
        "auth.token": "[REDACTED:secrets]",
        "xdebug.token": "[REDACTED:secrets]",
    }


@pytest.mark.parametrize(("function", "digest"), [("hmac-sha256", hashlib.sha256), ("hmac-sha512", hashlib.sha512)])
def test_hash_function_chooses_the_hmac_and_its_default_prefix(engine, function, digest):
    rules = {
        "summary": "silent",
        "hash_function": function,
        "rules": [
            {"name": "user_id", "keys": ["enduser.id"], "action": "hash"},
            {"name": "email", "detector": "email", "action": "hash"},
        ],
    }
    got = redacted(rules, {"enduser.id": "user-42", "note": "mail a@b.io"})
    assert got["enduser.id"] == f"{function}:" + hmac.new(b"test-key", b"user-42", digest).hexdigest()
    assert got["note"] == f"mail {function}:" + hmac.new(b"test-key", b"a@b.io", digest).hexdigest()


def test_default_mask_replaces_the_rule_named_mask_unless_a_rule_sets_its_own(engine):
    rules = {
        "summary": "silent",
        "default_mask": "****",
        "rules": [
            {"name": "secrets", "keys": ["password"]},
            {"name": "email", "detector": "email"},
            {"name": "ticket", "pattern": "TICKET-[0-9]{3}", "mask": "<ticket>"},
        ],
    }
    got = redacted(rules, {"password": "hunter2", "note": "a@b.io TICKET-123"})
    assert got == {"password": "****", "note": "**** <ticket>"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"hash_function": "md5"}, "hash_function must be one of hmac-sha256, hmac-sha512, not 'md5'"),
        ({"allowed_values": ["(?=x)"]}, "allowed_values: invalid regex"),
        ({"ignored_key_patterns": ["[a-"]}, "ignored_key_patterns: invalid regex"),
        ({"default_mask": 3}, "default_mask must be a string"),
    ],
)
def test_invalid_options_are_rejected_at_load(raw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse_rules({**raw, "rules": []})
