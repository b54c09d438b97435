"""Recall and false positives of the default value rules, measured on tests/redaction_corpus/.

Each `<rule>.yaml` lists `positives` the rule of that name must redact (alone and inside a
sentence, with the rule's own mask) and `near_misses` that look alike but must be left as they
are; `near_misses.yaml` adds look-alikes from ordinary telemetry (ids, timestamps, versions).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from processor.redact import ValueRedactor
from processor.redaction_rules import load_rules

CORPUS = Path(__file__).parent / "redaction_corpus"
# Measured false positives allowed on the near-miss corpus.
FALSE_POSITIVE_BOUND = 0


def corpus() -> dict[str, dict[str, list[str]]]:
    out = {}
    for path in sorted(CORPUS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        out[path.stem] = {k: [str(v) for v in data.get(k, [])] for k in ("positives", "near_misses")}
    return out


@pytest.fixture(scope="module")
def redactor() -> ValueRedactor:
    rules = load_rules()
    return ValueRedactor(rules.value_rules, b"corpus-key", rules.hash_prefix)


def scanned(redactor: ValueRedactor, texts: list[str]) -> list[str]:
    result = redactor.scan(pl.Series(texts, dtype=pl.String))
    out = list(texts)
    for index, value in zip(result.index.to_list(), result.new_value.to_list(), strict=True):
        out[index] = value
    return out


def test_every_built_in_detector_has_a_corpus_file():
    rule_names = {rule.name for rule in load_rules().value_rules}
    assert rule_names <= set(corpus())


def test_recall_on_positives_is_complete(redactor):
    cases = [
        (name, secret, text)
        for name, data in corpus().items()
        for secret in data["positives"]
        for text in (secret, f"user wrote: {secret}, then left", f"{secret}\n")
    ]
    out = scanned(redactor, [text for _, _, text in cases])
    missed = [
        (name, text, got)
        for (name, secret, text), got in zip(cases, out, strict=True)
        if secret in got or f"[REDACTED:{name}]" not in got
    ]
    recall = 1 - len(missed) / len(cases)
    print(f"redaction corpus recall: {recall:.1%} of {len(cases)} positives")
    assert missed == []


def test_false_positives_on_near_misses(redactor):
    texts = [
        text
        for data in corpus().values()
        for near_miss in data["near_misses"]
        for text in (near_miss, f"note: {near_miss} (see log)")
    ]
    out = scanned(redactor, texts)
    changed = [(text, got) for text, got in zip(texts, out, strict=True) if got != text]
    print(f"redaction corpus false positives: {len(changed)} of {len(texts)} near-misses")
    assert len(changed) <= FALSE_POSITIVE_BOUND, changed
