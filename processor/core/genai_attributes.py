"""Model, provider and token counts of GenAI spans, whichever convention the instrumentation used.

`normalize(frame)` turns the raw attribute columns of a batch into canonical columns, one row per
span, same order. For each canonical column the first non-null source in the table wins (a
source missing from the frame counts as null; numbers sent as strings are cast).

| column             | sources, first non-null wins                                                |
|--------------------|-----------------------------------------------------------------------------|
| genai_model        | gen_ai.response.model, llm.response.model_name (OpenInference),             |
|                    | llm.model_name (OpenInference), genops.model, gen_ai.request.model,         |
|                    | llm.request.model, llm.response.model                                       |
| genai_provider     | gen_ai.provider.name, genops.provider, llm.provider (OpenInference),        |
|                    | gen_ai.system (deprecated), llm.system (OpenInference)                      |
| tokens_input       | gen_ai.usage.input_tokens, gen_ai.usage.prompt_tokens (deprecated semconv,  |
|                    | OpenLLMetry), llm.usage.prompt_tokens, llm.token_count.prompt,              |
|                    | genops.tokens.input                                                         |
| tokens_output      | gen_ai.usage.output_tokens, gen_ai.usage.completion_tokens,                 |
|                    | llm.usage.completion_tokens, llm.token_count.completion,                    |
|                    | genops.tokens.output                                                        |
| tokens_cache_read  | gen_ai.usage.cache_read.input_tokens, gen_ai.usage.cache_read_input_tokens, |
|                    | gen_ai.usage.input_tokens.cached, llm.usage.cache_read_input_tokens,        |
|                    | llm.token_count.prompt_details.cache_read, genops.tokens.cache_read         |
| tokens_cache_write | gen_ai.usage.cache_write.input_tokens (semconv since the rename),           |
|                    | gen_ai.usage.cache_creation.input_tokens (its name before),                 |
|                    | gen_ai.usage.cache_creation_input_tokens,                                   |
|                    | gen_ai.usage.input_tokens.cache_write,                                      |
|                    | llm.usage.cache_creation_input_tokens,                                      |
|                    | llm.token_count.prompt_details.cache_write, genops.tokens.cache_write       |
| tokens_reasoning   | gen_ai.usage.reasoning.output_tokens, gen_ai.usage.reasoning_tokens,        |
|                    | gen_ai.usage.output_tokens.reasoning, llm.usage.reasoning_tokens,           |
|                    | llm.token_count.completion_details.reasoning, genops.tokens.reasoning       |

The response model wins over the request model: a request for `gpt-4o` is served (and billed)
as `gpt-4o-2024-08-06`. The provider is the one that bills the call, so the hosting provider
(`gen_ai.provider.name`, OpenInference `llm.provider`) comes before the model vendor
(`gen_ai.system` was often the vendor, OpenInference `llm.system` always is).

Token meaning of the canonical columns (the OTel GenAI semconv rule):
- `tokens_input` is every input token, *including* cache reads and cache writes. The semconv
  says the cache counts SHOULD be included in `gen_ai.usage.input_tokens`; OpenInference's
  `llm.token_count.prompt` and OpenAI/Gemini's prompt counts include them too. Anthropic's raw
  API `input_tokens` does not, and some hand-written instrumentations copy it as is: when the
  reported input is smaller than cache read + cache write it cannot be inclusive, so the cache
  counts are added to it.
- `tokens_output` is every output token, *including* reasoning tokens (semconv SHOULD; OpenAI
  counts reasoning within completion tokens). When reported output is smaller than reasoning
  (Gemini's candidates count excludes thoughts) the reasoning count is added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import polars as pl

from processor.core.decode import TelemetryBatch, WantedKeys

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

MODEL = "genai_model"
PROVIDER = "genai_provider"
TOKENS_INPUT = "tokens_input"
TOKENS_OUTPUT = "tokens_output"
TOKENS_CACHE_READ = "tokens_cache_read"
TOKENS_CACHE_WRITE = "tokens_cache_write"
TOKENS_REASONING = "tokens_reasoning"
TOKEN_COLUMNS = (TOKENS_INPUT, TOKENS_OUTPUT, TOKENS_CACHE_READ, TOKENS_CACHE_WRITE, TOKENS_REASONING)
COLUMNS = (MODEL, PROVIDER, *TOKEN_COLUMNS)

# The GenOps spelling of model and provider: also the key what the sidecar makes of a span's model
# or provider (a metric label) is redacted as.
GENOPS_MODEL = "genops.model"
GENOPS_PROVIDER = "genops.provider"
MODEL_SOURCES = (
    "gen_ai.response.model",
    "llm.response.model_name",
    "llm.model_name",
    GENOPS_MODEL,
    "gen_ai.request.model",
    "llm.request.model",
    "llm.response.model",
)
PROVIDER_SOURCES = (
    "gen_ai.provider.name",
    GENOPS_PROVIDER,
    "llm.provider",
    "gen_ai.system",
    "llm.system",
)
TOKEN_SOURCES: dict[str, tuple[str, ...]] = {
    TOKENS_INPUT: (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "llm.usage.prompt_tokens",
        "llm.token_count.prompt",
        "genops.tokens.input",
    ),
    TOKENS_OUTPUT: (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.usage.completion_tokens",
        "llm.token_count.completion",
        "genops.tokens.output",
    ),
    TOKENS_CACHE_READ: (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.usage.input_tokens.cached",
        "llm.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
        "genops.tokens.cache_read",
    ),
    TOKENS_CACHE_WRITE: (
        "gen_ai.usage.cache_write.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "gen_ai.usage.input_tokens.cache_write",
        "llm.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
        "genops.tokens.cache_write",
    ),
    TOKENS_REASONING: (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "gen_ai.usage.output_tokens.reasoning",
        "llm.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
        "genops.tokens.reasoning",
    ),
}

GENAI_KEYS = WantedKeys(
    item=frozenset((*MODEL_SOURCES, *PROVIDER_SOURCES, *(k for keys in TOKEN_SOURCES.values() for k in keys)))
)

# Provider spellings seen in the wild → one canonical name per billing party. Keys are lowercase.
PROVIDER_ALIASES: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    # Google bills the Gemini API (ai.google.dev) and Vertex AI (cloud.google.com) from price
    # lists of their own (gemini-2.0-flash: $0.10/$0.40 there, $0.15/$0.60 on Vertex): two parties.
    # `gcp.gen_ai` ("any Google GenAI endpoint") cannot tell; it gets the Gemini API's prices.
    "google": "google",
    "gemini": "google",
    "gcp.gemini": "google",
    "gcp.gen_ai": "google",
    "google_genai": "google",
    "google.vertex_ai": "google.vertex_ai",
    "vertexai": "google.vertex_ai",
    "vertex_ai": "google.vertex_ai",
    "vertex": "google.vertex_ai",
    "gcp.vertex_ai": "google.vertex_ai",
    "aws.bedrock": "aws.bedrock",
    "aws_bedrock": "aws.bedrock",
    "bedrock": "aws.bedrock",
    "aws": "aws.bedrock",
    "azure.openai": "azure.openai",
    "azure.ai.openai": "azure.openai",
    "az.ai.openai": "azure.openai",
    "azure_openai": "azure.openai",
    "azure": "azure.openai",
    "azure.ai.inference": "azure.ai.inference",
    "az.ai.inference": "azure.ai.inference",
    "mistral": "mistral",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "xai": "xai",
    "x_ai": "xai",
    "x.ai": "xai",
    "grok": "xai",
    "meta": "meta",
    "groq": "groq",
    "together": "together",
    "together_ai": "together",
    "togetherai": "together",
    "fireworks": "fireworks",
    "fireworks_ai": "fireworks",
    "perplexity": "perplexity",
    "ibm.watsonx.ai": "ibm.watsonx.ai",
    "watsonx": "ibm.watsonx.ai",
}


_ALIAS_FROM = pl.Series(list(PROVIDER_ALIASES), dtype=pl.String)
_ALIAS_TO = pl.Series(list(PROVIDER_ALIASES.values()), dtype=pl.String)


def normalize_provider_expr(expr: pl.Expr) -> pl.Expr:
    """Lowercased, trimmed, aliases mapped; unknown names pass through lowercased."""
    lowered = expr.cast(pl.String, strict=False).str.strip_chars().str.to_lowercase()
    mapped = lowered.replace_strict(_ALIAS_FROM, _ALIAS_TO, default=lowered, return_dtype=pl.String)
    return pl.when(lowered == "").then(None).otherwise(mapped)


def normalize_provider(name: str | None) -> str | None:
    if name is None:
        return None
    lowered = name.strip().lower()
    return PROVIDER_ALIASES.get(lowered, lowered) or None


def _usable(source_type: PolarsDataType, dtype: PolarsDataType) -> bool:
    # bytes, booleans, or a number where a name belongs: not something we can use.
    if dtype == pl.String:
        return source_type == pl.String
    return source_type == pl.String or source_type.is_numeric()


def _steps(schema: pl.Schema) -> tuple[list[list[pl.Expr]], list[pl.Expr]]:
    """What normalize computes, as lists of expressions evaluated one after the other, each reading
    the columns the one before wrote (polars' cost per batch grows with how deeply expressions
    nest much faster than with how many there are), and the final selection of COLUMNS."""
    read: list[pl.Expr] = []
    names: dict[str, list[str]] = {}
    for column, keys, dtype in (
        (MODEL, MODEL_SOURCES, pl.String),
        (PROVIDER, PROVIDER_SOURCES, pl.String),
        *((column, keys, pl.Int64) for column, keys in TOKEN_SOURCES.items()),
    ):
        # Most of the ~40 source columns are all-null (Null dtype) in any one batch: leaving them
        # out keeps the query small, which is most of normalize's cost on small batches.
        names[column] = []
        for key in keys:
            source_type = schema.get(key, pl.Null)
            if source_type == pl.Null or not _usable(source_type, dtype):
                continue
            name = f"_genai_source_{len(read)}"
            if source_type == pl.String:
                value = pl.col(key).str.strip_chars()
                if dtype == pl.Int64:
                    # "1200" and "1200.0" both occur; go through Float64 so neither is lost.
                    value = value.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)
            else:
                value = pl.col(key).cast(pl.Int64, strict=False)
            read.append(value.alias(name))
            names[column].append(name)

    def first(column: str, dtype: PolarsDataType) -> pl.Expr:
        # Names are stripped, and a blank one counts as absent.
        found = [pl.col(n) if dtype == pl.Int64 else pl.when(pl.col(n) != "").then(pl.col(n)) for n in names[column]]
        if not found:
            return pl.lit(None, dtype=dtype)
        return found[0] if len(found) == 1 else pl.coalesce(found)

    def count(column: str) -> pl.Expr:
        # Negative counts are absent. A repeated single source costs less than a step of its own.
        value = first(column, pl.Int64)
        return pl.when(value >= 0).then(value).alias(column)

    coalesced = [
        first(MODEL, pl.String).alias(MODEL),
        first(PROVIDER, pl.String).str.to_lowercase().alias(PROVIDER),
        *(count(column) for column in TOKEN_COLUMNS),
    ]
    # Aliases by binary search in the sorted alias names: a replace builds a hash table per batch.
    provider = pl.col(PROVIDER)
    at = pl.lit(_ALIAS_FROM_SORTED).search_sorted(provider).clip(upper_bound=_ALIAS_FROM_SORTED.len() - 1)
    mapped = (
        pl.when(pl.lit(_ALIAS_FROM_SORTED).gather(at) == provider)
        .then(pl.lit(_ALIAS_TO_SORTED).gather(at))
        .otherwise(provider)
        .alias(PROVIDER)
    )
    inclusive_input, inclusive_output = _inclusive_counts()
    last = [pl.col(MODEL), mapped, inclusive_input, inclusive_output, *map(pl.col, TOKEN_COLUMNS[2:])]
    return [step for step in (read, coalesced) if step], last


def _inclusive_counts() -> list[pl.Expr]:
    cached = pl.col(TOKENS_CACHE_READ).fill_null(0) + pl.col(TOKENS_CACHE_WRITE).fill_null(0)
    reasoning = pl.col(TOKENS_REASONING).fill_null(0)
    return [
        pl.when(pl.col(TOKENS_INPUT) < cached)
        .then(pl.col(TOKENS_INPUT) + cached)
        .otherwise(pl.col(TOKENS_INPUT))
        .alias(TOKENS_INPUT),
        pl.when(pl.col(TOKENS_OUTPUT) < reasoning)
        .then(pl.col(TOKENS_OUTPUT) + reasoning)
        .otherwise(pl.col(TOKENS_OUTPUT))
        .alias(TOKENS_OUTPUT),
    ]


_ALIAS_FROM_SORTED = pl.Series(sorted(k for k, v in PROVIDER_ALIASES.items() if k != v), dtype=pl.String).sort()
_ALIAS_TO_SORTED = pl.Series([PROVIDER_ALIASES[k] for k in _ALIAS_FROM_SORTED.to_list()], dtype=pl.String)
# Batches of one sidecar repeat a handful of column layouts: building the ~40-source expressions
# costs more than running them, so they are built once per layout. The key is the column names
# and dtype classes (what _steps decides on), cheap to get and hash.
_PLAN_CACHE: dict[tuple[tuple[str, ...], tuple[type, ...]], tuple[list[list[pl.Expr]], list[pl.Expr]]] = {}
_PLAN_CACHE_SIZE = 256
# How the per-batch queries are collected. On batch-sized frames polars' fixed costs dominate: the
# default engine adds ~0.1-0.3 ms per query over the in-memory one, and the optimizer ~1 ms on the
# cost stage's query, which is written step by step with nothing for it to remove.
ENGINE: Final = "in-memory"
OPTIMIZATIONS = pl.QueryOptFlags.none()


def collect(query: pl.LazyFrame) -> pl.DataFrame:
    return query.collect(engine=ENGINE, optimizations=OPTIMIZATIONS)


def _steps_for(frame: pl.DataFrame) -> tuple[list[list[pl.Expr]], list[pl.Expr]]:
    layout = (tuple(frame.columns), tuple(map(type, frame.dtypes)))
    steps = _PLAN_CACHE.get(layout)
    if steps is None:
        if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
            _PLAN_CACHE.clear()
        steps = _PLAN_CACHE[layout] = _steps(frame.schema)
    return steps


def normalize_lazy(frame: pl.DataFrame, extra: list[pl.Expr] | None = None) -> pl.LazyFrame:
    """normalize(frame) as a query, so a stage can extend it and collect once. `extra` expressions
    add columns after the canonical ones; they see the frame's columns and the canonical ones as
    first found (token counts before input and output are made to include cache and reasoning)."""
    # with_columns, not select: a frame with none of the sources would otherwise shrink to one row
    # (the final select reads columns the steps wrote, so it keeps every row).
    steps, last = _steps_for(frame)
    query = frame.lazy()
    for step in steps:
        query = query.with_columns(step)
    return query.select(*last, *(extra or ()))


def normalize(frame: pl.DataFrame) -> pl.DataFrame:
    """Canonical GenAI columns for every row of `frame` (same row count and order).

    Columns: genai_model, genai_provider (String); tokens_input, tokens_output, tokens_cache_read,
    tokens_cache_write, tokens_reasoning (Int64; null when the span did not report them;
    negative counts are treated as absent).
    """
    return collect(normalize_lazy(frame))


def normalized(batch: TelemetryBatch) -> pl.DataFrame:
    """normalize(batch.frame), computed once per batch and shared by the stages that need it.

    Safe to share: no stage writes the attributes it reads (stages write genops.cost.* and the
    like, and redaction never touches token counts or model names)."""
    cached = batch.derived.get("genai")
    if cached is None:
        cached = batch.derived["genai"] = normalize(batch.frame)
    return cached  # type: ignore[return-value]


# OTel GenAI evaluation results (event `gen_ai.evaluation.result`, a log record or a span event,
# parented to the GenAI operation it evaluates).
EVALUATION_RESULT_EVENT = "gen_ai.evaluation.result"
EVALUATION_NAME = "gen_ai.evaluation.name"
EVALUATION_SCORE_VALUE = "gen_ai.evaluation.score.value"
