"""In-process pipeline benchmark: decode → stages → encode on one batch, no gRPC, no processes.

For quick iteration on stage code: `python -m benchmarks.run micro` reports spans/s through the
whole pipeline and the time split between decode, each stage, and writing back + serialising.
`python -m benchmarks.run profile` runs the same loop under cProfile.

Times are process CPU time (`time.process_time`, which includes polars' worker threads), not wall
time: on a shared machine wall time counts the moments another job had the core.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks.targets import POLICY_FILE


def stage_config(stages: bool, workdir: Path | None = None):
    """The sidecar's config with every stage on (and a realistic policy file) or all off."""
    from processor.config import load_config

    on = "true" if stages else "false"
    env = {
        "GENOPS_COST_ENABLED": on,
        "GENOPS_REDACTION_ENABLED": on,
        "GENOPS_POLICY_ENABLED": on,
        "GENOPS_REDACTION_HASH_KEY": "benchmark-only-hash-key",
    }
    if stages:
        workdir = workdir or Path(tempfile.mkdtemp(prefix="genops-micro-"))
        env["GENOPS_POLICY_STATE_BACKEND"] = "sqlite"
        env["GENOPS_POLICY_STATE_PATH"] = str(workdir / "budget-state.sqlite")
        policy = workdir / "policy.yaml"
        # Written aside and renamed: processes sharing a workdir (scaling) never read a half-written file.
        staged = workdir / f".policy-{os.getpid()}.yaml"
        staged.write_text(yaml.safe_dump(POLICY_FILE, sort_keys=False))
        os.replace(staged, policy)
        env["GENOPS_POLICY_POLICY_FILE"] = str(policy)
    return load_config(None, environ=env)


@dataclass
class _TimedStage:
    """Wraps a stage to add up the time its `process` takes; the pipeline sees the same stage."""

    inner: object
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self.signals = self.inner.signals
        # The pipeline redacts what the stages write with the redaction stage's rules.
        outbound = getattr(self.inner, "outbound", None)
        if outbound is not None:
            self.outbound = outbound

    def wanted_keys(self):
        return self.inner.wanted_keys()

    def process(self, batch):
        started = time.process_time()
        try:
            return self.inner.process(batch)
        finally:
            self.seconds += time.process_time() - started

    # Work a stage does ahead while an earlier stage's values job runs (the pipeline's `prepare`).
    def prepare(self, batch):
        prepare = getattr(self.inner, "prepare", None)
        if prepare is None:
            return
        started = time.process_time()
        try:
            prepare(batch)
        finally:
            self.seconds += time.process_time() - started

    # A stage whose values go to a native consumer (redaction): its thread's CPU time is not
    # counted here, only the main thread's wait (process_time counts every thread).
    def values_consumer(self):
        consumer = getattr(self.inner, "values_consumer", None)
        return None if consumer is None else consumer()

    def finish(self, batch, job):
        started = time.process_time()
        try:
            return self.inner.finish(batch, job)
        finally:
            self.seconds += time.process_time() - started


@dataclass
class MicroResult:
    stages: list[str]
    spans: int
    seconds: float
    decode_seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def spans_per_second(self) -> float:
        return self.spans / self.seconds

    def table(self) -> str:
        per_batch = self.seconds / (self.spans / 1000) * 1000
        lines = [
            f"stages: {', '.join(self.stages) or '(none: pass-through)'}",
            f"spans per CPU-second (in-process): {self.spans_per_second:,.0f}   ms per 1k spans: {per_batch:.2f}",
            "| part | share of time | ms per 1k spans |",
            "|---|---:|---:|",
        ]
        rest = self.seconds - self.decode_seconds - sum(self.stage_seconds.values())
        parts = [("decode", self.decode_seconds), *self.stage_seconds.items(), ("write back + serialise + glue", rest)]
        for name, seconds in parts:
            lines.append(f"| {name} | {seconds / self.seconds:.0%} | {seconds / (self.spans / 1000) * 1000:.2f} |")
        return "\n".join(lines)


def build_pipeline(stages: bool, workdir: Path | None = None):
    from prometheus_client import CollectorRegistry

    from processor.core.pipeline import Pipeline
    from processor.observability import SidecarMetrics
    from processor.stages.assembly import build_stages

    config = stage_config(stages, workdir)
    built = build_stages(config, CollectorRegistry())
    timed = [_TimedStage(stage) for stage in built]
    return Pipeline(timed, SidecarMetrics.create()), timed


