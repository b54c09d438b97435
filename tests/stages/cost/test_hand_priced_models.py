"""Real models priced with the shipped tables against figures computed by hand from the providers'
published list prices (USD per million tokens, as of 2025-10-15; written here, not read from our
tables), on the native and the polars path."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.stages.cost.native import native_cost_available
from processor.stages.cost.stage import CostStage
from tests.support.cost_helpers import process
from tests.support.native_switch import native

DAY = "2025-10-15"
# Every span: 100k input tokens (20k of them cache reads and 10k cache writes where the model has
# those prices) and 10k output tokens.
INPUT, CACHE_READ, CACHE_WRITE, OUTPUT = 100_000, 20_000, 10_000, 10_000

# (span provider, span model, input, output, cache read, cache write); None: no such price.
PUBLISHED = [
    # https://openai.com/api/pricing/
    ("openai", "gpt-4o-2024-08-06", 2.5, 10, 1.25, None),
    ("openai", "gpt-4o-2024-05-13", 5, 15, None, None),
    ("openai", "chatgpt-4o-latest", 5, 15, None, None),
    ("openai", "gpt-4o-mini", 0.15, 0.6, 0.075, None),
    ("openai", "gpt-4.1-2025-04-14", 2, 8, 0.5, None),
    ("openai", "gpt-4.1-mini", 0.4, 1.6, 0.1, None),
    ("openai", "gpt-4.1-nano", 0.1, 0.4, 0.025, None),
    ("openai", "o3-2025-04-16", 2, 8, 0.5, None),
    ("openai", "o4-mini-2025-04-16", 1.1, 4.4, 0.275, None),
    ("openai", "o3-mini", 1.1, 4.4, 0.55, None),
    ("openai", "o1-mini", 1.1, 4.4, 0.55, None),
    ("openai", "o1-2024-12-17", 15, 60, 7.5, None),
    ("openai", "gpt-5-2025-08-07", 1.25, 10, 0.125, None),
    ("openai", "gpt-5-mini-2025-08-07", 0.25, 2, 0.025, None),
    ("openai", "gpt-5-nano", 0.05, 0.4, 0.005, None),
    ("openai", "gpt-4-turbo-2024-04-09", 10, 30, None, None),
    ("openai", "gpt-3.5-turbo-0125", 0.5, 1.5, None, None),
    ("openai", "o3-pro", 20, 80, None, None),
    ("openai", "o1-pro", 150, 600, None, None),
    ("openai", "gpt-4-0613", 30, 60, None, None),
    ("openai", "text-embedding-3-small", 0.02, 0, None, None),
    ("openai", "text-embedding-3-large", 0.13, 0, None, None),
    # https://www.anthropic.com/pricing#api (cache writes: the 5-minute price)
    ("anthropic", "claude-3-haiku-20240307", 0.25, 1.25, 0.03, 0.3),
    ("anthropic", "claude-3-5-haiku-20241022", 0.8, 4, 0.08, 1),
    ("anthropic", "claude-3-5-sonnet-20241022", 3, 15, 0.3, 3.75),
    ("anthropic", "claude-3-7-sonnet-20250219", 3, 15, 0.3, 3.75),
    ("anthropic", "claude-sonnet-4-20250514", 3, 15, 0.3, 3.75),
    ("anthropic", "claude-opus-4-20250514", 15, 75, 1.5, 18.75),
    ("anthropic", "claude-opus-4-1-20250805", 15, 75, 1.5, 18.75),
    ("anthropic", "claude-haiku-4-5-20251001", 1, 5, 0.1, 1.25),
    ("anthropic", "claude-sonnet-4-5-20250929", 3, 15, 0.3, 3.75),
    ("anthropic", "claude-3-opus-20240229", 15, 75, 1.5, 18.75),
    # https://ai.google.dev/gemini-api/docs/pricing (prompts up to 128k / 200k)
    ("gcp.gemini", "gemini-2.5-pro", 1.25, 10, None, None),
    ("gcp.gemini", "gemini-2.5-flash", 0.3, 2.5, 0.03, None),
    ("gcp.gemini", "gemini-2.5-flash-lite", 0.1, 0.4, None, None),
    ("gcp.gemini", "gemini-2.0-flash-lite", 0.075, 0.3, None, None),
    ("gcp.gemini", "gemini-1.5-flash", 0.075, 0.3, None, None),
    ("gcp.gemini", "gemini-1.5-pro", 1.25, 5, None, None),
    ("gcp.gemini", "gemini-2.0-flash", 0.1, 0.4, None, None),
    ("gemini", "gemini-2.0-flash-001", 0.1, 0.4, None, None),  # the older gen_ai.system spelling
    # https://cloud.google.com/vertex-ai/generative-ai/pricing (Vertex AI's own list: 2.0 Flash
    # costs more there than on the Gemini API; stable versions -001 / @001 are snapshots)
    ("gcp.vertex_ai", "gemini-2.0-flash-001", 0.15, 0.6, None, None),
    ("vertex_ai", "gemini-2.0-flash", 0.15, 0.6, None, None),
    ("gcp.vertex_ai", "gemini-2.0-flash-lite-001", 0.075, 0.3, None, None),
    ("gcp.vertex_ai", "gemini-2.5-pro", 1.25, 10, None, None),
    ("gcp.vertex_ai", "gemini-2.5-flash", 0.3, 2.5, 0.03, None),
    ("gcp.vertex_ai", "claude-sonnet-4-5@20250929", 3, 15, 0.3, 3.75),
    # https://mistral.ai/pricing#api-pricing
    ("mistral_ai", "mistral-large-2411", 2, 6, None, None),
    ("mistral_ai", "codestral-2501", 0.3, 0.9, None, None),
    ("mistral_ai", "pixtral-large-2411", 2, 6, None, None),
    ("mistral_ai", "ministral-8b-2410", 0.1, 0.1, None, None),
    ("mistral_ai", "open-mistral-nemo", 0.15, 0.15, None, None),
    ("mistral_ai", "mistral-medium-2505", 0.4, 2, None, None),
    ("mistral_ai", "mistral-small-2503", 0.1, 0.3, None, None),
    ("mistral_ai", "ministral-3b-2410", 0.04, 0.04, None, None),
    # https://api-docs.deepseek.com/quick_start/pricing (V3.2, since 2025-09-29)
    ("deepseek", "deepseek-chat", 0.28, 0.42, 0.028, None),
    ("deepseek", "deepseek-reasoner", 0.28, 0.42, 0.028, None),
    # https://docs.x.ai/docs/models
    ("xai", "grok-4-0709", 3, 15, 0.75, None),
    ("xai", "grok-3", 3, 15, 0.75, None),
    ("xai", "grok-3-mini", 0.3, 0.5, 0.075, None),
    ("xai", "grok-code-fast-1", 0.2, 1.5, 0.02, None),
    # https://cohere.com/pricing
    ("cohere", "command-r-plus-08-2024", 2.5, 10, None, None),
    ("cohere", "command-r-08-2024", 0.15, 0.6, None, None),
    ("cohere", "command-a-03-2025", 2.5, 10, None, None),
    ("cohere", "command-r7b-12-2024", 0.0375, 0.15, None, None),
    # https://groq.com/pricing
    ("groq", "llama-3.3-70b-versatile", 0.59, 0.79, None, None),
    ("groq", "llama-3.1-8b-instant", 0.05, 0.08, None, None),
    ("groq", "qwen/qwen3-32b", 0.29, 0.59, None, None),
    # https://aws.amazon.com/bedrock/pricing/ (on-demand; regional profiles +10% over global)
    ("aws.bedrock", "anthropic.claude-3-haiku-20240307-v1:0", 0.25, 1.25, None, None),
    ("aws.bedrock", "amazon.nova-pro-v1:0", 0.8, 3.2, 0.2, None),
    ("aws.bedrock", "amazon.nova-lite-v1:0", 0.06, 0.24, 0.015, None),
    ("aws.bedrock", "amazon.nova-micro-v1:0", 0.035, 0.14, 0.00875, None),
    ("aws.bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", 3.3, 16.5, 0.33, 4.125),
    ("aws.bedrock", "global.anthropic.claude-sonnet-4-5-20250929-v1:0", 3, 15, 0.3, 3.75),
    ("aws.bedrock", "eu.anthropic.claude-haiku-4-5-20251001-v1:0", 1.1, 5.5, 0.11, 1.375),
    # https://azure.microsoft.com/pricing/details/cognitive-services/openai-service/ (global)
    ("azure.ai.openai", "gpt-4o", 2.5, 10, 1.25, None),
    # https://www.together.ai/pricing, https://fireworks.ai/pricing
    ("together_ai", "meta-llama/Llama-3.3-70B-Instruct-Turbo", 0.88, 0.88, None, None),
    ("fireworks_ai", "accounts/fireworks/models/llama-v3p1-8b-instruct", 0.2, 0.2, None, None),
]


def span_of(provider: str, model: str, cache_read: float | None, cache_write: float | None) -> dict[str, object]:
    attributes: dict[str, object] = {
        "gen_ai.provider.name": provider,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": INPUT,
        "gen_ai.usage.output_tokens": OUTPUT,
    }
    if cache_read is not None:
        attributes["gen_ai.usage.cache_read.input_tokens"] = CACHE_READ
    if cache_write is not None:
        attributes["gen_ai.usage.cache_write.input_tokens"] = CACHE_WRITE
    return attributes


def expected_total(price_in: float, price_out: float, cache_read: float | None, cache_write: float | None) -> float:
    read = CACHE_READ if cache_read is not None else 0
    write = CACHE_WRITE if cache_write is not None else 0
    dollars = (INPUT - read - write) * price_in + OUTPUT * price_out
    dollars += read * (cache_read or 0) + write * (cache_write or 0)
    return dollars / 1_000_000


PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(not native_cost_available(), reason="no native"))]


@pytest.fixture(scope="module")
def stage():
    return CostStage(CostConfig(reload_interval_seconds=0), CollectorRegistry(), watch=False)


def test_the_published_set_is_large_enough():
    assert len({(p, m) for p, m, *_ in PUBLISHED}) >= 60
    assert len({p for p, *_ in PUBLISHED}) >= 12


@pytest.mark.parametrize("native_path", PATHS)
def test_real_models_cost_what_their_providers_publish(stage, native_path):
    spans = [span_of(p, m, cr, cw) for p, m, _, _, cr, cw in PUBLISHED]
    with native(native_path):
        _, written = process(stage, spans, DAY)
    wrong = []
    for (provider, model, price_in, price_out, cr, cw), out in zip(PUBLISHED, written, strict=True):
        expected = expected_total(price_in, price_out, cr, cw)
        got = out.get("genops.cost.total")
        if out.get("genops.cost.status") != "priced" or got is None or abs(got - expected) > 1e-9 + expected * 1e-6:
            wrong.append((provider, model, out.get("genops.cost.status"), got, expected))
    assert wrong == []


def test_long_context_and_regional_prices(stage):
    _, (pro, sonnet_regional, sonnet_global) = process(
        stage,
        [
            # Gemini 2.5 Pro above 200k prompt tokens: $2.50/$15 for the whole request.
            {
                "gen_ai.provider.name": "gcp.gemini",
                "gen_ai.response.model": "gemini-2.5-pro",
                "gen_ai.usage.input_tokens": 300_000,
                "gen_ai.usage.output_tokens": 10_000,
            },
            # Sonnet 4.5 above 200k on Bedrock: regional $6.60/$24.75, global $6/$22.50.
            {
                "gen_ai.provider.name": "aws.bedrock",
                "gen_ai.response.model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "gen_ai.usage.input_tokens": 300_000,
                "gen_ai.usage.output_tokens": 10_000,
            },
            {
                "gen_ai.provider.name": "aws.bedrock",
                "gen_ai.response.model": "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "gen_ai.usage.input_tokens": 300_000,
                "gen_ai.usage.output_tokens": 10_000,
            },
        ],
        DAY,
    )
    assert pro["genops.cost.total"] == pytest.approx(0.75 + 0.15)
    assert sonnet_regional["genops.cost.total"] == pytest.approx(1.98 + 0.2475)
    assert sonnet_global["genops.cost.total"] == pytest.approx(1.8 + 0.225)
