"""A stand-in processing stage for transport tests: writes one attribute on every span, or fails."""

from __future__ import annotations

import polars as pl

from processor.core.contract import BatchChanges
from processor.core.decode import LOGS, TRACES, TelemetryBatch, WantedKeys


class TagStage:
    """Writes one attribute on every span; stands in for a real processing stage."""

    signals = frozenset({TRACES, LOGS})

    def __init__(self, name: str = "tag", key: str = "genops.test.tag", fail: bool = False) -> None:
        self.name = name
        self.key = key
        self.fail = fail

    def wanted_keys(self) -> WantedKeys:
        return WantedKeys(item=frozenset({"gen_ai.request.model"}))

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        if self.fail:
            raise RuntimeError("pricing table exploded")
        return BatchChanges(set_attributes={self.key: pl.Series([f"seen-{i}" for i in range(len(batch))])})
