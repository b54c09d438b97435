"""Benchmark command line (see benchmarks/README.md).

python -m benchmarks.run compare   # side-by-side scenarios over gRPC, one run, ratios
python -m benchmarks.run soak      # one sidecar under steady load, RSS sampled, slope reported
python -m benchmarks.run micro     # in-process decode → stages → encode, spans/s
python -m benchmarks.run latency   # the same, one batch at a time: wall time per batch and per stage
python -m benchmarks.run profile   # the same under cProfile
python -m benchmarks.run scaling   # N in-process pipelines side by side, wall spans/s vs 1
python -m benchmarks.run instructions  # instructions per batch under callgrind (noise-free A/B)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from benchmarks import loadgen
from benchmarks.procstat import CpuWindow, RssSampler, cpu_seconds
from benchmarks.sink import CountingSink
from benchmarks.targets import Collector, Sidecar, find_collector
from benchmarks.workload import build_workload

MIB = 1024 * 1024

# name -> (kind, workers, stages on, only these stages). Collector: workers unused, "stages" = OTTL table size.
SCENARIOS: dict[str, tuple[str, int, int, tuple[str, ...]]] = {
    "sidecar-passthrough-1w": ("sidecar", 1, 0, ()),
    "sidecar-allstages-1w": ("sidecar", 1, 1, ()),
    "sidecar-passthrough-2w": ("sidecar", 2, 0, ()),
    "sidecar-allstages-2w": ("sidecar", 2, 1, ()),
    "sidecar-costonly-1w": ("sidecar", 1, 1, ("cost",)),
    "collector-transform-500": ("collector", 0, 500, ()),
    "collector-noop": ("collector", 0, 0, ()),
}
DEFAULT_SCENARIOS = (
    "sidecar-passthrough-1w",
    "sidecar-allstages-1w",
    "sidecar-passthrough-2w",
    "sidecar-allstages-2w",
    "collector-transform-500",
)


@dataclass
class ScenarioResult:
    name: str
    round: int = 0
    spans_sent: int = 0
    spans_delivered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    spans_per_second: float = 0.0
    spans_per_cpu_second: float = 0.0
    cores_used: float = 0.0
    # CPU the load generator and the sink burnt meanwhile, in cores: they share the machine.
    client_cores: float = 0.0
    # Cores used by each of the busiest target processes, to show how evenly the workers are used.
    process_cores: list[float] = field(default_factory=list)
    sink_cores: float = 0.0
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    rss_peak_mib: float = 0.0
    load_p50_ms: float = 0.0
    load_p99_ms: float = 0.0
    latency: dict[str, float] = field(default_factory=dict)
    check: str = ""
    skipped: str = ""


def _check_output(raw: bytes, stages: bool, collector: bool) -> str:
    """What the target wrote on the last batch the sink got: proves the stages really ran."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

    request = trace_pb.ExportTraceServiceRequest.FromString(raw)
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    genai = sum(1 for s in spans if any(kv.key == "gen_ai.request.model" for kv in s.attributes))
    priced = sum(1 for s in spans if any(kv.key == "genops.cost.total" for kv in s.attributes))
    parts = [f"{priced}/{genai} GenAI spans have genops.cost.total"]
    if stages and not collector:
        card_left = b"4111 1111 1111 1111" in raw or b"5555-5555-5555-4444" in raw
        events = sum(len(s.events) for s in spans)
        parts.append("card numbers still present" if card_left else "no test card numbers left")
        parts.append(f"{events} span events")
    return "; ".join(parts)


def _check_alive(target) -> None:
    """A target that died mid-run makes every later number meaningless: stop with its log."""
    code = target.process.poll()
    if code is not None:
        raise RuntimeError(f"{type(target).__name__} exited with {code} during the run: {target.log_tail()}")


