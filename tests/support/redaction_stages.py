"""Redaction stages built for tests (default or custom rules), their counters, and batches to feed them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from processor.core.decode import TelemetryBatch, WantedKeys, decode_traces
from processor.stages.redaction.rules import load_rules, parse_rules
from processor.stages.redaction.stage import RedactionStage
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
