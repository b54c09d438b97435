"""Shared helpers for the cost tests: run a stage over OTLP spans, write small pricing tables."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from processor.core.contract import BatchChanges
from processor.core.decode import decode_traces
from tests.support.otlp_builders import span, trace_request


def start_ns(day: str) -> int:
    return (dt.date.fromisoformat(day) - dt.date(1970, 1, 1)).days * 86_400 * 10**9 + 3_600 * 10**9


def process(stage, attribute_sets: list[dict[str, object]], day: str = "2025-10-09") -> tuple[BatchChanges, list[dict]]:
    """Runs `stage` on one batch of spans; returns the changes and, per span, the attributes it would write."""
    request = trace_request([span(attributes=a, start_time_unix_nano=start_ns(day)) for a in attribute_sets])
    batch = decode_traces(request.SerializeToString(), stage.wanted_keys())
    changes = stage.process(batch)
    written = [
        {key: column[i] for key, column in changes.set_attributes.items() if column[i] is not None}
        for i in range(len(attribute_sets))
    ]
    return changes, written


SMALL_TABLE = """\
version: "{version}"
provider: openai
source: https://openai.com/api/pricing/
as_of: 2025-11-20
models:
  - {{model: gpt-4o, input: {gpt4o_input}, output: 10, cache_read: 1.25}}
"""


def write_small_table(path: Path, version: str = "v1", gpt4o_input: float = 2.5) -> Path:
    path.write_text(SMALL_TABLE.format(version=version, gpt4o_input=gpt4o_input))
    return path


def valid_table(version: str = "v1", price: float = 2.5) -> str:
    """SMALL_TABLE with its version and gpt-4o input price set."""
    return SMALL_TABLE.format(version=version, gpt4o_input=price)
