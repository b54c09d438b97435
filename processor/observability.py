"""The sidecar's own Prometheus metrics and structlog set-up.

Metrics live in one registry object so tests and multiple pipelines in one process do not fight
over prometheus_client's global registry. With several worker processes, prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR) aggregates them for the one /metrics endpoint.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


@dataclass
class SidecarMetrics:
    registry: CollectorRegistry
    requests: Counter
    items: Counter
    malformed: Counter
    rejected: Counter
    forward_errors: Counter
    stage_errors: Counter
    stage_seconds: Histogram
    request_seconds: Histogram
    inflight: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> SidecarMetrics:
        registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        gauge_mode = {"multiprocess_mode": "livesum"} if multiprocess_mode() else {}
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
            forward_errors=Counter(
                "genops_sidecar_forward_errors",
                "Downstream export failures, by gRPC status code.",
                ["signal", "code"],
                registry=registry,
            ),
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
                **gauge_mode,
            ),
        )


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
