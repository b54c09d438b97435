"""The sidecar's own Prometheus metrics and structlog set-up.

Metrics live in registry objects passed around, so tests and several pipelines in one process do
not fight over prometheus_client's global registry. With several worker processes, the workers
record the pipeline and stage metrics in prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR) and the front process adds them to its own /metrics.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from processor.core.outbound import cap_bytes

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class PipelineMetrics:
    """Recorded where the stages run (the worker processes when there are several)."""

    stage_errors: Counter
    stage_seconds: Histogram
    stage_engine: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PipelineMetrics:
        return cls(
            stage_errors=Counter(
                "genops_sidecar_stage_errors",
                "Batches a stage failed on (forwarded without that stage's changes).",
                ["stage", "signal"],
                registry=registry,
            ),
            stage_seconds=Histogram(
                "genops_sidecar_stage_seconds",
                "Time spent per batch in each stage.",
                ["stage", "signal"],
                buckets=STAGE_BUCKETS,
                registry=registry,
            ),
            stage_engine=Counter(
                "genops_sidecar_stage_engine",
                "Batches per stage by the engine that ran it: native (Rust), polars, none (nothing to do).",
                ["stage", "signal", "engine"],
                registry=registry,
            ),
        )


@dataclass
class SidecarMetrics:
    """The receiving and forwarding side, plus (in a single process) the pipeline's metrics."""

    registry: CollectorRegistry
    requests: Counter
    items: Counter
    malformed: Counter
    rejected: Counter
    over_budget: Counter
    poison: Counter
    forward_errors: Counter
    request_seconds: Histogram
    inflight: Gauge
    pipeline: PipelineMetrics | None

    # Kept as attributes of this object too, so a Pipeline can be given the SidecarMetrics.
    @property
    def stage_errors(self) -> Counter:
        assert self.pipeline is not None
        return self.pipeline.stage_errors

    @property
    def stage_seconds(self) -> Histogram:
        assert self.pipeline is not None
        return self.pipeline.stage_seconds

    @property
    def stage_engine(self) -> Counter:
        assert self.pipeline is not None
        return self.pipeline.stage_engine

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None, *, with_pipeline: bool = True) -> SidecarMetrics:
        registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            requests=Counter(
                "genops_sidecar_requests",
                "Export requests handled, by signal and outcome.",
                ["signal", "outcome"],
                registry=registry,
            ),
            items=Counter(
                "genops_sidecar_items",
                "Spans, log records or metric requests received, by signal.",
                ["signal"],
                registry=registry,
            ),
            malformed=Counter(
                "genops_sidecar_malformed_requests",
                "Requests rejected with INVALID_ARGUMENT.",
                ["signal"],
                registry=registry,
            ),
            rejected=Counter(
                "genops_sidecar_rejected_requests",
                "Requests refused with UNAVAILABLE because too many were in flight (backpressure).",
                ["signal"],
                registry=registry,
            ),
            over_budget=Counter(
                "genops_sidecar_over_budget_requests",
                "Requests refused with UNAVAILABLE before being read: the decompressed request bytes "
                "in flight left no room for another (backpressure).",
                ["signal"],
                registry=registry,
            ),
            poison=Counter(
                "genops_sidecar_poison_requests",
                "Requests refused with INVALID_ARGUMENT because the same bytes killed worker processes.",
                ["signal"],
                registry=registry,
            ),
            forward_errors=Counter(
                "genops_sidecar_forward_errors",
                "Downstream export failures, by gRPC status code.",
                ["signal", "code"],
                registry=registry,
            ),
            request_seconds=Histogram(
                "genops_sidecar_request_seconds",
                "Time from receiving a request to answering it, forwarding included.",
                ["signal"],
                buckets=STAGE_BUCKETS,
                registry=registry,
            ),
            inflight=Gauge(
                "genops_sidecar_inflight_requests",
                "Export requests being processed or forwarded.",
                registry=registry,
            ),
            pipeline=PipelineMetrics.create(registry) if with_pipeline else None,
        )


# Log values are cut to this many bytes (a traceback fits; a value echoed from a broken file does not).
LOG_VALUE_MAX_BYTES = 8192
# The redaction of log values, once the stages are built (see `redact_logs_with`).
_log_redaction: Callable[[str], str] | None = None


def redact_logs_with(redact: Callable[[str], str] | None) -> None:
    """Log lines leave the process too, and exception texts are made from span values: from now on
    every string value of a log line goes through `redact` (processor/core/outbound.py `message`)."""
    global _log_redaction
    _log_redaction = redact


def _redacted_values(_logger: object, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    redact = _log_redaction
    for key, value in event.items():
        if isinstance(value, str):
            if redact is not None:
                value = redact(value)
            event[key] = cap_bytes(value, LOG_VALUE_MAX_BYTES)
    return event


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redacted_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # One write per line: worker processes share stderr, and print() writes the newline apart.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
