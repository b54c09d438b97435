"""The cost stage against its polars oracle (tests/oracle/cost.py): stage pairs, one request run
through both, and Series compared bit for bit."""

from __future__ import annotations

import polars as pl
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.core import genai_attributes as ga
from processor.core.decode import decode_traces
from processor.stages.cost.stage import CostStage
from tests.oracle.cost import OracleCostStage
from tests.support.native_switch import native
from tests.support.otlp_builders import span, trace_request


def stage_pair(path: str, override: bool) -> tuple[tuple[CostStage, CollectorRegistry], ...]:
    made = []
    for stage in (CostStage, OracleCostStage):
        registry = CollectorRegistry()
        config = CostConfig(pricing_file=path, override_sdk_costs=override, reload_interval_seconds=0)
        made.append((stage(config, registry, watch=False), registry))
    return tuple(made)


def metric_samples(registry: CollectorRegistry) -> dict:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        if metric.name in ("genops_cost_priced_spans", "genops_cost_unpriced_spans", "genops_cost_estimated_spans")
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def assert_same_bits(native_series: pl.Series, polars_series: pl.Series) -> None:
    assert native_series.name == polars_series.name
    assert native_series.dtype == polars_series.dtype, native_series.name
    assert native_series.is_null().to_list() == polars_series.is_null().to_list(), native_series.name
    if native_series.dtype == pl.Float64:
        # Bits, not just values: 0.1 + 0.2 summed in another order would differ here.
        bits = [[None if v is None else v.hex() for v in s.to_list()] for s in (native_series, polars_series)]
        assert bits[0] == bits[1], native_series.name
    else:
        assert native_series.to_list() == polars_series.to_list(), native_series.name


def run_both(stages_for, drawn, shared_genai: bool, split: int = 0):
    request = trace_request([span(attributes=a, start_time_unix_nano=s) for a, s in drawn]).SerializeToString()
    (native_stage, native_registry), (polars_stage, polars_registry) = stages_for
    results = []
    for stage, registry, enabled in (
        (native_stage, native_registry, True),
        (polars_stage, polars_registry, False),
    ):
        batch = decode_traces(request, stage.wanted_keys())
        if split:  # columns in two chunks, as a frame built up by concatenation holds them
            frame = batch.frame
            batch.frame = pl.concat([frame.slice(0, split), frame.slice(split)], rechunk=False)
        if shared_genai:  # another stage normalised first: the cost stage prices from its columns
            batch.derived["genai"] = ga.normalize(batch.frame)
        with native(enabled):
            changes = stage.process(batch)
        results.append((changes, batch.derived["genai"], metric_samples(registry)))
    return results
