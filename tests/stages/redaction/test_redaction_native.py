"""The native redactor and the polars oracle (tests/oracle/redaction.py) make the same changes
and count the same redactions."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from processor.core.decode import TelemetryBatch, WantedKeys, decode_logs
from processor.stages.redaction.rules import load_rules, parse_rules
from processor.stages.redaction.stage import RedactionStage
from tests.oracle.redaction import OracleRedactionStage
from tests.support.otlp_builders import log_request
from tests.support.redaction_corpus import corpus_texts
from tests.support.redaction_stages import PairedStages, traces_batch

CORPUS_TEXTS = corpus_texts()

# Exercises every action and the corner cases of their order: masks with '$', a rule that matches
# what earlier rules wrote, value rules that overlap each other, the allow list and ignored keys.
CUSTOM_RULES = {
    "allow_all_keys": False,
    "allowed_keys": ["http.*", "note", "detail", "tags", "enduser.id", "db.query.text", "user.password", "n"],
    "ignored_keys": ["debug.raw"],
    "redact_all_types": True,
    "hash_prefix": "h:",
    "rules": [
        {"name": "ids", "keys": ["enduser.id"], "action": "hash"},
        {"name": "query", "keys": ["db.query.text"], "action": "truncate", "length": 5},
        {"name": "cookie", "keys": ["http.request.header.cookie"], "action": "drop"},
        {"name": "secrets", "key_patterns": ["(?i).*password.*"], "mask": "$1 $$"},
        {"name": "ticket", "pattern": "TICKET-[0-9]{3}", "mask": "$0-T$"},
        {"name": "email", "detector": "email", "action": "hash"},
        {"name": "cards", "detector": "credit_card", "action": "drop"},
        {"name": "phone", "detector": "phone", "mask": "<$phone>"},
        {"name": "again", "pattern": "RED[A-Z]+|h:[0-9a-f]{3}|T\\$", "mask": "[X]"},
        {"name": "ip4", "detector": "ipv4"},
        {"name": "ip6", "detector": "ipv6", "action": "hash"},
        {"name": "iban", "detector": "iban"},
        {"name": "ssn", "detector": "us_ssn", "action": "drop"},
        {"name": "bearer", "detector": "bearer_token"},
        {"name": "digits", "pattern": "[0-9]{2}", "mask": "#"},
    ],
}
INFO_RULES = {"summary": "info", "rules": [{"name": "e", "detector": "email"}, {"name": "w", "pattern": "é+"}]}
RULE_SETS = {
    "default": load_rules(),
    "custom": parse_rules(CUSTOM_RULES),
    # Value rules read text only here: numbers outside the allow list are still dropped.
    "custom_text_only": parse_rules({**CUSTOM_RULES, "redact_all_types": False}),
    "info": parse_rules(INFO_RULES),
    # Rule conditions (`when` / `skip`, on keys and on the resource) and both sanitisers.
    "conditions": parse_rules(
        {
            **CUSTOM_RULES,
            "url_sanitizer": {"enabled": True, "attributes": ["http.route", "note"]},
            "db_sanitizer": {"sql": {"enabled": True, "attributes": ["detail", "tags"]}},
            "skip": {"resource": {"service.name": "skipped"}},
            "rules": [
                {**rule, "when": {"keys": ["note", "detail", "n"]}}
                if i % 3 == 0
                else {**rule, "skip": {"keys": ["tags"], "resource": {"service.name": "svc"}}}
                if i % 3 == 1
                else rule
                for i, rule in enumerate(CUSTOM_RULES["rules"])
            ],
        }
    ),
    # The Collector-style options: allowed values win over every value rule (checked or not).
    "collector_options": parse_rules(
        {
            **CUSTOM_RULES,
            "allowed_values": ["TICKET-1[0-9]{2}", ".*@example\\.com", "10\\..*"],
            "ignored_key_patterns": ["other\\..*"],
            "hash_function": "hmac-sha512",
            "default_mask": "****",
        }
    ),
}

KEYS = [
    "note",
    "detail",
    "tags",
    "n",
    "enduser.id",
    "db.query.text",
    "user.password",
    "http.request.header.cookie",
    "http.route",
    "gen_ai.prompt",
    "gen_ai.usage.input_tokens",
    "genops.team",
    "debug.raw",
    "other.key",
]

# Look-alikes for the candidate checks (Luhn and card schemes, SSN ranges, phone digit counts,
# dotted quads, IBAN mod-97, bearer tokens), which run in Rust on the native path.
_digits = st.text("0123456789", min_size=1, max_size=4)
look_alike = st.one_of(
    st.lists(_digits, min_size=3, max_size=6).flatmap(
        lambda g: st.sampled_from([" ", "-", ""]).map(lambda s: s.join(g))
    ),
    st.lists(st.integers(0, 300).map(str) | _digits, min_size=3, max_size=5).map(".".join),
    st.builds(lambda a, g, n: f"{a}-{g}-{n}", st.text("0123456789", min_size=3, max_size=3), _digits, _digits),
    st.builds(lambda d: "+" + d, st.text("0123456789 .-()", min_size=6, max_size=20)),
    st.builds(
        lambda c, d, rest: c + d + rest,
        st.sampled_from(["DE", "GB", "FR", "NL"]),
        st.text("0123456789", min_size=2, max_size=2),
        st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ ", min_size=12, max_size=30),
    ),
    st.builds(
        lambda t: "Bearer " + t,
        st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/", min_size=14, max_size=24),
    ),
)
piece = st.one_of(
    look_alike,
    st.sampled_from(CORPUS_TEXTS),
    st.sampled_from(["TICKET-123", "[REDACTED:email]", "Bearer abcDEF1234567890xyz", "h:0a1b", "T$", "ééé"]),
    st.text(max_size=8),
)
text = st.lists(st.tuples(piece, st.sampled_from(["", " ", "-", ":", ".", "@", "\n", "é"])), max_size=4).map(
    lambda parts: "".join(p + sep for p, sep in parts)
)
scalar = st.one_of(text, text, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.floats(allow_nan=False))
value = st.one_of(
    scalar, scalar, st.lists(scalar, max_size=3), st.dictionaries(st.sampled_from("ab"), scalar, max_size=2)
)
attributes = st.dictionaries(st.sampled_from(KEYS), value, max_size=5)


@pytest.fixture(scope="module")
def paired() -> dict[str, PairedStages]:
    return {name: PairedStages(rules) for name, rules in RULE_SETS.items()}


@pytest.mark.parametrize("rule_set", sorted(RULE_SETS))
def test_every_corpus_text_is_redacted_the_same(paired, rule_set, monkeypatch):
    spans = [(dict.fromkeys(KEYS, text), [{"detail": f"see {text} here"}]) for text in CORPUS_TEXTS]
    batch = traces_batch([({"service.name": "svc", "note": CORPUS_TEXTS[0]}, spans)])
    changes = paired[rule_set].check(batch, monkeypatch)
    assert changes.rewrites is not None and changes.rewrites.height > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rule_set=st.sampled_from(sorted(RULE_SETS)),
    resources=st.lists(
        st.tuples(attributes, st.lists(st.tuples(attributes, st.lists(attributes, max_size=2)), max_size=4)),
        min_size=1,
        max_size=3,
    ),
)
def test_random_traces_are_redacted_the_same(paired, monkeypatch, rule_set, resources):
    paired[rule_set].check(traces_batch(resources), monkeypatch)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rule_set=st.sampled_from(sorted(RULE_SETS)),
    bodies=st.lists(value, min_size=1, max_size=4),
    record_attributes=attributes,
    resource=attributes,
)
def test_random_logs_are_redacted_the_same(paired, monkeypatch, rule_set, bodies, record_attributes, resource):
    request = log_request(bodies, attributes=record_attributes, resource=resource or None)
    paired[rule_set].check(decode_logs(request.SerializeToString(), WantedKeys(values=True)), monkeypatch)


def test_the_native_path_keeps_the_polars_paths_errors(monkeypatch):
    """A hash rule without a key fails the batch on both paths (the stage's error, not a crash)."""
    rules = parse_rules({"rules": [{"name": "ids", "keys": ["enduser.id"], "action": "hash"}]})
    batch = traces_batch([({}, [({"enduser.id": "u1"}, [])])])
    for stage in (RedactionStage, OracleRedactionStage):
        with pytest.raises(RuntimeError, match="a hash rule needs a hash key"):
            stage(rules, None, CollectorRegistry()).process(batch)


def test_value_columns_of_other_types_are_read_the_same(paired, monkeypatch):
    batch = traces_batch([({"owner.mail": "x@example.com"}, [({"note": "mail jane.roe@example.com"}, [])])])
    values = batch.string_values()
    retyped = values.with_columns(pl.col("scope").cast(pl.Categorical), pl.col("owner").cast(pl.Int16))
    other = TelemetryBatch(batch.signal, batch.frame, batch.raw, _string_values=retyped)
    changes = paired["default"].check(other, monkeypatch)
    assert changes.rewrites is not None and changes.rewrites.height == 2


def test_values_of_every_type_outside_the_allow_list_are_dropped_on_every_path(paired, monkeypatch):
    """The scan lists for the redactor only the values its rules can change: a number outside the
    allow list is one of them even when the value rules read text only."""
    attributes = {"other.key": 7, "other.flag": True, "other.ratio": 0.5, "n": 3, "genops.team": 5, "note": "x"}
    batch = traces_batch([({"service.name": "svc"}, [(attributes, [dict(attributes)])])])
    changes = paired["custom_text_only"].check(batch, monkeypatch)
    dropped = changes.rewrites.filter(pl.col("new_value").is_null())
    assert sorted(dropped["scope"].to_list()) == ["attribute"] * 3 + ["event"] * 3


def test_rule_conditions_past_64_value_rules_are_kept_the_same(monkeypatch):
    # The native masks of the rules a condition keeps off a value grow past one 64-bit word.
    rules = [{"name": f"p{i}", "pattern": f"W{i:02d}X", "mask": f"<{i}>"} for i in range(70)]
    rules[66]["skip"] = {"keys": ["note"]}
    rules[67]["when"] = {"keys": ["note"]}
    rules[68]["skip"] = {"resource": {"service.name": "svc"}}
    rules[69]["when"] = {"resource": {"service.name": "other"}}
    stages = PairedStages(parse_rules({"summary": "info", "rules": rules}))
    text = " ".join(f"W{i:02d}X" for i in (1, 63, 64, 65, 66, 67, 68, 69))
    batch = traces_batch(
        [
            ({"service.name": "svc"}, [({"note": text, "detail": text}, [])]),
            ({"service.name": "other"}, [({"note": text, "detail": text}, [])]),
        ]
    )
    changes = stages.check(batch, monkeypatch)
    assert changes.rewrites is not None
    rows = changes.rewrites.select("owner", "position", "new_value").iter_rows()
    new = {(owner, position): value for owner, position, value in rows}
    base = "<1> <63> <64> <65>"
    # Span 0 under svc, span 1 under other; position 0 is note, 1 is detail.
    assert new == {
        (0, 0): f"{base} W66X <67> W68X W69X",
        (0, 1): f"{base} <66> W67X W68X W69X",
        (1, 0): f"{base} W66X <67> <68> <69>",
        (1, 1): f"{base} <66> W67X <68> <69>",
    }
