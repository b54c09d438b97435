"""The cost stage prices GenAI spans with the shipped tables; figures are computed by hand."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.stages.cost.stage import MAX_UNPRICED_LABELS, CostStage
from tests.support.cost_helpers import process, write_small_table


@pytest.fixture(scope="module")
def shipped():
    registry = CollectorRegistry()
    return CostStage(CostConfig(reload_interval_seconds=0), registry), registry


# (span attributes, start day, expected parts (input, cache_read, cache_write, reasoning, output), total, entry)
REAL_MODELS = [
    pytest.param(
        {
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 12_000,
            "gen_ai.usage.cache_read.input_tokens": 4_000,
            "gen_ai.usage.output_tokens": 800,
        },
        "2025-10-09",
        # 8000 uncached x $2.50/M, 4000 cached x $1.25/M, 800 out x $10/M
        (0.02, 0.005, 0.0, 0.0, 0.008),
        0.033,
        "gpt-4o",
        id="openai-gpt-4o-cached-prompt",
    ),
    pytest.param(
        {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.response.model": "claude-sonnet-4-5-20250929",
            "gen_ai.usage.input_tokens": 250_000,
            "gen_ai.usage.cache_read.input_tokens": 50_000,
            "gen_ai.usage.cache_creation.input_tokens": 20_000,
            "gen_ai.usage.output_tokens": 2_000,
        },
        "2025-10-09",
        # prompt > 200k: long-context prices for every token: $6 / $0.60 / $7.50 / $22.50
        (1.08, 0.03, 0.15, 0.0, 0.045),
        1.305,
        "claude-sonnet-4-5",
        id="anthropic-sonnet-4-5-long-context-tier",
    ),
    pytest.param(
        {
            "gen_ai.system": "anthropic",
            "gen_ai.request.model": "claude-haiku-4-5-20251001",
            "gen_ai.usage.prompt_tokens": 100,
            "gen_ai.usage.cache_read_input_tokens": 3_000,
            "gen_ai.usage.cache_creation_input_tokens": 500,
            "gen_ai.usage.completion_tokens": 200,
        },
        "2025-10-20",
        # input reported without the cache (100 < 3500): 100 x $1, 3000 x $0.10, 500 x $1.25, 200 x $5
        (0.0001, 0.0003, 0.000625, 0.0, 0.001),
        0.002025,
        "claude-haiku-4-5",
        id="anthropic-haiku-openllmetry-exclusive-input",
    ),
    pytest.param(
        {
            "llm.provider": "google",
            "llm.model_name": "gemini-2.5-pro",
            "llm.token_count.prompt": 300_000,
            "llm.token_count.completion": 1_000,
            "llm.token_count.completion_details.reasoning": 400,
        },
        "2025-10-09",
        # > 200k prompt: $2.50 in, $15 out; reasoning billed at the output price, once
        (0.75, 0.0, 0.0, 0.006, 0.009),
        0.765,
        "gemini-2.5-pro",
        id="google-gemini-2.5-pro-openinference-tier",
    ),
    pytest.param(
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "o3",
            "gen_ai.usage.input_tokens": 1_000,
            "gen_ai.usage.output_tokens": 1_000,
        },
        "2025-05-01",
        (0.01, 0.0, 0.0, 0.0, 0.04),  # before the 2025-06-10 price drop: $10 / $40
        0.05,
        "o3",
        id="openai-o3-before-price-drop",
    ),
    pytest.param(
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "o3",
            "gen_ai.usage.input_tokens": 1_000,
            "gen_ai.usage.output_tokens": 1_000,
        },
        "2025-06-10",
        (0.002, 0.0, 0.0, 0.0, 0.008),  # from 2025-06-10: $2 / $8
        0.01,
        "o3",
        id="openai-o3-after-price-drop",
    ),
    pytest.param(
        {
            "gen_ai.provider.name": "deepseek",
            "gen_ai.request.model": "deepseek-chat",
            "gen_ai.usage.input_tokens": 1_000_000,
            "gen_ai.usage.cache_read.input_tokens": 400_000,
            "gen_ai.usage.output_tokens": 100_000,
        },
        "2025-09-10",
        (0.336, 0.028, 0.0, 0.0, 0.168),  # V3.1 prices (2025-09-05 to 09-29): $0.56 / $0.07 hit / $1.68
        0.532,
        "deepseek-chat",
        id="deepseek-v3.1-period",
    ),
    pytest.param(
        {
            "genops.provider": "bedrock",
            "genops.model": "eu.anthropic.claude-3-5-haiku-20241022-v1:0",
            "genops.tokens.input": 2_000,
            "genops.tokens.output": 100,
        },
        "2025-10-09",
        # $0.80 / $4: for this model the eu. profile costs what the model does, so the catalogue
        # keeps no entry of its own for it (the model's, without profile and vendor, prices it)
        (0.0016, 0.0, 0.0, 0.0, 0.0004),
        0.002,
        "claude-3-5-haiku-20241022",
        id="bedrock-genops-cross-region",
    ),
    pytest.param(
        {
            "gen_ai.provider.name": "perplexity",
            "gen_ai.request.model": "sonar-pro",
            "gen_ai.usage.input_tokens": 1_000,
            "gen_ai.usage.output_tokens": 500,
        },
        "2025-10-09",
        (0.003, 0.0, 0.0, 0.0, 0.0075),  # plus a $0.006 request fee
        0.0165,
        "sonar-pro",
        id="perplexity-request-fee",
    ),
]


@pytest.mark.parametrize(("attributes", "day", "parts", "total", "entry"), REAL_MODELS)
def test_real_models_are_priced_like_hand_computed_figures(shipped, attributes, day, parts, total, entry):
    stage, _ = shipped
    _, (written,) = process(stage, [attributes], day)
    names = ("input", "cache_read", "cache_write", "reasoning", "output")
    assert {n: written[f"genops.cost.{n}"] for n in names} == pytest.approx(dict(zip(names, parts, strict=True)))
    assert written["genops.cost.total"] == pytest.approx(total)
    assert written["genops.cost.model"] == entry
    assert written["genops.cost.status"] == "priced"
    assert written["genops.cost.currency"] == "USD"
    assert written["genops.cost.pricing_version"] == stage.table.version


def test_unknown_model_is_tagged_unpriced_and_counted_and_the_rest_of_the_batch_is_priced(shipped):
    stage, registry = shipped
    before = (
        registry.get_sample_value("genops_cost_unpriced_spans_total", {"provider": "openai", "model": "gpt-99-ultra"})
        or 0
    )
    _, (unknown, known) = process(
        stage,
        [
            {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-99-ultra", "gen_ai.usage.input_tokens": 5},
            {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 1_000},
        ],
    )
    assert unknown == {"genops.cost.status": "unpriced"}
    assert known["genops.cost.total"] == pytest.approx(0.00015)
    after = registry.get_sample_value(
        "genops_cost_unpriced_spans_total", {"provider": "openai", "model": "gpt-99-ultra"}
    )
    assert after == before + 1


def test_a_provider_without_that_model_is_not_priced_with_another_providers_price(shipped):
    stage, _ = shipped
    _, (written,) = process(
        stage, [{"gen_ai.provider.name": "groq", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 9}]
    )
    assert written == {"genops.cost.status": "unpriced"}


def test_spans_without_token_counts_get_no_cost_attributes_at_all(shipped):
    stage, _ = shipped
    changes, written = process(stage, [{"gen_ai.request.model": "gpt-4o"}, {"http.method": "GET"}])
    assert written == [{}, {}]
    assert changes.is_empty()


def test_costs_already_set_by_an_sdk_are_kept_unless_overridden(tmp_path):
    table = write_small_table(tmp_path / "p.yaml")
    spans = [
        {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1_000_000, "genops.cost.total": 0.5},
        {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1_000_000},
    ]
    keep = CostStage(CostConfig(pricing_file=str(table), reload_interval_seconds=0), CollectorRegistry())
    _, (sdk, ours) = process(keep, spans)
    # The SDK's cost stands; ours and the difference are written beside it.
    assert sdk == {"genops.cost.computed_total": pytest.approx(2.5), "genops.cost.sdk_difference": pytest.approx(-2.0)}
    assert ours["genops.cost.total"] == pytest.approx(2.5)
    assert "genops.cost.sdk_difference" not in ours

    override = CostStage(
        CostConfig(pricing_file=str(table), reload_interval_seconds=0, override_sdk_costs=True), CollectorRegistry()
    )
    _, (sdk, ours) = process(override, spans)
    assert sdk["genops.cost.total"] == pytest.approx(2.5)


def test_unpriced_metric_labels_are_capped(tmp_path):
    registry = CollectorRegistry()
    stage = CostStage(
        CostConfig(pricing_file=str(write_small_table(tmp_path / "p.yaml")), reload_interval_seconds=0), registry
    )
    spans = [
        {"gen_ai.system": "openai", "gen_ai.request.model": f"made-up-{i}", "gen_ai.usage.input_tokens": 1}
        for i in range(MAX_UNPRICED_LABELS + 25)
    ]
    process(stage, spans)
    series = [
        s
        for metric in registry.collect()
        if metric.name == "genops_cost_unpriced_spans"
        for s in metric.samples
        if s.name.endswith("_total")
    ]
    assert len(series) == MAX_UNPRICED_LABELS + 1
    assert registry.get_sample_value("genops_cost_unpriced_spans_total", {"provider": "other", "model": "other"}) == 25


def test_a_provider_agnostic_price_reports_the_spans_provider(tmp_path):
    table = tmp_path / "p.yaml"
    table.write_text('version: "1"\nmodels: [{provider: "*", model: llama-3.1-8b, match: prefix, input: 0.2}]\n')
    stage = CostStage(CostConfig(pricing_file=str(table), reload_interval_seconds=0), CollectorRegistry())
    _, (written,) = process(
        stage,
        [
            {
                "gen_ai.provider.name": "groq",
                "gen_ai.request.model": "llama-3.1-8b-instant",
                "gen_ai.usage.input_tokens": 1_000_000,
            }
        ],
    )
    assert (written["genops.cost.provider"], written["genops.cost.model"]) == ("groq", "llama-3.1-8b")
    assert written["genops.cost.total"] == pytest.approx(0.2)


def test_cache_writes_under_the_renamed_semconv_key_are_billed_at_the_cache_write_price(shipped):
    stage, _ = shipped
    _, (written,) = process(
        stage,
        [
            {
                "gen_ai.provider.name": "anthropic",
                "gen_ai.response.model": "claude-sonnet-4-5-20250929",
                "gen_ai.usage.input_tokens": 10_000,
                "gen_ai.usage.cache_write.input_tokens": 8_000,
                "gen_ai.usage.output_tokens": 100,
            }
        ],
    )
    # Sonnet 4.5: $3/M input, $3.75/M 5-minute cache writes, $15/M output.
    assert written["genops.cost.cache_write"] == pytest.approx(8_000 * 3.75 / 1e6)
    assert written["genops.cost.input"] == pytest.approx(2_000 * 3 / 1e6)
    assert written["genops.cost.total"] == pytest.approx(0.03 + 0.006 + 0.0015)
