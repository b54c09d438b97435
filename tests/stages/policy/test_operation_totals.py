"""The per-operation metrics read the same in /metrics wherever their totals are kept
(processor/stages/policy/operation_totals.py): in the native store or in prometheus_client's own values, added
to by the native policy path or the polars one, in one process or in multiprocess mode.

The exposition is compared as text, byte for byte, leaving out the `_created` lines (when a
series was created differs between registries by construction).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from processor.core.decode import decode_traces, native_available
from processor.stages.policy import metrics as governance_metrics
from processor.stages.policy.operation_totals import HolderTotals, NativeTotals
from tests.support.operation_traffic import operation_requests, operation_stage
from tests.support.otlp_builders import span, trace_request

pytestmark = pytest.mark.skipif(not native_available(), reason="native extension not built")

MAX_SERIES = governance_metrics.MAX_SERIES
OPERATION_FAMILIES = (
    "genops_cost_total_usd",
    "genops_tokens_input",
    "genops_tokens_output",
    "genops_tokens",
    "genops_operations",
    "genops_operation_errors",
    "genops_operation_latency_seconds",
)
POLICY = json.dumps(
    {
        "budgets": [{"name": "daily", "limit_usd": 40.0, "period": "daily", "mode": "advisory"}],
        "policies": [{"name": "cheap", "type": "max_cost_per_operation", "max_usd": 0.5, "mode": "audit_only"}],
    }
)


def run(stage, native: bool, monkeypatch, raws: list[bytes]) -> None:
    for raw in raws:
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
        batch = decode_traces(raw, stage.wanted_keys())
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1" if native else "0")
        stage.process(batch)
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
    stage.close()


def exposition(registry: CollectorRegistry) -> str:
    lines = generate_latest(registry).decode().splitlines(keepends=True)
    return "".join(line for line in lines if "_created" not in line.split(" ", 1)[0].split("{", 1)[0])


def by_family(text: str) -> dict[str, list[str]]:
    """Per metric family (in exposition order): its HELP and TYPE lines, then its sample lines sorted."""
    families: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = families.setdefault(line.split(" ")[2], [])
        current.append(line)
    return {name: lines[:2] + sorted(lines[2:]) for name, lines in families.items()}


@pytest.mark.parametrize("max_series", [MAX_SERIES, 25])
def test_each_store_and_path_exposes_the_same_text(tmp_path, monkeypatch, max_series):
    # 25: past that many label combinations new ones fold into the "other" series.
    monkeypatch.setattr(governance_metrics, "MAX_SERIES", max_series)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    raws = operation_requests()
    texts = {}
    for store in ("native", "holders"):
        for native_path in (True, False):
            monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1" if store == "native" else "0")
            stage, registry = operation_stage(path)
            expected = NativeTotals if store == "native" else HolderTotals
            assert isinstance(stage.metrics._totals, expected)
            run(stage, native_path, monkeypatch, raws)
            texts[store, native_path] = exposition(registry)
    # The native store against prometheus_client's own values: the same text, series in the same order.
    assert texts["native", True] == texts["holders", True]
    # The polars path creates series in polars' group order (which varies from run to run): the
    # same lines, maybe listed otherwise. (Past MAX_SERIES that order also decides which label
    # combinations got a series of their own before the rest were folded.)
    if max_series == MAX_SERIES:
        for text in (texts["native", False], texts["holders", False]):
            assert by_family(text) == by_family(texts["native", True])
    assert set(OPERATION_FAMILIES) <= {family.name for family in text_string_to_metric_families(texts["native", True])}
    if max_series == 25:
        assert (
            'genops_operations_total{model="other",project="other",provider="other",team="other"}'
            in (texts["native", True])
        )


def test_series_values_read_the_native_store_through_prometheus_client(tmp_path, monkeypatch):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    stage, registry = operation_stage(path, labels="team", max_values=100)
    assert isinstance(stage.metrics._totals, NativeTotals)
    batch = decode_traces(
        trace_request(
            [
                span(attributes={"gen_ai.request.model": "gpt-4o", "genops.team": "ml", "genops.cost.total": 0.25}),
                span(attributes={"gen_ai.request.model": "gpt-4o", "genops.team": "ml", "genops.cost.total": 0.5}),
            ]
        ).SerializeToString(),
        stage.wanted_keys(),
    )
    stage.process(batch)
    # A change through the metric's own API lands in the same total.
    stage.metrics.operations.labels("ml").inc(3)
    assert registry.get_sample_value("genops_operations_total", {"team": "ml"}) == 5
    assert registry.get_sample_value("genops_cost_total_usd", {"team": "ml"}) == 0.75
    # Both spans took 1.5 ms: the first bucket, counted in every bucket above it.
    assert registry.get_sample_value("genops_operation_latency_seconds_bucket", {"team": "ml", "le": "0.1"}) == 2
    assert registry.get_sample_value("genops_operation_latency_seconds_bucket", {"team": "ml", "le": "+Inf"}) == 2
    assert registry.get_sample_value("genops_operation_latency_seconds_count", {"team": "ml"}) == 2
    assert registry.get_sample_value("genops_operation_latency_seconds_sum", {"team": "ml"}) == 0.003
    stage.close()


_MULTIPROCESS_RUN = """
import sys, time
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from processor.stages.policy import operation_totals
from processor.core.decode import decode_traces
from tests.support.operation_traffic import operation_requests, operation_stage

