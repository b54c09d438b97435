"""The redaction corpus (tests/stages/redaction/redaction_corpus/): per rule, texts it must redact
(`positives`) and look-alikes it must leave alone (`near_misses`)."""

from __future__ import annotations

from pathlib import Path

import yaml

CORPUS = Path(__file__).resolve().parents[1] / "stages" / "redaction" / "redaction_corpus"


def corpus() -> dict[str, dict[str, list[str]]]:
    """Per corpus file (by its stem), its positives and near misses as strings."""
    out = {}
    for path in sorted(CORPUS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        out[path.stem] = {k: [str(v) for v in data.get(k, [])] for k in ("positives", "near_misses")}
    return out


def corpus_texts() -> list[str]:
    """Every text of every list in the corpus, once each, sorted."""
    return sorted(
        {
            str(text)
            for path in CORPUS.glob("*.yaml")
            for texts in yaml.safe_load(path.read_text()).values()
            for text in texts
        }
    )
