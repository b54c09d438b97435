"""A pricing table with cache prices (one model with a long-context tier, one with free cache
reads) and GenAI spans of it, for the cache savings and unread-write tests."""

from __future__ import annotations

from tests.support.clock import NOON_NS
from tests.support.otlp_builders import span

TABLE = """\
version: "cache-test"
provider: anthropic
source: https://www.anthropic.com/pricing
as_of: 2026-11-20
service_tiers: {batch: 0.5}
models:
  - model: claude-x
    input: 3
    output: 15
    cache_read: 0.3
    cache_write: 3.75
    tiers:
      - above_input_tokens: 200000
        input: 6
        output: 22.5
        cache_read: 0.6
        cache_write: 7.5
  - model: free-cache
    input: 2
    output: 8
    cache_read: 0
"""


def call(team: str, model: str, tokens_in: int, cache_read: int = 0, cache_write: int = 0, at: int = 0, **extra):
    attributes = {
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": tokens_in,
        "gen_ai.usage.output_tokens": 0,
        "genops.team": team,
        **({"gen_ai.usage.cache_read.input_tokens": cache_read} if cache_read else {}),
        **({"gen_ai.usage.cache_write.input_tokens": cache_write} if cache_write else {}),
        **extra,
    }
    return span(attributes=attributes, start_time_unix_nano=NOON_NS + at * 10**9)
