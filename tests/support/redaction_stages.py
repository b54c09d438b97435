"""Redaction stages built for tests (default or custom rules), their counters, and batches to feed them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from processor.core.contract import BatchChanges
from processor.core.decode import TelemetryBatch, WantedKeys, decode_logs, decode_traces
from processor.stages.redaction.rules import load_rules, parse_rules
from processor.stages.redaction.stage import RedactionStage
from tests.oracle.redaction import OracleRedactionStage
from tests.support.differential import assert_same_changes
from tests.support.otlp_builders import span, trace_request


def default_stage(registry: CollectorRegistry | None = None, hash_key: bytes | None = None) -> RedactionStage:
    return RedactionStage(load_rules(), hash_key, registry or CollectorRegistry())


def custom_stage(rules: dict, hash_key: bytes | None = b"test-key") -> RedactionStage:
    return RedactionStage(parse_rules(rules), hash_key, CollectorRegistry())


def counts(stage: RedactionStage) -> dict[tuple, float]:
    """The stage's redaction counters, by their sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for metric in stage.redactions.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def traces_batch(resources: list[tuple[dict, list[tuple[dict, list[dict]]]]]) -> TelemetryBatch:
    """A decoded batch: per resource, its spans as (attributes, the attributes of each event)."""
    request = trace_request([])
    del request.resource_spans[:]
    for resource, spans in resources:
        built = [span(attributes=a, events=[(f"e{i}", e) for i, e in enumerate(events)]) for a, events in spans]
        request.resource_spans.extend(trace_request(built, resource=resource or {"service.name": "svc"}).resource_spans)
    return decode_traces(request.SerializeToString(), WantedKeys(values=True))


class PairedStages:
    """One stage per path, each kept across examples so the native caches carry over as in use."""

    def __init__(self, rules) -> None:
        self.native = RedactionStage(rules, b"paired-key", CollectorRegistry())
        self.started = RedactionStage(rules, b"paired-key", CollectorRegistry())
        self.polars = OracleRedactionStage(rules, b"paired-key", CollectorRegistry())

    def check(self, batch: TelemetryBatch, monkeypatch) -> BatchChanges:
        monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
        native = self.native.process(batch)
        # The same request, its values handed by the scan to the redactor's own thread.
        decode = decode_traces if batch.signal == "traces" else decode_logs
        handed = decode(batch.raw, WantedKeys(), values_to=self.started.values_consumer())
        assert handed.values_job is not None
        started = self.started.finish(handed, handed.values_job)
        reference = self.polars.process(batch)
        assert (native.engine, reference.engine) == ("native", "polars")
        assert_same_changes(native, reference)
        assert_same_changes(started, reference)
        assert counts(self.native) == counts(self.started) == counts(self.polars)
        return native
