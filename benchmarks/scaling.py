"""Worker scaling without gRPC: N processes run the whole pipeline side by side on one budget state.

`server.workers: N` runs the pipeline in N worker processes behind one front process. Whether N
workers do N times the work of one depends on what they share: the cores, memory bandwidth, and
the budget state (one SQLite file, or Redis). This runs N copies of the in-process pipeline (every
stage on, one policy file, one SQLite state file) started together, and reports total spans/s
(wall) against the same run with one process. The front process (receive, hand over, forward) is
not in it: `compare` measures that with the real server, on a machine with cores to spare.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Numbers written into each process's requests start this far apart (see workload.UniquePayloads).
_NUMBERS_PER_PROCESS = 10**12


@dataclass(frozen=True)
class ProcessRun:
    spans: int
    wall_seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class ScalingRun:
    processes: int
    runs: tuple[ProcessRun, ...]

    @property
    def spans_per_second(self) -> float:
        return sum(r.spans for r in self.runs) / max(r.wall_seconds for r in self.runs)

    @property
    def spans_per_cpu_second(self) -> float:
        return sum(r.spans for r in self.runs) / sum(r.cpu_seconds for r in self.runs)


def _run_one(index: int, bases: tuple[bytes, ...], spans: int, iterations: int, workdir: str, barrier, results) -> None:
    os.environ.setdefault("POLARS_MAX_THREADS", "1")  # as `serve` sets it
    from benchmarks.micro import build_pipeline
    from benchmarks.workload import UniquePayloads

    payloads = UniquePayloads(bases, itertools.count(index * _NUMBERS_PER_PROCESS + 1))
    pipeline, _ = build_pipeline(True, Path(workdir))
    for payload in payloads:  # warm-up, as micro does
        pipeline.process_traces(payload)
    batches = [payloads[i % len(payloads)] for i in range(iterations)]
    barrier.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    for payload in batches:
        pipeline.process_traces(payload)
    results.put(ProcessRun(spans * iterations, time.perf_counter() - wall, time.process_time() - cpu))


def run_scaling(bases: Sequence[bytes], spans: int, processes: int, iterations: int) -> ScalingRun:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    with tempfile.TemporaryDirectory(prefix="genops-scaling-") as workdir:
        # One policy file and state path for all: build_pipeline writes the same files each time.
        children = [
            context.Process(target=_run_one, args=(i, tuple(bases), spans, iterations, workdir, barrier, results))
            for i in range(processes)
        ]
        for child in children:
            child.start()
        try:
            runs = tuple(_next_result(results, children) for _ in children)
        finally:
            barrier.abort()  # frees the others from the barrier when one died before it
            for child in children:
                child.join(timeout=30)
                if child.is_alive():
                    child.terminate()
    return ScalingRun(processes, runs)


def _next_result(results, children, limit_seconds: float = 900) -> ProcessRun:
    """The next process's run; fails as soon as a process exits without one, not at the limit."""
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            failed = [child.exitcode for child in children if child.exitcode]
            if failed:
                raise RuntimeError(f"a scaling process exited with {failed[0]}") from None
    raise TimeoutError(f"no scaling result in {limit_seconds:.0f} s")


def report(rounds: Sequence[Sequence[ScalingRun]]) -> str:
    """One table row per process count (medians over rounds); each ratio is taken within a round,
    against that round's run with the fewest processes, since the machine's speed drifts."""
    lines = [
        f"cores on this machine: {os.cpu_count()}; {len(rounds)} round(s), medians",
        "| processes | spans/s (wall, all processes) | spans per CPU-second | vs fewest processes (wall), per round | "
        "efficiency |",
        "|---:|---:|---:|---:|---:|",
    ]
    for position, first in enumerate(rounds[0]):
        runs = [r[position] for r in rounds]
        ratios = [r[position].spans_per_second / min(r, key=lambda x: x.processes).spans_per_second for r in rounds]
        base = min(rounds[0], key=lambda x: x.processes).processes
        ratio = statistics.median(ratios)
        lines.append(
            f"| {first.processes} | {statistics.median(r.spans_per_second for r in runs):,.0f} | "
            f"{statistics.median(r.spans_per_cpu_second for r in runs):,.0f} | "
            f"{ratio:.2f} ({', '.join(f'{x:.2f}' for x in ratios)}) | {ratio / first.processes * base:.0%} |"
        )
    return "\n".join(lines)
