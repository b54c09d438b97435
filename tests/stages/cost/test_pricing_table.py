"""Pricing table files: formats, validation, and which entry prices a (provider, model)."""

from __future__ import annotations

import json

import pytest

from processor.stages.cost.pricing_table import PricingError, default_table_path, load_table

MATCHING = """\
version: "2026-01-01"
models:
  - {provider: openai, model: gpt-4o, input: 1}
  - {provider: openai, model: gpt-4, match: prefix, input: 2}
  - {provider: openai, model: gpt-4o-mini, match: prefix, input: 3}
  - {provider: openai, model: 'gpt-.*-turbo', match: regex, input: 4}
  - {provider: "*", model: gpt-4o-mini, input: 5}
  - {provider: "*", model: llama-3.1-8b, match: prefix, input: 6}
  - {provider: azure.openai, model: gpt-4o, input: 7}
"""


@pytest.fixture
def table(tmp_path):
    (tmp_path / "t.yaml").write_text(MATCHING)
    return load_table(tmp_path / "t.yaml")


def price_of(table, provider, model):
    group = table.resolve(provider, model)
    return None if group is None else table.entry(group).prices["input"]


@pytest.mark.parametrize(
    ("provider", "model", "price"),
    [
        ("openai", "gpt-4o", 1),  # exact beats prefix
        ("openai", "GPT-4o", 1),  # case does not matter
        ("openai", "gpt-4o-mini-2024-07-18", 3),  # longest prefix wins (gpt-4 is not its family)
        ("openai", "gpt-4-0613", 2),
        ("openai", "gpt-3.5-turbo", 4),  # regex last
        ("openai", "gpt-4o-mini", 3),  # provider-specific prefix beats provider-agnostic exact
        ("groq", "llama-3.1-8b", 6),  # agnostic entries price any provider
        ("groq", "gpt-4o", None),  # but another provider's entry does not
        ("azure.ai.openai", "gpt-4o", 7),  # provider aliases are normalized
        (None, "gpt-4o", 1),  # no provider: the first-party vendor wins
        ("openai", "openai/gpt-4o", 1),  # router-style prefixes are dropped as a fallback
        ("openai", "", None),
    ],
)
def test_matching_precedence(table, provider, model, price):
    assert price_of(table, provider, model) == price


def test_the_same_table_in_json_and_csv(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "version": "2",
                "provider": "google",
                "models": [
                    {
                        "model": "gemini-2.5-pro",
                        "match": "prefix",
                        "input": 1.25,
                        "output": 10,
                        "tiers": [{"above_input_tokens": 200000, "input": 2.5, "output": 15}],
                    }
                ],
            }
        )
    )
    (tmp_path / "b.csv").write_text(
        "version,provider,model,match,input,output,tier_above_input_tokens,tier_input,tier_output,aliases\n"
        "3,anthropic,claude-sonnet-4,prefix,3,15,200000,6,22.5,claude-4-sonnet;sonnet-four\n"
    )
    table = load_table(tmp_path)
    assert table.version == "3"  # a directory's version is its files' greatest
    assert table.model_count == 2
    rows = table.price_rows.sort("entry_model", "threshold").to_dicts()
    assert [(r["entry_model"], r["threshold"], r["p_input"], r["p_output"]) for r in rows] == [
        ("claude-sonnet-4", -1, 3.0, 15.0),
        ("claude-sonnet-4", 200000, 6.0, 22.5),
        ("gemini-2.5-pro", -1, 1.25, 10.0),
        ("gemini-2.5-pro", 200000, 2.5, 15.0),
    ]
    assert table.entry(table.resolve("anthropic", "sonnet-four")).model == "claude-sonnet-4"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("models: []", "version is required"),
        ('version: "1"\nmodels: [{provider: openai, model: x}]', "input price is required"),
        ('version: "1"\nmodels: [{provider: openai, model: x, input: -1}]', "non-negative"),
        ('version: "1"\nmodels: [{provider: openai, model: x, input: 1, ouput: 2}]', "unknown field 'ouput'"),
        ('version: "1"\nmodels: [{provider: openai, model: "x[", match: regex, input: 1}]', "bad regex"),
        ('version: "1"\nmodels: [{provider: openai, model: x, match: fuzzy, input: 1}]', "exact, prefix or regex"),
        ('version: "1"\nmodels: [{model: x, input: 1}]', "provider is required"),
        ('version: "1"\ncurrency: EUR\nmodels: [{provider: openai, model: x, input: 1}]', "currency must be USD"),
        (
            'version: "1"\nmodels:\n'
            "  - {provider: openai, model: x, input: 1, effective_to: 2025-06-10}\n"
            "  - {provider: openai, model: x, input: 2, effective_from: 2025-06-01}\n",
            "overlaps",
        ),
        ('version: "1"\nmodels: [{provider: openai, model: x, input: 1, effective_from: soon}]', "YYYY-MM-DD"),
        ("version: [1\n", "not valid YAML"),
    ],
)
def test_invalid_tables_are_refused_with_the_reason(tmp_path, text, complaint):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PricingError) as failure:
        load_table(tmp_path / "p.yaml")
    assert complaint in str(failure.value)


def test_a_missing_table_is_an_error(tmp_path):
    with pytest.raises(PricingError, match="no such file"):
        load_table(tmp_path / "nope.yaml")


def test_the_shipped_tables_cover_the_major_providers_with_sources_and_dates():
    table = load_table(default_table_path())
    assert table.model_count >= 150
    assert {
        "openai",
        "anthropic",
        "google",
        "aws.bedrock",
        "azure.openai",
        "mistral",
        "cohere",
        "deepseek",
        "xai",
    } <= set(table.providers)
    assert {"groq", "together", "fireworks"} & set(table.providers)
    assert all(e.source.startswith("https://") and e.as_of is not None for e in table.entries)
    assert any(e.effective_to is not None for e in table.entries), "at least one historical price"


def test_a_bedrock_profile_is_priced_by_its_own_entry_before_the_model_s(tmp_path):
    # Geographic profiles cost 10% more than the global one: a table can price them apart.
    (tmp_path / "b.yaml").write_text(
        'version: "b1"\nprovider: aws.bedrock\nmodels:\n'
        "  - {model: global.anthropic.claude-x-20250101, match: prefix, input: 3}\n"
        "  - {model: anthropic.claude-x-20250101, match: prefix, input: 3.3}\n"
    )
    table = load_table(tmp_path / "b.yaml")
    assert price_of(table, "aws.bedrock", "global.anthropic.claude-x-20250101-v1:0") == 3
    assert price_of(table, "aws.bedrock", "us.anthropic.claude-x-20250101-v1:0") == 3.3
    assert price_of(table, "aws.bedrock", "anthropic.claude-x-20250101-v1:0") == 3.3
    assert price_of(table, None, "eu.anthropic.claude-x-20250101-v1:0") == 3.3
