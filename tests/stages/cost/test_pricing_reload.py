"""Hot reload of the pricing table, including the Kubernetes ConfigMap symlink swap."""

from __future__ import annotations

import os
import time

import pytest
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.stages.cost.pricing_table import PricingError
from processor.stages.cost.stage import CostStage
from tests.support.configmap_volume import ConfigMapVolume
from tests.support.cost_helpers import SMALL_TABLE, process
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import OtlpSink
from tests.support.sidecar_runner import RunningSidecar

GPT4O_SPAN = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1_000_000}


def table_text(version: str, price: float) -> str:
    return SMALL_TABLE.format(version=version, gpt4o_input=price)


def cost_of(stage: CostStage) -> float:
    _, (written,) = process(stage, [GPT4O_SPAN])
    return written["genops.cost.total"]


@pytest.mark.parametrize("watch", ["file", "directory"])
def test_configmap_swap_is_picked_up_and_a_broken_table_keeps_the_old_prices(tmp_path, watch):
    volume = ConfigMapVolume(tmp_path)
    volume.publish({"pricing.yaml": table_text("v1", 2.5)})
    path = tmp_path / "pricing.yaml" if watch == "file" else tmp_path
    registry = CollectorRegistry()
    stage = CostStage(CostConfig(pricing_file=str(path), reload_interval_seconds=0), registry)
    watcher = stage.watcher
    assert cost_of(stage) == pytest.approx(2.5)
    assert registry.get_sample_value("genops_pricing_table_info", {"version": "v1", "models": "1"}) == 1

    volume.publish({"pricing.yaml": table_text("v2", 2.0)})
    assert watcher.check() is True
    assert cost_of(stage) == pytest.approx(2.0)
    assert registry.get_sample_value("genops_pricing_table_info", {"version": "v2", "models": "1"}) == 1
    assert registry.get_sample_value("genops_pricing_table_info", {"version": "v1", "models": "1"}) is None

    volume.publish({"pricing.yaml": "version: v3\nmodels: [{model: gpt-4o}]\n"})
    assert watcher.check() is False
    assert cost_of(stage) == pytest.approx(2.0)
    assert registry.get_sample_value("genops_pricing_reload_success") == 0
    assert registry.get_sample_value("genops_pricing_reload_total", {"outcome": "invalid"}) == 1
    assert watcher.check() is None  # the same broken contents are not parsed again

    volume.publish({"pricing.yaml": table_text("v4", 1.0)})
    assert watcher.check() is True
    assert cost_of(stage) == pytest.approx(1.0)
    assert registry.get_sample_value("genops_pricing_reload_success") == 1
    assert registry.get_sample_value("genops_pricing_reload_total", {"outcome": "success"}) == 2


def test_touching_a_file_without_changing_it_does_not_reload(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(table_text("v1", 2.5))
    registry = CollectorRegistry()
    stage = CostStage(CostConfig(pricing_file=str(path), reload_interval_seconds=0), registry)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert stage.watcher.check() is None
    assert registry.get_sample_value("genops_pricing_reload_total", {"outcome": "success"}) is None


def test_a_broken_table_at_startup_is_an_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nmodels: [{provider: openai, model: gpt-4o, input: free}]\n")
    with pytest.raises(PricingError, match="must be a number"):
        CostStage(CostConfig(pricing_file=str(path)), CollectorRegistry())


def test_running_sidecar_keeps_serving_old_prices_through_a_broken_reload(tmp_path):
    volume = ConfigMapVolume(tmp_path)
    volume.publish({"pricing.yaml": table_text("v1", 2.5)})
    registry = CollectorRegistry()
    stage = CostStage(CostConfig(pricing_file=str(tmp_path), reload_interval_seconds=0.05), registry)
    sink = OtlpSink().start()
    sidecar = RunningSidecar(sink.endpoint, stages=[stage]).start()
    try:

        def send_and_read() -> dict:
            with sidecar.channel() as channel:
                export_traces(channel, trace_request([span(attributes=GPT4O_SPAN)]))
            return sink.spans()[-1].attributes

        assert send_and_read()["genops.cost.total"] == pytest.approx(2.5)
        volume.publish({"pricing.yaml": "not: [valid"})
        wait_for(lambda: registry.get_sample_value("genops_pricing_reload_total", {"outcome": "invalid"}) == 1)
        received = send_and_read()
        assert received["genops.cost.total"] == pytest.approx(2.5)
        assert received["genops.cost.pricing_version"] == "v1"
        volume.publish({"pricing.yaml": table_text("v2", 5.0)})
        wait_for(lambda: registry.get_sample_value("genops_pricing_reload_success") == 1)
        received = send_and_read()
        assert received["genops.cost.total"] == pytest.approx(5.0)
        assert received["genops.cost.pricing_version"] == "v2"
    finally:
        sidecar.stop()
        sink.stop()
        stage.close()


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)