operation_totals.FLUSH_SECONDS = float(sys.argv[3])
stage, _ = operation_stage(sys.argv[1])
for raw in operation_requests():
    stage.process(decode_traces(raw, stage.wanted_keys()))
if sys.argv[2] == "close":
    stage.close()
else:
    # A worker that has gone idle: what it added reaches the files without another batch.
    time.sleep(float(sys.argv[3]) * 4)
merged = CollectorRegistry()
MultiProcessCollector(merged)
sys.stdout.write(generate_latest(merged).decode())
"""


def operation_samples(text: str) -> dict[tuple, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name in OPERATION_FAMILIES
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@pytest.mark.parametrize(
    ("ending", "flush_seconds"),
    [("close", 3600.0), ("idle", 0.05)],
    ids=["written-when-the-stage-closes", "written-within-the-flush-interval"],
)
def test_multiprocess_mode_adds_up_to_the_same_values(tmp_path, monkeypatch, ending, flush_seconds):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    stage, registry = operation_stage(path)
    run(stage, True, monkeypatch, operation_requests())
    metrics_dir = tmp_path / "multiprocess"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "GENOPS_NATIVE_DECODE": "1"}
    merged = subprocess.run(
        [sys.executable, "-c", _MULTIPROCESS_RUN, str(path), ending, str(flush_seconds)],
        env=env,
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    single = operation_samples(exposition(registry))
    assert len(single) > 100
    assert operation_samples(merged) == single


def test_the_native_store_hands_over_each_changed_value_once():
    from processor.core.decode import native_module

    totals = native_module().OperationTotals(1)
    first, second = totals.new_series(), totals.new_series()
    assert totals.changes() == []
    totals.add(second, 0.25, 10, 5, 15, 1, 0, [(2, 1)], 0.2)
    totals.add(second, 0.25, 10, 5, 15, 1, 0, None, 0.0)
    # Slots: cost, tokens in, tokens out, tokens, operations, (errors unchanged), latency sum, buckets.
    assert totals.changes() == [
        (second, 0, 0.5),
        (second, 1, 20.0),
        (second, 2, 10.0),
        (second, 3, 30.0),
        (second, 4, 2.0),
        (second, 6, 0.2),
        (second, 9, 1.0),
    ]
    assert totals.changes() == []
    totals.add(first, 0.0, 0, 0, 0, 1, 1, None, 0.0)
    totals.add(second, 0.125, 0, 0, 0, 0, 0, None, 0.0)
    assert totals.changes() == [(first, 4, 1.0), (first, 5, 1.0), (second, 0, 0.625)]