def run_scenario(
    name: str, args, workload, sink: CountingSink, collector_binary: str | None, round_: int = 0
) -> ScenarioResult:
    kind, workers, stages, only = SCENARIOS[name]
    result = ScenarioResult(name, round_)
    if kind == "collector":
        if collector_binary is None:
            result.skipped = "no otelcol binary with the transform processor (collector-config/build-otelcol.sh)"
            return result
        target = Collector(collector_binary, sink.endpoint, table_size=stages)
    else:
        target = Sidecar(
            sink.endpoint, workers=workers, stages=bool(stages), only=only, extra_env=_env_pairs(args.sidecar_env)
        )
    print(f"[{name} round {round_}] starting", file=sys.stderr, flush=True)
    target.start()
    try:
        payloads = workload.payloads
        per = workload.spans_per_request
        channels = max(args.channels, workers)
        # By default every distinct request reaches every worker before anything is measured: a
        # request whose label combinations a worker has not seen yet creates their metric series
        # (~1,300 per batch here), a one-off cost that would otherwise land in the latency probe.
        warmup = args.warmup if args.warmup is not None else 2 * len(payloads) * max(workers, 1)
        loadgen.load(target.endpoint, payloads, per, channels=channels, inflight=1, max_requests=warmup)
        if args.latency_batches:
            probe = loadgen.latency_probe(target.endpoint, sink.endpoint, payloads, args.latency_batches)
            result.latency = probe.summary()
        sink.reset()
        sampler = RssSampler(target.pid, interval=0.5).start()
        window = CpuWindow(target.pid).start()
        client_before = cpu_seconds([os.getpid()]).get(os.getpid(), 0.0)
        sink_window = CpuWindow(sink.pid).start()
        measured = loadgen.load(
            target.endpoint,
            payloads,
            per,
            channels=channels,
            inflight=args.inflight,
            max_requests=args.requests,
            max_seconds=args.seconds,
        )
        window.stop()
        sink_window.stop()
        client_cpu = cpu_seconds([os.getpid()]).get(os.getpid(), 0.0) - client_before
        sampler.stop()
        delivered = sink.stats()
        _check_alive(target)
        if args.check:
            result.check = _check_output(sink.last_request(), bool(stages) and not only, kind == "collector")
    finally:
        target.stop()
    result.spans_sent = measured.spans
    result.spans_delivered = delivered.spans
    result.errors = measured.error_codes
    result.wall_seconds = measured.seconds
    result.cpu_seconds = window.cpu
    result.spans_per_second = measured.spans / measured.seconds
    result.spans_per_cpu_second = delivered.spans / window.cpu if window.cpu else math.nan
    result.cores_used = window.cpu / window.wall
    result.client_cores = client_cpu / window.wall
    result.process_cores = window.busiest(max(workers, 1))
    result.sink_cores = sink_window.cpu / sink_window.wall
    result.rss_start_mib = sampler.start_bytes / MIB
    result.rss_end_mib = sampler.end_bytes / MIB
    result.rss_peak_mib = sampler.peak_bytes / MIB
    result.load_p50_ms = loadgen.percentile(measured.latencies_ms, 50)
    result.load_p99_ms = loadgen.percentile(measured.latencies_ms, 99)
    print(
        f"[{name} round {round_}] {result.spans_per_second:,.0f} spans/s, "
        f"{result.spans_per_cpu_second:,.0f} spans/CPU-s, busiest processes "
        f"{', '.join(f'{c:.2f}' for c in result.process_cores)} cores",
        file=sys.stderr,
        flush=True,
    )
    return result


_MEDIAN_FIELDS = (
    "wall_seconds",
    "cpu_seconds",
    "spans_per_second",
    "spans_per_cpu_second",
    "cores_used",
    "client_cores",
    "sink_cores",
    "rss_start_mib",
    "rss_end_mib",
    "rss_peak_mib",
    "load_p50_ms",
    "load_p99_ms",
)


