"""What later stages see of earlier stages' values, through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
import pytest

from processor.core.contract import BatchChanges
from processor.core.decode import TRACES, TelemetryBatch, WantedKeys
from processor.core.pipeline import Pipeline
from processor.observability import SidecarMetrics
from tests.support.otlp_builders import span, trace_request


@dataclass
class Setting:
    """Sets fixed columns."""

    columns: dict[str, list]
    wanted: WantedKeys = field(default_factory=WantedKeys)
    name: str = "setting"
    signals: frozenset[str] = frozenset({TRACES})

    def wanted_keys(self) -> WantedKeys:
        return self.wanted

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        return BatchChanges(set_attributes={key: pl.Series(values) for key, values in self.columns.items()})


@dataclass
class Watching:
    """Records the frame it was given."""

    wanted: WantedKeys
    seen: list[pl.DataFrame] = field(default_factory=list)
    name: str = "watching"
    signals: frozenset[str] = frozenset({TRACES})

    def wanted_keys(self) -> WantedKeys:
        return self.wanted

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        self.seen.append(batch.frame)
        return BatchChanges()


@pytest.mark.parametrize("native", ["1", "0"])
def test_later_stages_see_earlier_values_over_what_arrived(monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    request = trace_request(
        [
            span(attributes={"genops.cost.total": "0.5", "a": 1}),
            span(attributes={"a": 2}),
            span(attributes={"genops.cost.total": "oops"}),
        ]
    )
    first = Setting(
        {
            # Arrived as strings on two spans: the stage's floats win where set, the rest is cast.
            "genops.cost.total": [None, 0.25, None],
            # Wanted, but no span has it.
            "genops.cost.model": ["m", None, "n"],
            # Nobody asked for it.
            "genops.new": [True, None, False],
        },
        WantedKeys(item=frozenset({"genops.cost.total", "genops.cost.model", "a"})),
    )
    watcher = Watching(WantedKeys(item=frozenset({"genops.cost.total"})))
    out = Pipeline([first, watcher], SidecarMetrics.create()).process_traces(request.SerializeToString())
    assert out.failed_stages == ()
    frame = watcher.seen[0]
    assert frame["genops.cost.total"].dtype == pl.Float64
    assert frame["genops.cost.total"].to_list() == [0.5, 0.25, None]
    assert frame["genops.cost.model"].to_list() == ["m", None, "n"]
    assert frame["genops.new"].to_list() == [True, None, False]
    assert frame["a"].to_list() == [1, 2, None]
    assert frame.columns[-1] == "genops.new"


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_value_that_cannot_be_read_as_the_stage_type_does_not_cost_the_batch_its_changes(monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    # An SDK sent its cost as bytes: no cast to a number exists.
    request = trace_request([span(attributes={"genops.cost.total": b"\x01"}), span(attributes={})])
    first = Setting({"genops.cost.total": [None, 0.25]}, WantedKeys(item=frozenset({"genops.cost.total"})))
    second = Setting({"genops.later": ["x", "y"]}, name="later")
    watcher = Watching(WantedKeys(item=frozenset({"genops.cost.total"})))
    out = Pipeline([first, second, watcher], SidecarMetrics.create()).process_traces(request.SerializeToString())
    assert out.failed_stages == ()
    assert watcher.seen[0]["genops.cost.total"].to_list() == [None, 0.25]
    assert watcher.seen[0]["genops.later"].to_list() == ["x", "y"]


@dataclass
class Preparing(Watching):
    """Records what it saw when preparing; its preparation fails when told to."""

    fail: bool = False
    prepared: list[pl.DataFrame] = field(default_factory=list)
    name: str = "preparing"

    def prepare(self, batch: TelemetryBatch) -> None:
        if self.fail:
            raise RuntimeError("cannot prepare")
        self.prepared.append(batch.frame)


@pytest.mark.parametrize("fail", [False, True])
def test_stages_after_redaction_prepare_on_what_came_before_it_and_run_in_their_turn(monkeypatch, fail):
    from prometheus_client import CollectorRegistry

    from processor.stages.redaction.rules import load_rules
    from processor.stages.redaction.stage import RedactionStage

    pytest.importorskip("processor._otlp_native")
    # The overlap exists only while the native redactor's values job runs; a CI step runs the suite
    # with GENOPS_NATIVE_DECODE=0, where the test below covers the serial path.
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
    request = trace_request([span(attributes={"note": "mail ada@example.com"}), span(attributes={})])
    cost = Setting({"genops.cost.total": [0.5, None]}, name="cost")
    redaction = RedactionStage(load_rules(), None, CollectorRegistry())
    later = Preparing(WantedKeys(item=frozenset({"genops.redaction.count"})), fail=fail)
    out = Pipeline([cost, redaction, later], SidecarMetrics.create()).process_traces(request.SerializeToString())
    assert out.failed_stages == ()
    # Prepared once, with the cost stage's column and without the redaction stage's; then in turn with both.
    if not fail:
        assert len(later.prepared) == 1
        assert later.prepared[0]["genops.cost.total"].to_list() == [0.5, None]
        assert later.prepared[0]["genops.redaction.count"].to_list() == [None, None]
    assert later.seen[0]["genops.redaction.count"].to_list() == [1, None]
    assert later.seen[0]["genops.cost.total"].to_list() == [0.5, None]


def test_without_the_native_path_stages_after_redaction_see_its_columns_at_their_turn(monkeypatch):
    from prometheus_client import CollectorRegistry

    from processor.stages.redaction.rules import load_rules
    from processor.stages.redaction.stage import RedactionStage

    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "0")
    request = trace_request([span(attributes={"note": "mail ada@example.com"}), span(attributes={})])
    cost = Setting({"genops.cost.total": [0.5, None]}, name="cost")
    redaction = RedactionStage(load_rules(), None, CollectorRegistry())
    later = Preparing(WantedKeys(item=frozenset({"genops.redaction.count"})))
    out = Pipeline([cost, redaction, later], SidecarMetrics.create()).process_traces(request.SerializeToString())
    assert out.failed_stages == ()
    # No values job runs on a thread, so there is nothing to overlap: no stage prepares ahead.
    assert later.prepared == []
    assert later.seen[0]["genops.redaction.count"].to_list() == [1, None]
    assert later.seen[0]["genops.cost.total"].to_list() == [0.5, None]
