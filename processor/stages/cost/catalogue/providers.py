"""The sources' provider names → ours (genai_attributes.normalize_provider covers the rest)."""

from __future__ import annotations

from processor.core.genai_attributes import normalize_provider

# genai-prices provider ids whose name differs from ours.
GENAI_PRICES_PROVIDERS = {
    "aws": "aws.bedrock",
    "azure": "azure.openai",
    "x-ai": "xai",
    "x_ai": "xai",
    "moonshotai": "moonshot",
    "zhipuai": "zai",
}
VERTEX_AI = "google.vertex_ai"
# LiteLLM's `litellm_provider` values whose name differs from ours. LiteLLM keeps the Gemini API
# (`gemini`) and Vertex AI (`vertex_ai-*`) apart, as Google's price lists do.
LITELLM_PROVIDERS = {
    "text-completion-openai": "openai",
    "gemini": "google",
    "vertex_ai-language-models": VERTEX_AI,
    "vertex_ai-anthropic_models": VERTEX_AI,
    "vertex_ai-mistral_models": VERTEX_AI,
    "vertex_ai-llama_models": VERTEX_AI,
    "vertex_ai-deepseek_models": VERTEX_AI,
    "vertex_ai-qwen_models": VERTEX_AI,
    "vertex_ai-openai_models": VERTEX_AI,
    "vertex_ai-ai21_models": VERTEX_AI,
    "vertex_ai-moonshot_models": VERTEX_AI,
    "vertex_ai-minimax_models": VERTEX_AI,
    "vertex_ai-zai_models": VERTEX_AI,
    "vertex_ai": VERTEX_AI,
    "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock",
    "azure": "azure.openai",
    "azure_ai": "azure.ai.inference",
    "mistral": "mistral",
    "codestral": "mistral",
    "text-completion-codestral": "mistral",
    "cohere_chat": "cohere",
    "together_ai": "together",
    "fireworks_ai": "fireworks",
    "fireworks_ai-embedding-models": "fireworks",
    "moonshot": "moonshot",
    "dashscope": "alibaba",
    "zai": "zai",
    "xai": "xai",
    "openrouter": "openrouter",
}


def genai_prices_provider(provider_id: str) -> str:
    return GENAI_PRICES_PROVIDERS.get(provider_id) or normalize_provider(provider_id) or provider_id


def genai_prices_model_provider(provider: str, model_id: str) -> str:
    """genai-prices' `google` provider holds the Gemini API's prices and the Claude models that
    only Vertex AI serves (the Gemini API has no Claude): those are Vertex AI's."""
    if provider == "google" and model_id.lower().startswith("claude"):
        return VERTEX_AI
    return provider


def litellm_provider(route: str) -> str | None:
    if not route:
        return None
    return LITELLM_PROVIDERS.get(route) or normalize_provider(route)


# Billing rules of a provider for all its models, written as file defaults of its table (an entry,
# an override, may set its own). Token price factors by service tier, from the pricing pages:
# OpenAI Batch API and Flex processing are half the standard prices
# (https://openai.com/api/pricing/), as are Anthropic's Message Batches
# (https://docs.anthropic.com/en/docs/build-with-claude/batch-processing#pricing) and Gemini's
# Batch Mode (https://ai.google.dev/gemini-api/docs/batch-mode). Anthropic 1-hour cache writes
# cost 2x the input price where 5-minute writes cost 1.25x: 1.6x the cache write price
# (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching#pricing).
PROVIDER_BILLING: dict[str, dict[str, object]] = {
    "openai": {"service_tiers": {"batch": 0.5, "flex": 0.5}},
    "anthropic": {"service_tiers": {"batch": 0.5}, "cache_write_1h_factor": 1.6},
    "google": {"service_tiers": {"batch": 0.5}},
    # Vertex AI batch prediction: half the online price
    # (https://cloud.google.com/vertex-ai/generative-ai/pricing).
    VERTEX_AI: {"service_tiers": {"batch": 0.5}},
}