def combine(rounds: list[ScenarioResult]) -> ScenarioResult:
    """One row per scenario: medians over rounds, counts summed."""
    done = [r for r in rounds if not r.skipped]
    if not done:
        return rounds[0]
    out = ScenarioResult(done[0].name, len(done))
    for name in _MEDIAN_FIELDS:
        setattr(out, name, statistics.median(getattr(r, name) for r in done))
    out.spans_sent = sum(r.spans_sent for r in done)
    out.spans_delivered = sum(r.spans_delivered for r in done)
    for r in done:
        for code, count in r.errors.items():
            out.errors[code] = out.errors.get(code, 0) + count
    out.latency = {k: statistics.median(r.latency[k] for r in done) for k in done[0].latency}
    out.check = done[-1].check
    # The split of the median-throughput round, so it matches the row's numbers.
    out.process_cores = sorted(done, key=lambda r: r.spans_per_second)[len(done) // 2].process_cores
    return out


RATIOS = (
    ("all stages vs pass-through, per core (1 worker)", "sidecar-allstages-1w", "sidecar-passthrough-1w", "c"),
    ("all stages vs pass-through, wall spans/s (1 worker)", "sidecar-allstages-1w", "sidecar-passthrough-1w", "w"),
    ("2 workers vs 1, wall spans/s (all stages)", "sidecar-allstages-2w", "sidecar-allstages-1w", "w"),
    ("2 workers vs 1, per core (all stages)", "sidecar-allstages-2w", "sidecar-allstages-1w", "c"),
    ("2 workers vs 1, wall spans/s (pass-through)", "sidecar-passthrough-2w", "sidecar-passthrough-1w", "w"),
    ("2 workers vs 1, per core (pass-through)", "sidecar-passthrough-2w", "sidecar-passthrough-1w", "c"),
    (
        "sidecar all stages (1w) vs Collector transform, per core",
        "sidecar-allstages-1w",
        "collector-transform-500",
        "c",
    ),
    (
        "sidecar pass-through (1w) vs Collector transform, per core",
        "sidecar-passthrough-1w",
        "collector-transform-500",
        "c",
    ),
    ("Collector transform vs Collector no-op, per core", "collector-transform-500", "collector-noop", "c"),
    ("sidecar cost only (1w) vs Collector transform, per core", "sidecar-costonly-1w", "collector-transform-500", "c"),
    ("sidecar cost only vs pass-through, per core (1 worker)", "sidecar-costonly-1w", "sidecar-passthrough-1w", "c"),
)


def ratios(rounds: list[list[ScenarioResult]]) -> list[tuple[str, list[float]]]:
    """Each ratio computed within a round (pairs measured minutes apart at most), listed per round."""
    out = []
    for label, a, b, which in RATIOS:
        attribute = "spans_per_cpu_second" if which == "c" else "spans_per_second"
        values = []
        for results in rounds:
            by_name = {r.name: r for r in results if not r.skipped}
            if a in by_name and b in by_name and getattr(by_name[b], attribute):
                values.append(getattr(by_name[a], attribute) / getattr(by_name[b], attribute))
        if values:
            out.append((label, values))
    return out


def report(rounds: list[list[ScenarioResult]], args, workload) -> str:
    names = [r.name for r in rounds[0]]
    results = [combine([rnd[i] for rnd in rounds]) for i in range(len(names))]
    lines = [
        f"Workload: {workload.spans_per_request} spans per request ({workload.mean_bytes / 1024:.0f} KiB), "
        f"{len(workload.payloads)} distinct requests, ~{args.genai_share:.0%} GenAI; {args.channels} channels x "
        f"{args.inflight} in flight; up to {args.requests} requests or {args.seconds:.0f}s per scenario and round; "
        f"{args.latency_batches} paired latency batches; {len(rounds)} round(s), medians shown.",
        f"Machine: {platform.machine()}, {_cpu_count()} CPUs, Python {platform.python_version()}."
        + (f" Extra sidecar environment: {' '.join(args.sidecar_env)}." if args.sidecar_env else ""),
        "",
        "| scenario | spans/s (wall) | spans/s per core (CPU-s of target) | target cores busy (per worker) | "
        "client + sink cores | added latency p50 / p99 ms (1 batch in flight) | round trip under load p50 / p99 ms "
        "| RSS start / end / peak MiB | spans sent = delivered | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.name} | skipped: {r.skipped} | | | | | | | | |")
            continue
        lat = r.latency
        added = f"{lat.get('added_p50_ms', math.nan):.2f} / {lat.get('added_p99_ms', math.nan):.2f}"
        lines.append(
            f"| {r.name} | {r.spans_per_second:,.0f} | {r.spans_per_cpu_second:,.0f} | {r.cores_used:.2f}"
            f"{_split(r)} | "
            f"{r.client_cores:.2f} + {r.sink_cores:.2f} | {added} | {r.load_p50_ms:.1f} / {r.load_p99_ms:.1f} | "
            f"{r.rss_start_mib:.0f} / {r.rss_end_mib:.0f} / {r.rss_peak_mib:.0f} | "
            f"{r.spans_sent} = {r.spans_delivered}: {'yes' if r.spans_sent == r.spans_delivered else 'NO'} | "
            f"{sum(r.errors.values())} |"
        )
    lines += ["", "Round trip of the same batches, one in flight (latency probe):", ""]
    for r in results:
        if r.latency:
            lat = r.latency
            lines.append(
                f"- {r.name}: straight to sink p50 {lat['direct_p50_ms']:.2f} ms, p99 {lat['direct_p99_ms']:.2f} ms; "
                f"through target p50 {lat['through_p50_ms']:.2f} ms, p99 {lat['through_p99_ms']:.2f} ms"
            )
    checks = [f"- {r.name}: {r.check}" for r in results if r.check]
    if checks:
        lines += ["", "Output check on the last delivered batch:", "", *checks]
    computed = ratios(rounds)
    if computed:
        lines += ["", "| ratio (within a round) | median | per round |", "|---|---:|---|"]
        for label, values in computed:
            per_round = ", ".join(f"{v:.2f}" for v in values)
            lines.append(f"| {label} | {statistics.median(values):.2f} | {per_round} |")
    return "\n".join(lines)


def _split(result: ScenarioResult) -> str:
    if len(result.process_cores) < 2:
        return ""
    return " (" + " + ".join(f"{c:.2f}" for c in result.process_cores) + ")"


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--sidecar-env takes KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def _workload(args):
    print("building workload", file=sys.stderr, flush=True)
    return build_workload(args.distinct, args.spans, args.resources, args.genai_share, args.seed)


def cmd_compare(args) -> int:
    names = args.scenarios.split(",") if args.scenarios else list(DEFAULT_SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario {unknown[0]}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    workload = _workload(args)
    collector = None
    if any(SCENARIOS[n][0] == "collector" for n in names):
        collector = args.otelcol or find_collector()
    sink = CountingSink().start()
    rounds: list[list[ScenarioResult]] = []
    try:
        for round_ in range(args.rounds):
            rounds.append([])
            for name in names:
                rounds[-1].append(run_scenario(name, args, workload, sink, collector, round_))
                time.sleep(args.pause)
    finally:
        sink.stop()
    text = report(rounds, args, workload)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            payload = {
                "args": vars(args) | {"handler": None},
                "results": [asdict(r) for rnd in rounds for r in rnd],
                "ratios": dict(ratios(rounds)),
            }
            json.dump(payload, f, indent=2)
    return 0 if all(r.skipped or r.spans_sent == r.spans_delivered for rnd in rounds for r in rnd) else 1


def cmd_soak(args) -> int:
    workload = _workload(args)
    sink = CountingSink().start()
    target = Sidecar(
        sink.endpoint, workers=args.workers, stages=not args.passthrough, extra_env=_env_pairs(args.sidecar_env)
    ).start()
    try:
        sampler = RssSampler(target.pid, interval=args.sample_seconds).start()
        window = CpuWindow(target.pid).start()
        measured = loadgen.load(
            target.endpoint,
            workload.payloads,
            workload.spans_per_request,
            channels=args.channels,
            inflight=args.inflight,
            max_requests=10**12,
            max_seconds=args.duration,
            rate=args.rate,
        )
        window.stop()
        sampler.stop()
        delivered = sink.stats()
        _check_alive(target)
    finally:
        target.stop()
        sink.stop()
    slope_all = sampler.slope_mib_per_minute()
    slope_late = sampler.slope_mib_per_minute(skip_fraction=0.5)
    mode = "pass-through" if args.passthrough else "all stages"
    lines = [
        f"Soak: sidecar {mode}, {args.workers} worker(s), {args.duration:.0f}s at "
        f"{'max' if args.rate <= 0 else f'{args.rate:g} req/s'} x {workload.spans_per_request} spans; "
        f"RSS sampled every {args.sample_seconds:g}s ({len(sampler.samples)} samples).",
        f"- spans sent {measured.spans}, delivered {delivered.spans}, errors {measured.error_codes or 0}",
        f"- spans/s {measured.spans_per_second:,.0f}; spans per CPU-second {delivered.spans / window.cpu:,.0f}",
        f"- RSS start {sampler.start_bytes / MIB:.1f} MiB, end {sampler.end_bytes / MIB:.1f} MiB, "
        f"peak {sampler.peak_bytes / MIB:.1f} MiB",
        f"- RSS slope: {slope_all:+.3f} MiB/min over the whole run, {slope_late:+.3f} MiB/min over the second half",
        f"- round trip p50 {loadgen.percentile(measured.latencies_ms, 50):.1f} ms, "
        f"p99 {loadgen.percentile(measured.latencies_ms, 99):.1f} ms",
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": sampler.samples, "slope_mib_per_min": slope_all, "late": slope_late}, f)
    return 0 if measured.spans == delivered.spans else 1


def cmd_micro(args) -> int:
    from benchmarks.micro import run_micro

    workload = _workload(args)
    for stages in (False, True):
        print(run_micro(workload.payloads, workload.spans_per_request, stages, args.iterations).table())
        print()
    return 0


def cmd_latency(args) -> int:
    from benchmarks.micro import run_wall

    workload = _workload(args)
    for stages in (False, True):
        print(run_wall(workload.payloads, stages, args.iterations).table())
        print()
    return 0


def cmd_instructions(args) -> int:
    from benchmarks.instructions import count_instructions, missing_tools

    missing = missing_tools()
    if missing:
        raise SystemExit(f"instructions needs valgrind's tools on PATH (Debian package valgrind): {', '.join(missing)}")
    workload = [
        *("--spans", str(args.spans), "--distinct", str(args.distinct), "--resources", str(args.resources)),
        *("--genai-share", str(args.genai_share), "--seed", str(args.seed)),
    ]
    print(count_instructions(workload, args.batches, args.top).table())
    return 0


def cmd_scaling(args) -> int:
    from benchmarks.scaling import report, run_scaling

    workload = _workload(args)
    counts = [int(n) for n in args.processes.split(",")]
    rounds = [
        [run_scaling(workload.bases, workload.spans_per_request, n, args.iterations) for n in counts]
        for _ in range(args.rounds)
    ]
    print(report(rounds))
    return 0


def cmd_profile(args) -> int:
    from benchmarks.micro import run_profile

    workload = _workload(args)
    text = run_profile(workload.payloads, not args.passthrough, args.iterations, args.top)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def workload_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--spans", type=int, default=1000, help="spans per request (default 1000)")
        p.add_argument("--distinct", type=int, default=16, help="distinct pre-built requests cycled (default 16)")
        p.add_argument("--resources", type=int, default=4, help="resources (services) per request (default 4)")
        p.add_argument("--genai-share", type=float, default=0.4, help="share of GenAI spans (default 0.4)")
        p.add_argument("--seed", type=int, default=7)

    def load_args(p: argparse.ArgumentParser) -> None:
        # The sidecar spreads requests over its workers, whatever the number of connections;
        # --channels 1 --inflight 4 loads it the way one Collector exporter does.
        p.add_argument("--channels", type=int, default=8, help="concurrent gRPC channels/connections (default 8)")
        p.add_argument("--inflight", type=int, default=1, help="requests in flight per channel (default 1)")
        p.add_argument("--json", help="also write the results as JSON here")
        p.add_argument(
            "--sidecar-env",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="extra environment for the sidecar processes, e.g. POLARS_MAX_THREADS=1 (repeatable)",
        )

    compare = commands.add_parser("compare", help="scenarios side by side over gRPC")
    workload_args(compare)
    load_args(compare)
    compare.add_argument(
        "--scenarios", help=f"comma-separated (default {','.join(DEFAULT_SCENARIOS)}); known: {', '.join(SCENARIOS)}"
    )
    compare.add_argument("--requests", type=int, default=600, help="max requests per throughput phase (default 600)")
    compare.add_argument("--seconds", type=float, default=20, help="max seconds per throughput phase (default 20)")
    compare.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up requests per scenario (default: twice the distinct requests per worker)",
    )
    compare.add_argument("--latency-batches", type=int, default=100, help="paired latency batches (default 100)")
    compare.add_argument("--rounds", type=int, default=1, help="repeat the scenario list; medians (default 1)")
    compare.add_argument("--pause", type=float, default=1.0, help="seconds between scenarios (default 1)")
    compare.add_argument("--otelcol", help="otelcol binary (default: collector-config/build-otelcol.sh)")
    compare.add_argument("--no-check", dest="check", action="store_false", help="skip the output check")
    compare.set_defaults(handler=cmd_compare)

    soak = commands.add_parser("soak", help="steady load for --duration, RSS slope")
    workload_args(soak)
    load_args(soak)
    soak.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    soak.add_argument("--rate", type=float, default=40, help="requests/s over all channels, 0 = flat out (default 40)")
    soak.add_argument("--sample-seconds", type=float, default=5, help="RSS sampling interval (default 5)")
    soak.add_argument("--workers", type=int, default=1)
    soak.add_argument("--passthrough", action="store_true", help="all stages off")
    soak.set_defaults(handler=cmd_soak)

    micro = commands.add_parser("micro", help="in-process pipeline, no gRPC")
    workload_args(micro)
    micro.add_argument("--iterations", type=int, default=50, help="batches processed (default 50)")
    micro.set_defaults(handler=cmd_micro)

    latency = commands.add_parser("latency", help="in-process pipeline, one batch at a time, wall time")
    workload_args(latency)
    latency.add_argument("--iterations", type=int, default=200, help="batches processed (default 200)")
    latency.set_defaults(handler=cmd_latency)

    scaling = commands.add_parser("scaling", help="N in-process pipelines side by side on one budget state")
    workload_args(scaling)
    scaling.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    scaling.add_argument("--iterations", type=int, default=60, help="batches per process (default 60)")
    scaling.add_argument("--rounds", type=int, default=1, help="repeat the process list; medians (default 1)")
    scaling.set_defaults(handler=cmd_scaling)

    instructions = commands.add_parser(
        "instructions", help="instructions per batch under valgrind's callgrind (noise-free, all stages)"
    )
    workload_args(instructions)
    instructions.add_argument("--batches", type=int, default=10, help="batches counted (default 10)")
    instructions.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    instructions.set_defaults(handler=cmd_instructions)

    profile = commands.add_parser("profile", help="cProfile of the in-process pipeline")
    workload_args(profile)
    profile.add_argument("--iterations", type=int, default=30)
    profile.add_argument("--top", type=int, default=35)
    profile.add_argument("--passthrough", action="store_true", help="profile with all stages off")
    profile.add_argument("--output", help="also write the profile text here")
    profile.set_defaults(handler=cmd_profile)
    return parser


# Commands that run the pipeline in this process (or in processes started from it) get the malloc
# settings `serve` runs with; `instructions` runs it under valgrind, which must not be re-executed.
IN_PROCESS = {cmd_micro, cmd_latency, cmd_profile, cmd_scaling}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.handler in IN_PROCESS:  # from the command line, not called by a test
        from processor.transport.allocator import tune_allocator

        tune_allocator()  # may re-execute this command, once, with the settings in its environment
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
