"""Recall and false positives of the default value rules, measured on tests/stages/redaction/redaction_corpus/.

Each `<rule>.yaml` lists `positives` the rule of that name must redact (alone and inside a
sentence, with the rule's own mask) and `near_misses` that look alike but must be left as they
are; `near_misses.yaml` adds look-alikes from ordinary telemetry (ids, timestamps, versions).

`python -m tests.stages.redaction.test_redaction_corpus` prints the per-detector table the README shows; a test
checks that the README's table is the measured one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from processor.stages.redaction.detectors import BUILTIN_DETECTORS
from processor.stages.redaction.rules import load_rules
from tests.oracle.redaction import OracleValueRedactor as ValueRedactor
from tests.support.redaction_corpus import corpus

README = Path(__file__).resolve().parents[3] / "README.md"
# Measured false positives allowed on the near-miss corpus.
FALSE_POSITIVE_BOUND = 0


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


def test_every_built_in_detector_has_a_corpus_file_and_runs_by_default():
    rule_names = {rule.name for rule in load_rules().value_rules}
    assert rule_names <= set(corpus())
    assert set(BUILTIN_DETECTORS) <= rule_names


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


@dataclass(frozen=True)
class DetectorStats:
    name: str
    positives: int
    found: int  # positives redacted with the rule's mask, alone and in every context
    near_misses: int
    changed: int  # near misses any default rule changed, alone or in a sentence

    def row(self) -> str:
        recall = f"{self.found}/{self.positives} ({self.found / self.positives:.0%})" if self.positives else "-"
        rate = self.changed / self.near_misses if self.near_misses else 0.0
        return f"| `{self.name}` | {recall} | {self.changed}/{self.near_misses} ({rate:.0%}) |"


def detector_stats(redactor: ValueRedactor) -> list[DetectorStats]:
    out = []
    for name, data in corpus().items():
        contexts = [(secret, f"user wrote: {secret}, then left", f"{secret}\n") for secret in data["positives"]]
        got = scanned(redactor, [text for texts in contexts for text in texts])
        found = sum(
            all(secret not in g and f"[REDACTED:{name}]" in g for g in got[3 * i : 3 * i + 3])
            for i, secret in enumerate(data["positives"])
        )
        misses = [(text, f"note: {text} (see log)") for text in data["near_misses"]]
        after = scanned(redactor, [text for pair in misses for text in pair])
        changed = sum(after[2 * i] != a or after[2 * i + 1] != b for i, (a, b) in enumerate(misses))
        label = "ordinary telemetry" if name == "near_misses" else name
        out.append(DetectorStats(label, len(data["positives"]), found, len(data["near_misses"]), changed))
    return out


def stats_table(stats: list[DetectorStats]) -> str:
    lines = ["| detector | recall | false positives |", "|---|---|---|", *(s.row() for s in stats)]
    return "\n".join(lines)


def test_corpus_holds_enough_secrets_and_look_alikes():
    data = corpus()
    assert sum(len(d["positives"]) for d in data.values()) >= 150
    assert sum(len(d["near_misses"]) for d in data.values()) >= 150
    # Every detector has look-alikes of its own.
    assert all(d["near_misses"] for d in data.values())


def test_readme_states_the_measured_recall_and_false_positives_per_detector(redactor):
    table = stats_table(detector_stats(redactor))
    readme = README.read_text()
    stated = re.search(r"^\| detector \| recall \| false positives \|\n(?:^\|.*\n)+", readme, re.MULTILINE)
    assert stated is not None, "README has no per-detector table"
    assert stated.group(0).strip() == table


if __name__ == "__main__":
    rules = load_rules()
    print(stats_table(detector_stats(ValueRedactor(rules.value_rules, b"corpus-key", rules.hash_prefix))))
