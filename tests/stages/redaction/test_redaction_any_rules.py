"""The native redactor takes any number of value rules (it once took at most 64, one bit each in
a u64, and the polars path took larger rule sets), and a value pattern it cannot run is an error
of its rule at load and at `validate-config`, never a reason for another engine to take over."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.stages.redaction.rules import load_rules, parse_rules
from processor.stages.redaction.stage import RedactionStage
from tests.oracle.redaction import OracleRedactionStage
from tests.support.cli import assert_one_clear_line, base_env, run_cli
from tests.support.differential import assert_same_changes
from tests.support.redaction_stages import counts, traces_batch

ACTIONS = ({"action": "mask", "mask": "[T]"}, {"action": "hash"}, {"action": "drop"}, {"action": "mask"})


def rules_of(count: int) -> dict:
    """`count` value rules, one token family each (so one value can fire several), every action,
    and a few built-in detectors among them (their Rust checks run beside the patterns)."""
    rules: list[dict] = []
    for index in range(count):
        if index % 50 == 7:
            rules.append({"name": f"email-{index}", "detector": "email", "action": "mask"})
            continue
        rules.append({"name": f"tok-{index}", "pattern": rf"\btok{index}-[0-9]+\b", **ACTIONS[index % 4]})
    return {"rules": rules}


def batch_for(count: int):
    # Tokens of the first, last and some middle rules, several in one value, and clean values.
    picked = sorted({0, 1, 2, 3, 63, 64, count // 2, count - 2, count - 1})
    spans = [
        ({"note": f"see tok{i}-1{i} and tok{(i + 1) % count}-2 for ada@example.com"}, [{"why": f"tok{i}-9"}])
        for i in picked
    ]
    spans.append(({"note": "nothing to see", "n": 4}, []))
    spans.append(({"note": " ".join(f"tok{i}-7" for i in picked if i % 4 == 0)}, []))
    return traces_batch([({"service.name": "svc", "host.tag": f"tok{count - 1}-5"}, spans)])


@pytest.mark.parametrize("count", [65, 300])
def test_more_than_64_value_rules_run_natively_as_the_oracle_does(count):
    rules = parse_rules(rules_of(count))
    assert len(rules.value_rules) == count
    native = RedactionStage(rules, b"key", CollectorRegistry())
    oracle = OracleRedactionStage(rules, b"key", CollectorRegistry())
    batch = batch_for(count)
    got, want = native.process(batch), oracle.process(batch)
    assert (got.engine, want.engine) == ("native", "polars")
    assert_same_changes(got, want)
    assert counts(native) == counts(oracle)
    fired = {dict(labels)["detector"] for labels in counts(native)}
    # Rules past the 64th fired too (and the value the last rule matched was changed).
    assert {f"tok-{count - 1}", f"tok-{count // 2}", "tok-64"} <= fired
    # A single value (what the stage redacts of the sidecar's own output) goes the same way.
    assert native.redact_one("note", f"tok{count - 1}-3") == oracle.redact_one("note", f"tok{count - 1}-3")


# Each compiles alone (polars and the Rust engine take it), but the redactor's one set of all
# value patterns cannot hold two: the second rule is the one refused.
WIDE = r"\w{200}"
TOO_WIDE_RULES = f"""rules:
  - {{name: first-wide, pattern: '{WIDE}', action: mask}}
  - {{name: second-wide, pattern: '{WIDE}', action: mask}}
"""


def test_a_pattern_the_engine_cannot_run_is_an_error_of_its_rule_at_load(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(TOO_WIDE_RULES)
    with pytest.raises(ValueError) as raised:
        load_rules(str(path))
    message = str(raised.value)
    assert str(path) in message and "second-wide" in message and "size limit" in message, message
    assert "\n" not in message
    # One such pattern alone is fine.
    path.write_text(TOO_WIDE_RULES.rsplit("  - ", 1)[0])
    assert len(load_rules(str(path)).value_rules) == 1


def test_a_pattern_the_engine_cannot_run_is_one_clear_line_at_validate_config(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(TOO_WIDE_RULES)
    config = tmp_path / "sidecar.yaml"
    config.write_text(f"redaction: {{rules_file: {rules}}}\n")
    result = run_cli(base_env(tmp_path), "validate-config", str(config))
    assert_one_clear_line(result, "second-wide")
    assert str(rules) in result.stderr
