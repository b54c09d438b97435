"""`pricing check`, `pricing quote` and `pricing import` as a user runs them."""

from __future__ import annotations

import json

import pytest
import yaml

from processor.stages.cost.pricing_table import load_table
from tests.support.cli import run_in_process
from tests.support.cost_helpers import write_small_table


def test_check_reports_a_valid_table(tmp_path, capsys):
    assert run_in_process("pricing", "check", str(write_small_table(tmp_path / "p.yaml", version="2026-05-01"))) == 0
    out = capsys.readouterr().out
    assert "version: 2026-05-01" in out
    assert "models: 1" in out


def test_check_lists_every_problem_and_fails(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'version: "1"\nmodels:\n  - {provider: openai, model: a}\n  - {provider: openai, model: b, input: x}\n'
    )
    assert run_in_process("pricing", "check", str(bad)) == 1
    err = capsys.readouterr().err
    assert "models[0] (a): input price is required" in err
    assert "models[1] (b): input must be a number" in err


def test_quote_prices_a_request_with_cache_and_date(capsys):
    # o3 on 2025-05-01 (before the price drop): 6000 uncached x $10 + 4000 cached x $2.50 + 500 x $40
    assert (
        run_in_process(
            "pricing",
            "quote",
            "o3",
            "--input",
            "10000",
            "--cache-read",
            "4000",
            "--output",
            "500",
            "--provider",
            "openai",
            "--at",
            "2025-05-01",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "model: o3 (openai)" in out
    assert "total        $0.090000" in out


def test_quote_of_an_unknown_model_fails(capsys):
    assert run_in_process("pricing", "quote", "no-such-model", "--input", "1") == 1
    assert "no price" in capsys.readouterr().err


LITELLM = {
    "sample_spec": {"input_cost_per_token": 0, "litellm_provider": "one of https://docs.litellm.ai/docs/providers"},
    "gpt-4o": {
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
        "litellm_provider": "openai",
        "mode": "chat",
    },
    "gemini/gemini-2.5-pro": {
        "input_cost_per_token": 1.25e-06,
        "input_cost_per_token_above_200k_tokens": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "output_cost_per_token_above_200k_tokens": 1.5e-05,
        "litellm_provider": "gemini",
        "mode": "chat",
    },
    "dall-e-3": {"output_cost_per_image": 0.04, "litellm_provider": "openai", "mode": "image_generation"},
}

GENAI_PRICES = """\
id: deepseek
name: DeepSeek
pricing_urls:
  - https://api-docs.deepseek.com/quick_start/pricing
models:
  - id: deepseek-chat
    match:
      or:
        - equals: deepseek-chat
        - equals: deepseek-v3
    prices:
      - prices: {input_mtok: 0.27, cache_read_mtok: 0.07, output_mtok: 1.1}
      - constraint: {start_date: 2025-09-29}
        prices: {input_mtok: 0.28, cache_read_mtok: 0.028, output_mtok: 0.42}
  - id: deepseek-tiered
    match: {starts_with: deepseek-long}
    prices:
      input_mtok: {base: 1, tiers: [{start: 128000, price: 2}]}
      output_mtok: 4
      requests_kcount: 5
"""


def test_import_from_litellm(tmp_path, capsys):
    source = tmp_path / "litellm.json"
    source.write_text(json.dumps(LITELLM))
    out = tmp_path / "ours.yaml"
    assert (
        run_in_process("pricing", "import", "--from", "litellm", str(source), "-o", str(out), "--version", "imp-1") == 0
    )
    table = load_table(out)
    assert table.version == "imp-1"
    gpt = table.entry(table.resolve("openai", "gpt-4o"))
    assert gpt.prices["input"] == pytest.approx(2.5)
    assert gpt.prices["cache_read"] == pytest.approx(1.25)
    gemini = table.entry(table.resolve("google", "gemini-2.5-pro"))
    assert gemini.tiers[0].above_input_tokens == 200_000
    assert gemini.tiers[0].prices["output"] == pytest.approx(15)
    assert "dall-e-3: no per-token input price" in capsys.readouterr().err


def test_import_from_genai_prices_keeps_dated_prices_and_tiers(tmp_path):
    source = tmp_path / "deepseek.yml"
    source.write_text(GENAI_PRICES)
    out = tmp_path / "ours.yaml"
    assert run_in_process("pricing", "import", "--from", "genai-prices", str(source), "-o", str(out)) == 0
    document = yaml.safe_load(out.read_text())
    chat = [m for m in document["models"] if m["model"] == "deepseek-chat"]
    assert [(m.get("effective_from"), m.get("effective_to"), m["input"]) for m in chat] == [
        (None, "2025-09-29", 0.27),
        ("2025-09-29", None, 0.28),
    ]
    assert chat[0]["aliases"] == ["deepseek-v3"]
    table = load_table(out)
    tiered = table.entry(table.resolve("deepseek", "deepseek-long"))
    assert (tiered.match, tiered.request, tiered.tiers[0].above_input_tokens) == ("prefix", 0.005, 128_000)


def test_import_of_something_else_fails_cleanly(tmp_path, capsys):
    source = tmp_path / "x.yaml"
    source.write_text("- 1\n- 2\n")
    assert run_in_process("pricing", "import", "--from", "genai-prices", str(source)) == 2
    assert "is not a genai-prices file" in capsys.readouterr().err


def test_quote_takes_the_billing_dimensions(capsys):
    day = ["--at", "2025-10-15"]
    assert (
        run_in_process(
            "pricing", "quote", "sonar", "--provider", "perplexity", "--input", "1000", "--output", "1000", *day
        )
        == 0
    )
    assumed = capsys.readouterr().out
    assert "assumed: search_context_size=low" in assumed and "total        $0.007000" in assumed
    argv = ("pricing", "quote", "sonar", "--provider", "perplexity", "--input", "1000", "--output", "1000")
    assert run_in_process(*argv, "--search-context-size", "high", *day) == 0
    assert "total        $0.014000" in capsys.readouterr().out
    assert (
        run_in_process("pricing", "quote", "o3", "--input", "10000", "--output", "1000", "--service-tier", "flex", *day)
        == 0
    )
    assert "total        $0.014000" in capsys.readouterr().out  # $1/$4 instead of $2/$8
    realtime = ("pricing", "quote", "gpt-realtime", "--input", "10000", "--output", "2000")
    assert run_in_process(*realtime, "--audio-input", "6000", "--audio-output", "1500", *day) == 0
    assert "total        $0.312000" in capsys.readouterr().out


def test_quote_runs_the_sidecars_cost_stage(monkeypatch, capsys):
    """`pricing quote` prices through the cost stage the sidecar runs (its native engine), not a
    polars query of its own: what it prints is what a span with those attributes is written."""
    from processor.stages.cost.stage import CostStage

    engines: list[str | None] = []
    process = CostStage.process

    def recording(self, batch):
        changes = process(self, batch)
        engines.append(changes.engine)
        return changes

    monkeypatch.setattr(CostStage, "process", recording)
    assert run_in_process("pricing", "quote", "o3", "--input", "10000", "--output", "500", "--at", "2025-05-01") == 0
    assert engines == ["native"]
    assert "model: o3 (openai)" in capsys.readouterr().out
