"""Instructions per batch through the in-process pipeline, counted by valgrind's callgrind.

On a shared machine the time of one batch moves by ±30% within the hour; the number of
instructions it executes does not. `python -m benchmarks.run instructions` runs the pipeline in a
child process under callgrind with counting switched off, warms it up (imports, first polars plans,
caches), switches counting on for the measured batches only (`callgrind_control -i on`), and
reports instructions per batch and the functions that executed the most of them. Compare two trees
by running it in each (PYTHONPATH=<tree>); a count is not a time (a cache miss costs more than an
add), so confirm a gain with `compare` before reporting it in spans/s.

Needs valgrind (Debian package `valgrind`, which also brings callgrind_control and
callgrind_annotate). Under callgrind the pipeline runs ~50 times slower: 10 batches take ~30 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("valgrind", "callgrind_control", "callgrind_annotate")


@dataclass(frozen=True)
class InstructionCount:
    batches: int
    spans_per_batch: int
    total: int
    # (instructions, function) executed in the function itself (not its callees), most first.
    top: list[tuple[int, str]]

    @property
    def per_batch(self) -> float:
        return self.total / self.batches

    def table(self) -> str:
        lines = [
            f"instructions per {self.spans_per_batch}-span batch (all stages, {self.batches} batches): "
            f"{self.per_batch:,.0f}",
            "",
            "| function (own instructions) | per batch | share |",
            "|---|---:|---:|",
        ]
        for count, function in self.top:
            lines.append(f"| `{function}` | {count / self.batches:,.0f} | {count / self.total:.1%} |")
        return "\n".join(lines)


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def count_instructions(workload_args: list[str], batches: int, top: int) -> InstructionCount:
    """Runs `batches` all-stages batches under callgrind in a child process and reads its counts."""
    with tempfile.TemporaryDirectory(prefix="genops-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--batches",
            str(batches),
            *workload_args,
        ]
        # One polars thread, as `serve` runs it: no thread pool counted in.
        env = {**os.environ, "POLARS_MAX_THREADS": "1"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"callgrind run failed ({done.returncode}): {done.stderr[-3000:]}")
        spans = int(re.search(r"^spans (\d+)$", done.stdout, re.MULTILINE).group(1))  # type: ignore[union-attr]
        total = _totals(out.read_text(errors="replace"))
        annotated = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True, check=True)
        return InstructionCount(batches, spans, total, _top_functions(annotated.stdout, top))


def _totals(profile: str) -> int:
    # "totals:" sums every part callgrind dumped; "summary:" is 0 when counting started late.
    return sum(int(line.split()[1]) for line in profile.splitlines() if line.startswith("totals:"))


_ANNOTATED_LINE = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$")


def _top_functions(annotated: str, top: int) -> list[tuple[int, str]]:
    found = []
    for line in annotated.splitlines():
        match = _ANNOTATED_LINE.match(line)
        if match is None or "PROGRAM TOTALS" in line:
            continue
        # "file:function [object]", the file ??? when unknown; Rust names hold "::" themselves.
        located, _, where = match.group(2).partition(" [")
        _, _, function = located.partition(":")
        if function.startswith("0x"):  # no symbol: at least the library it is in
            function = f"{function} in {Path(where.rstrip(']')).name}"
        found.append((int(match.group(1).replace(",", "")), function))
        if len(found) >= top:
            break
    return found


def _measured_child(argv: list[str]) -> None:
    """Inside callgrind: build, warm up, then count only the batches."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--spans", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=16)
    parser.add_argument("--resources", type=int, default=4)
    parser.add_argument("--genai-share", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    from benchmarks.micro import build_pipeline
    from benchmarks.workload import build_workload

    workload = build_workload(args.distinct, args.spans, args.resources, args.genai_share, args.seed)
    payloads = workload.payloads
    pipeline, _ = build_pipeline(True)
    for index in range(len(payloads)):
        pipeline.process_traces(payloads[index])
    batches = [payloads[i % len(payloads)] for i in range(args.batches)]
    toggle = ["callgrind_control", "-i"]
    subprocess.run([*toggle, "on", str(os.getpid())], check=True, capture_output=True)
    for payload in batches:
        pipeline.process_traces(payload)
    subprocess.run([*toggle, "off", str(os.getpid())], check=True, capture_output=True)
    print(f"spans {workload.spans_per_request}")


if __name__ == "__main__":
    _measured_child(sys.argv[1:])
