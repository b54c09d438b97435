"""Billing dimensions a span carries beyond its token counts, priced with the shipped tables; every
figure is computed by hand from the providers' pricing pages."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.stages.cost.pricing_table import PricingError, load_table
from processor.stages.cost.stage import CostStage
from tests.support.cost_helpers import process


@pytest.fixture(scope="module")
def stage():
    return CostStage(CostConfig(reload_interval_seconds=0), CollectorRegistry())


def openai(model: str, tokens_in: int, tokens_out: int, **extra: object) -> dict[str, object]:
    return {
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": tokens_in,
        "gen_ai.usage.output_tokens": tokens_out,
        **extra,
    }


@pytest.mark.parametrize(
    ("attributes", "total", "tier"),
    [
        # gpt-4o $2.50/$10; the Batch API halves both: $1.25/$5.
        (openai("gpt-4o", 10_000, 1_000, **{"openai.response.service_tier": "batch"}), 0.0175, "batch"),
        # o3 since 2025-06-10 $2/$8; flex $1/$4.
        (openai("o3", 10_000, 2_000, **{"openai.response.service_tier": "flex"}), 0.018, "flex"),
        # o3 priority $3.50/$14.
        (openai("o3", 10_000, 1_000, **{"openai.response.service_tier": "priority"}), 0.049, "priority"),
        # GPT-5.2 $1.75/$14, priority $3.50/$28; the older semconv key.
        (openai("gpt-5.2", 2_000, 500, **{"gen_ai.openai.response.service_tier": "Priority "}), 0.021, "priority"),
        # The tier the response reports is the one billed, not the one requested.
        (
            openai(
                "o3",
                10_000,
                1_000,
                **{"openai.request.service_tier": "flex", "openai.response.service_tier": "default"},
            ),
            0.028,
            None,
        ),
        (openai("o3", 10_000, 1_000, **{"openai.request.service_tier": "flex"}), 0.014, "flex"),
        # Anthropic Message Batches: Sonnet 4.5 $3/$15 -> $1.50/$7.50.
        (
            {
                "gen_ai.provider.name": "anthropic",
                "gen_ai.response.model": "claude-sonnet-4-5-20250929",
                "gen_ai.usage.input_tokens": 4_000,
                "gen_ai.usage.output_tokens": 400,
                "genops.service_tier": "batch",
            },
            0.009,
            "batch",
        ),
        # Gemini Batch Mode: 2.5 Flash $0.30/$2.50 -> $0.15/$1.25.
        (
            {
                "gen_ai.provider.name": "gcp.gemini",
                "gen_ai.response.model": "gemini-2.5-flash",
                "gen_ai.usage.input_tokens": 100_000,
                "gen_ai.usage.output_tokens": 10_000,
                "genops.service_tier": "batch",
            },
            0.0275,
            "batch",
        ),
    ],
)
def test_service_tiers_scale_the_token_prices(stage, attributes, total, tier):
    _, (written,) = process(stage, [attributes])
    assert written["genops.cost.total"] == pytest.approx(total)
    assert written.get("genops.cost.service_tier") == tier
    assert "genops.cost.assumed" not in written
    assert written["genops.cost.status"] == "priced"


def test_a_tier_without_a_price_is_billed_standard_and_says_so_without_echoing_the_tier(stage):
    _, (priority, odd, listed) = process(
        stage,
        [
            # No priority price in the sources for chatgpt-4o-latest.
            openai("chatgpt-4o-latest", 10_000, 1_000, **{"openai.response.service_tier": "priority"}),
            openai("gpt-4o", 10_000, 1_000, **{"openai.response.service_tier": "sk-live-1234567890abcdef"}),
            # gpt-4o's is imported from LiteLLM's price map: $4.25/$17, 1.7x the standard $2.50/$10.
            openai("gpt-4o", 10_000, 1_000, **{"openai.response.service_tier": "priority"}),
        ],
    )
    for written, standard in ((priority, 0.065), (odd, 0.035)):  # $5/$15, $2.50/$10
        assert written["genops.cost.total"] == pytest.approx(standard)
        assert written["genops.cost.assumed"] == "service_tier=standard"
        assert "genops.cost.service_tier" not in written
    assert "sk-live" not in str(odd)
    assert listed["genops.cost.total"] == pytest.approx(0.0425 + 0.017)
    assert listed["genops.cost.service_tier"] == "priority"


def test_one_hour_cache_writes_cost_more_than_five_minute_ones(stage):
    anthropic = {"gen_ai.provider.name": "anthropic", "gen_ai.response.model": "claude-sonnet-4-5-20250929"}
    _, (mixed, long_context, batch, garbage) = process(
        stage,
        [
            # 10k uncached x $3, 6k 5-minute writes x $3.75, 4k 1-hour writes x $6, 1k out x $15.
            {
                **anthropic,
                "gen_ai.usage.input_tokens": 20_000,
                "gen_ai.usage.cache_write.input_tokens": 10_000,
                "genops.tokens.cache_write_1h": 4_000,
                "gen_ai.usage.output_tokens": 1_000,
            },
            # Above 200k the long-context prices: $6 input, 1-hour writes $12, output $22.50.
            {
                **anthropic,
                "gen_ai.usage.input_tokens": 250_000,
                "gen_ai.usage.cache_write.input_tokens": 100_000,
                "genops.tokens.cache_write_1h": "100000",
                "gen_ai.usage.output_tokens": 1_000,
            },
            # Batch halves the 1-hour writes too.
            {
                **anthropic,
                "gen_ai.usage.input_tokens": 20_000,
                "gen_ai.usage.cache_write.input_tokens": 10_000,
                "genops.tokens.cache_write_1h": 4_000,
                "gen_ai.usage.output_tokens": 1_000,
                "genops.service_tier": "batch",
            },
            # A count that is not one is ignored: every write is a 5-minute one.
            {
                **anthropic,
                "gen_ai.usage.input_tokens": 20_000,
                "gen_ai.usage.cache_write.input_tokens": 10_000,
                "genops.tokens.cache_write_1h": -4,
                "gen_ai.usage.output_tokens": 1_000,
            },
        ],
    )
    assert mixed["genops.cost.cache_write"] == pytest.approx(0.0225 + 0.024)
    assert mixed["genops.cost.total"] == pytest.approx(0.03 + 0.0465 + 0.015)
    assert long_context["genops.cost.cache_write"] == pytest.approx(1.2)
    assert long_context["genops.cost.total"] == pytest.approx(0.9 + 1.2 + 0.0225)
    assert batch["genops.cost.total"] == pytest.approx((0.03 + 0.0465 + 0.015) / 2)
    assert garbage["genops.cost.total"] == pytest.approx(0.03 + 0.0375 + 0.015)


def test_one_hour_writes_beyond_the_cache_writes_are_clipped(stage):
    _, (written,) = process(
        stage,
        [
            {
                "gen_ai.provider.name": "anthropic",
                "gen_ai.response.model": "claude-opus-4-6",
                "gen_ai.usage.input_tokens": 3_000,
                "gen_ai.usage.cache_write.input_tokens": 1_000,
                "genops.tokens.cache_write_1h": 50_000,
            }
        ],
        day="2026-06-01",
    )
    # Opus 4.6: $5 input, 1-hour writes $10.
    assert written["genops.cost.total"] == pytest.approx(2_000 * 5e-6 + 1_000 * 10e-6)


@pytest.mark.parametrize(
    ("model", "size", "fee", "assumed"),
    [
        ("sonar", "high", 0.012, None),
        ("sonar", "Medium", 0.008, None),
        ("sonar", None, 0.005, "search_context_size=low"),
        ("sonar", "enormous", 0.005, "search_context_size=low"),
        ("sonar-pro", "high", 0.014, None),
        ("sonar-reasoning-pro", "medium", 0.010, None),
    ],
)
def test_search_fees_follow_the_search_context_size_or_say_which_was_assumed(stage, model, size, fee, assumed):
    attributes: dict[str, object] = {
        "gen_ai.provider.name": "perplexity",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": 1_000,
        "gen_ai.usage.output_tokens": 1_000,
    }
    if size is not None:
        attributes["genops.request.search_context_size"] = size
    _, (written,) = process(stage, [attributes])
    tokens = {"sonar": 0.002, "sonar-pro": 0.018, "sonar-reasoning-pro": 0.010}[model]  # $1/$1, $3/$15, $2/$8
    assert written["genops.cost.total"] == pytest.approx(tokens + fee)
    assert written.get("genops.cost.assumed") == assumed


def test_dimensions_of_one_span_never_change_another(stage):
    plain = openai("gpt-4o", 10_000, 1_000)
    _, alone = process(stage, [plain, plain])
    _, mixed = process(
        stage,
        [
            plain,
            openai("gpt-4o", 10_000, 1_000, **{"openai.response.service_tier": "batch"}),
            {"gen_ai.provider.name": "perplexity", "gen_ai.request.model": "sonar", "gen_ai.usage.input_tokens": 9},
            plain,
        ],
    )
    assert mixed[0] == alone[0] and mixed[3] == alone[1]
    assert "genops.cost.assumed" not in mixed[0]


def test_tables_refuse_bad_dimension_prices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: v1\nprovider: perplexity\nservice_tiers: {batch: -1}\nmodels:\n"
        "  - {model: sonar, input: 1, request: 0.004, search_context_fees: {low: 0.005, high: x}}\n"
    )
    with pytest.raises(PricingError) as error:
        load_table(bad)
    text = str(error.value)
    assert "service_tiers: batch" in text and "high must be a number" in text and "request (0.004)" in text


def test_audio_image_and_video_tokens_cost_their_own_prices(stage):
    _, (realtime, openinference, gemini, clipped, text_only) = process(
        stage,
        [
            # gpt-realtime: text $4/$16, audio $32/$64, image input $5.
            openai(
                "gpt-realtime",
                10_000,
                2_000,
                **{
                    "gen_ai.usage.audio.input_tokens": 6_000,
                    "gen_ai.usage.image.input_tokens": 1_000,
                    "gen_ai.usage.text.input_tokens": 3_000,
                    "gen_ai.usage.audio.output_tokens": 1_500,
                },
            ),
            # OpenInference counts; gpt-4o-mini-audio-preview: text $0.15/$0.60, audio $10/$20.
            {
                "llm.provider": "openai",
                "llm.model_name": "gpt-4o-mini-audio-preview-2024-12-17",
                "llm.token_count.prompt": 2_000,
                "llm.token_count.prompt_details.audio": 1_500,
                "llm.token_count.completion": 1_000,
                "llm.token_count.completion_details.audio": 800,
            },
            # Gemini 2.5 Flash: audio input $1 where text is $0.30.
            {
                "gen_ai.provider.name": "gcp.gemini",
                "gen_ai.response.model": "gemini-2.5-flash",
                "gen_ai.usage.input_tokens": 10_000,
                "gen_ai.usage.audio.input_tokens": 8_000,
                "gen_ai.usage.output_tokens": 1_000,
            },
            # More audio than input: every input token is audio.
            openai("gpt-realtime", 10_000, 0, **{"gen_ai.usage.audio.input_tokens": 50_000}),
            # No audio price for gpt-4o: its audio tokens stay at the text price.
            openai("gpt-4o", 10_000, 1_000, **{"gen_ai.usage.audio.input_tokens": 5_000}),
        ],
    )
    assert realtime["genops.cost.input"] == pytest.approx(0.012 + 0.192 + 0.005)
    assert realtime["genops.cost.output"] == pytest.approx(0.008 + 0.096)
    assert realtime["genops.cost.total"] == pytest.approx(0.313)
    assert openinference["genops.cost.total"] == pytest.approx(0.000075 + 0.015 + 0.00012 + 0.016)
    assert gemini["genops.cost.total"] == pytest.approx(0.0006 + 0.008 + 0.0025)
    assert clipped["genops.cost.total"] == pytest.approx(0.32)
    assert text_only["genops.cost.total"] == pytest.approx(0.035)


def test_both_paths_apply_the_dimensions_alike(stage, monkeypatch):
    spans = [
        openai("o3", 10_000, 1_000, **{"openai.response.service_tier": "priority"}),
        openai("gpt-realtime", 10_000, 2_000, **{"gen_ai.usage.audio.input_tokens": 6_000}),
        {"gen_ai.provider.name": "perplexity", "gen_ai.request.model": "sonar", "gen_ai.usage.input_tokens": 9},
        {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.response.model": "claude-haiku-4-5-20251001",
            "gen_ai.usage.input_tokens": 2_000,
            "gen_ai.usage.cache_write.input_tokens": 1_000,
            "genops.tokens.cache_write_1h": 1_000,
        },
    ]
    results = []
    for native in ("1", "0"):
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
        results.append(process(stage, spans)[1])
    assert results[0] == results[1]
    # Haiku 4.5: $1 input, 1-hour writes $2.
    assert results[0][3]["genops.cost.total"] == pytest.approx(0.001 + 0.002)
