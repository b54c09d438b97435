"""Reviewing and ageing tables: `pricing diff OLD NEW` and genops_pricing_table_age_seconds."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.stages.cost.stage import CostStage
from tests.support.cli import run_in_process
from tests.support.cost_helpers import process

OLD = """\
version: "2026-01-01"
provider: openai
source: https://openai.com/api/pricing/
as_of: 2026-01-01
models:
  - {model: gpt-a, input: 1, output: 4}
  - {model: gpt-b, input: 2, output: 8, aliases: [gpt-b-1]}
  - {model: gpt-c, input: 3, output: 9, effective_to: 2026-02-01}
"""
NEW = """\
version: "2026-02-01"
provider: openai
source: https://openai.com/api/pricing/
as_of: 2026-02-01
models:
  - {model: gpt-b, input: 2.5, output: 8, aliases: [gpt-b-1]}
  - {model: gpt-c, input: 3, output: 9, effective_to: 2026-02-01}
  - {model: gpt-c, input: 1.5, output: 6, effective_from: 2026-02-01}
  - {model: gpt-d, input: 0.5, output: 2, request: 0.01}
"""


def test_diff_prints_added_removed_and_changed_prices(tmp_path, capsys):
    (tmp_path / "old.yaml").write_text(OLD)
    (tmp_path / "new.yaml").write_text(NEW)
    assert run_in_process("pricing", "diff", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "+ openai gpt-c from 2026-02-01: input 1.5, output 6",
        "+ openai gpt-d: input 0.5, output 2, request 0.01",
        "- openai gpt-a: input 1, output 4",
        "~ openai gpt-b: input 2 -> 2.5",
    ]
    assert "2026-01-01 -> 2026-02-01: 2 added, 1 removed, 1 changed" in captured.err


def test_diff_of_a_table_with_itself_is_empty_and_a_broken_table_is_one_error(tmp_path, capsys):
    (tmp_path / "old.yaml").write_text(OLD)
    assert run_in_process("pricing", "diff", str(tmp_path / "old.yaml"), str(tmp_path / "old.yaml")) == 0
    assert capsys.readouterr().out == ""
    (tmp_path / "bad.yaml").write_text("version: x\nmodels: [{model: m}]\n")
    assert run_in_process("pricing", "diff", str(tmp_path / "old.yaml"), str(tmp_path / "bad.yaml")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "input price is required" in err


def test_table_age_counts_from_the_newest_price_check(tmp_path):
    (tmp_path / "t.yaml").write_text(NEW)
    registry = CollectorRegistry()
    stage = CostStage(CostConfig(pricing_file=str(tmp_path / "t.yaml"), reload_interval_seconds=0), registry, False)
    process(stage, [{"gen_ai.request.model": "gpt-b", "gen_ai.usage.input_tokens": 1}])
    checked = dt.datetime(2026, 2, 1, tzinfo=dt.UTC).timestamp()
    age = registry.get_sample_value("genops_pricing_table_age_seconds")
    assert age == pytest.approx(time.time() - checked, abs=60)


def test_quote_says_when_a_price_is_only_an_estimate(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text(
        'version: "q1"\nprovider: openai\nmodels:\n  - {model: gpt-q, match: prefix, input: 1, output: 2}\n'
    )
    args = ("--input", "1000000", "--provider", "openai", "--pricing", str(tmp_path / "t.yaml"))
    assert run_in_process("pricing", "quote", "gpt-q-2031-01-01", *args) == 0
    assert "estimated" not in capsys.readouterr().out
    assert run_in_process("pricing", "quote", "gpt-q.5", *args) == 0
    out = capsys.readouterr().out
    assert "model: gpt-q (openai)" in out and "estimated: 'gpt-q.5' is not gpt-q" in out


def test_diff_shows_billing_dimension_changes(tmp_path, capsys):
    head = "version: v{n}\nprovider: openai\nservice_tiers: {tiers}\nmodels:\n"
    (tmp_path / "old.yaml").write_text(
        head.format(n=1, tiers="{batch: 0.5}") + "  - {model: gpt-a, input: 1, output: 4}\n"
    )
    (tmp_path / "new.yaml").write_text(
        head.format(n=2, tiers="{batch: 0.5, flex: 0.5}")
        + "  - {model: gpt-a, input: 1, output: 4, modality_prices: {audio_input: 40}}\n"
    )
    assert run_in_process("pricing", "diff", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")) == 1
    assert capsys.readouterr().out.splitlines() == [
        "~ openai gpt-a: service_tiers {batch: 0.5} -> {batch: 0.5, flex: 0.5}; "
        "modality_prices none -> {audio_input: 40}"
    ]