def run_micro(payloads: Sequence[bytes], spans_per_request: int, stages: bool, iterations: int) -> MicroResult:
    from processor.core.decode import decode_traces

    pipeline, timed = build_pipeline(stages)
    wanted = pipeline._wanted["traces"]
    # Warm-up over every distinct payload once: imports, first polars plans, and the caches that
    # fill once per distinct value (metric children per label combination, resolved models).
    for payload in payloads:
        pipeline.process_traces(payload)
    for stage in timed:
        stage.seconds = 0.0
    # Built before the clock starts: each is a new request (see workload.UniquePayloads).
    batches = [payloads[i % len(payloads)] for i in range(iterations)]
    started = time.process_time()
    for payload in batches:
        pipeline.process_traces(payload)
    total = time.process_time() - started
    # Decode is timed in a separate loop: the pipeline does not expose its own split.
    decode_started = time.process_time()
    for payload in batches:
        decode_traces(payload, wanted)
    decode = time.process_time() - decode_started
    return MicroResult(
        stages=[s.name for s in timed],
        spans=iterations * spans_per_request,
        seconds=total,
        decode_seconds=min(decode, total),
        stage_seconds={s.name: s.seconds for s in timed},
    )


def run_profile(payloads: Sequence[bytes], stages: bool, iterations: int, top: int = 35) -> str:
    pipeline, _ = build_pipeline(stages)
    for payload in payloads:
        pipeline.process_traces(payload)
    batches = [payloads[i % len(payloads)] for i in range(iterations)]
    profiler = cProfile.Profile()
    profiler.enable()
    for payload in batches:
        pipeline.process_traces(payload)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    out.write("### by own time (tottime)\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write("### by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


@dataclass
class WallResult:
    """Wall time of batches sent through the pipeline one at a time (what a lone batch waits)."""

    stages: list[str]
    batch_ms: list[float]
    # Mean wall time per batch of each stage's turn, as the pipeline's own stage timer measures it
    # (for the redaction stage: the wait for its thread, not the time the thread ran).
    stage_ms: dict[str, float]

    def table(self) -> str:
        ordered = sorted(self.batch_ms)

        def at(q: float) -> float:
            return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

        mean = sum(ordered) / len(ordered)
        lines = [
            f"stages: {', '.join(self.stages) or '(none: pass-through)'}; {len(ordered)} batches, one at a time",
            f"wall ms per batch: p50 {at(0.5):.2f}, p99 {at(0.99):.2f}, mean {mean:.2f}",
            "| part | mean wall ms per batch |",
            "|---|---:|",
        ]
        for name, ms in self.stage_ms.items():
            lines.append(f"| {name} | {ms:.2f} |")
        lines.append(f"| decode + write back + glue | {mean - sum(self.stage_ms.values()):.2f} |")
        return "\n".join(lines)


def _stage_seconds(metrics) -> dict[str, float]:
    return {
        sample.labels["stage"]: sample.value
        for metric in metrics.stage_seconds.collect()
        for sample in metric.samples
        if sample.name.endswith("_sum")
    }


def run_wall(payloads: Sequence[bytes], stages: bool, iterations: int) -> WallResult:
    """The pipeline as `serve` builds it (no wrapper around the stages), timed batch by batch."""
    from prometheus_client import CollectorRegistry

    from processor.core.pipeline import Pipeline
    from processor.observability import SidecarMetrics
    from processor.stages.assembly import build_stages

    built = build_stages(stage_config(stages), CollectorRegistry())
    metrics = SidecarMetrics.create()
    pipeline = Pipeline(built, metrics)
    for payload in payloads:  # warm-up, as in run_micro
        pipeline.process_traces(payload)
    before = _stage_seconds(metrics)
    batches = [payloads[i % len(payloads)] for i in range(iterations)]
    times = []
    for payload in batches:
        started = time.perf_counter()
        pipeline.process_traces(payload)
        times.append((time.perf_counter() - started) * 1000)
    after = _stage_seconds(metrics)
    return WallResult(
        stages=[s.name for s in built],
        batch_ms=times,
        stage_ms={name: (after[name] - before.get(name, 0.0)) * 1000 / iterations for name in after},
    )
