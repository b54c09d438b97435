"""Model, provider and token counts read from every attribute convention seen in the wild."""

from __future__ import annotations

import polars as pl
import pytest

from processor.core.decode import decode_traces
from processor.core.genai_attributes import GENAI_KEYS, normalize
from tests.support.otlp_builders import span, trace_request


def normalized(*attribute_sets: dict[str, object]) -> list[dict]:
    request = trace_request([span(attributes=a) for a in attribute_sets])
    return normalize(decode_traces(request.SerializeToString(), GENAI_KEYS).frame).to_dicts()


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        pytest.param(
            {
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 300,
                "gen_ai.usage.cache_read.input_tokens": 1000,
                "gen_ai.usage.cache_creation.input_tokens": 100,
                "gen_ai.usage.reasoning.output_tokens": 120,
            },
            ("gpt-4o-2024-08-06", "openai", 1200, 300, 1000, 100, 120),
            id="otel-semconv",
        ),
        pytest.param(
            {
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-3-5-haiku",
                "gen_ai.usage.prompt_tokens": 5000,
                "gen_ai.usage.completion_tokens": 20,
                "gen_ai.usage.cache_read_input_tokens": 4000,
                "gen_ai.usage.cache_creation_input_tokens": 900,
                "gen_ai.usage.reasoning_tokens": 5,
            },
            ("claude-3-5-haiku", "anthropic", 5000, 20, 4000, 900, 5),
            id="openllmetry-and-deprecated-semconv",
        ),
        pytest.param(
            {
                "llm.provider": "mistralai",
                "llm.system": "mistralai",
                "llm.model_name": "mistral-large-2411",
                "llm.token_count.prompt": 700,
                "llm.token_count.completion": 70,
                "llm.token_count.prompt_details.cache_read": 300,
                "llm.token_count.prompt_details.cache_write": 200,
                "llm.token_count.completion_details.reasoning": 7,
            },
            ("mistral-large-2411", "mistral", 700, 70, 300, 200, 7),
            id="openinference",
        ),
        pytest.param(
            {
                "genops.provider": "Bedrock",
                "genops.model": "anthropic.claude-3-haiku-20240307-v1:0",
                "genops.tokens.input": 42,
                "genops.tokens.output": 4,
            },
            ("anthropic.claude-3-haiku-20240307-v1:0", "aws.bedrock", 42, 4, None, None, None),
            id="genops",
        ),
        pytest.param(
            {"llm.usage.prompt_tokens": 10, "llm.usage.completion_tokens": 2, "gen_ai.system": "gcp.vertex_ai"},
            (None, "google.vertex_ai", 10, 2, None, None, None),
            id="old-openllmetry-llm-usage",
        ),
    ],
)
def test_each_convention_family_is_read(attributes, expected):
    (row,) = normalized(attributes)
    assert tuple(row.values()) == expected


def test_response_model_wins_over_request_model_and_hosting_provider_over_vendor():
    (row,) = normalized(
        {
            "gen_ai.request.model": "gpt-4o",
            "llm.model_name": "gpt-4o-2024-11-20",
            "gen_ai.system": "openai",
            "gen_ai.provider.name": "azure.ai.openai",
        }
    )
    assert (row["genai_model"], row["genai_provider"]) == ("gpt-4o-2024-11-20", "azure.openai")


def test_token_counts_sent_as_strings_or_doubles_are_cast_and_garbage_is_ignored():
    rows = normalized(
        {"gen_ai.usage.input_tokens": "1500", "gen_ai.usage.output_tokens": 12.0},
        {"gen_ai.usage.input_tokens": "lots", "gen_ai.usage.output_tokens": -3},
        {"gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 1},
    )
    assert [(r["tokens_input"], r["tokens_output"]) for r in rows] == [(1500, 12), (None, None), (7, 1)]


def test_input_reported_without_its_cached_part_is_made_inclusive():
    # Anthropic's API reports input_tokens without the cache; it cannot be smaller than the cache counts.
    exclusive, inclusive = normalized(
        {
            "gen_ai.usage.input_tokens": 50,
            "gen_ai.usage.cache_read.input_tokens": 4000,
            "gen_ai.usage.cache_creation.input_tokens": 1000,
        },
        {"gen_ai.usage.input_tokens": 6000, "gen_ai.usage.cache_read.input_tokens": 4000},
    )
    assert exclusive["tokens_input"] == 5050
    assert inclusive["tokens_input"] == 6000


def test_output_reported_without_reasoning_is_made_inclusive():
    (row,) = normalized({"gen_ai.usage.output_tokens": 10, "gen_ai.usage.reasoning.output_tokens": 500})
    assert (row["tokens_output"], row["tokens_reasoning"]) == (510, 500)


def test_a_frame_without_any_genai_column_keeps_its_rows_as_nulls():
    out = normalize(pl.DataFrame({"_row": [0, 1, 2]}))
    assert out.height == 3
    assert out.null_count().row(0) == (3,) * 7


def test_cache_writes_are_read_under_the_renamed_semconv_key():
    # The GenAI conventions renamed gen_ai.usage.cache_creation.input_tokens to cache_write.
    (renamed, old, both) = normalized(
        {"gen_ai.usage.input_tokens": 5_000, "gen_ai.usage.cache_write.input_tokens": 3_000},
        {"gen_ai.usage.input_tokens": 5_000, "gen_ai.usage.cache_creation.input_tokens": 2_000},
        {
            "gen_ai.usage.input_tokens": 5_000,
            "gen_ai.usage.cache_write.input_tokens": 1_500,
            "gen_ai.usage.cache_creation.input_tokens": 1_400,
        },
    )
    assert [r["tokens_cache_write"] for r in (renamed, old, both)] == [3_000, 2_000, 1_500]


def test_openinference_response_model_name_is_the_billed_model():
    (row, alone) = normalized(
        {"llm.model_name": "gpt-4o", "llm.response.model_name": "gpt-4o-2024-11-20"},
        {"llm.response.model_name": "claude-haiku-4-5-20251001"},
    )
    assert (row["genai_model"], alone["genai_model"]) == ("gpt-4o-2024-11-20", "claude-haiku-4-5-20251001")
