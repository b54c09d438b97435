"""rotel (the Rust OTel collector shipped in the `rotel` wheel) can stand in for the Collector in front of
the sidecar: app -> rotel -> sidecar -> backend sink, with nothing lost on the way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.collector_harness import running_rotel, running_sidecar
from tests.support.otel_traffic import send_spans_with_sdk, wait_for_span_ids
from tests.support.otlp_sink import OtlpSink

pytest.importorskip("rotel", reason="the rotel wheel (test extra) is not installed")

N_SPANS = 200
DELIVERY_TIMEOUT_S = 60.0


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    sink = OtlpSink().start()
    yield sink
    sink.stop()


def test_every_span_an_app_sends_through_rotel_reaches_the_backend_via_the_sidecar(sink: OtlpSink, tmp_path: Path):
    with (
        running_sidecar(downstream_endpoint=sink.endpoint) as sidecar,
        running_rotel(exporter_endpoint=sidecar.listen_endpoint, workdir=tmp_path) as rotel,
    ):
        sent = send_spans_with_sdk(rotel.grpc_endpoint, N_SPANS, service_name="e2e-rotel-app")
        received = wait_for_span_ids(sink, set(sent), DELIVERY_TIMEOUT_S)
        assert sorted(set(sent) - set(received)) == []
        names = {r.span.span_id.hex(): r.span.name for r in sink.spans()}
        assert {span_id: names[span_id] for span_id in sent} == sent
        assert {r.resource_attributes.get("service.name") for r in sink.spans()} == {"e2e-rotel-app"}
        assert sidecar.metric_value("genops_sidecar_items_total", signal="traces") >= N_SPANS
