"""The benchmark tooling works end to end on a tiny run. Nothing here is timed or asserts speed."""

from __future__ import annotations

import json

import pytest

from benchmarks import instructions, run
from benchmarks.micro import run_micro, run_wall
from benchmarks.sink import count_spans
from benchmarks.targets import collector_config
from benchmarks.workload import MODELS, build_requests, build_workload


def test_a_tiny_pass_through_compare_run_delivers_every_span(tmp_path):
    out = tmp_path / "results.json"
    code = run.main(
        [
            "compare",
            "--scenarios",
            "sidecar-passthrough-1w",
            "--spans",
            "100",
            "--distinct",
            "2",
            "--requests",
            "2",
            "--warmup",
            "1",
            "--latency-batches",
            "2",
            "--channels",
            "2",
            "--pause",
            "0",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["spans_sent"] == result["spans_delivered"] == 200
    # CPU is read in 10 ms ticks, so a run this small may honestly show none; memory is always there.
    assert result["rss_peak_mib"] > 0
    assert set(result["latency"]) >= {"added_p50_ms", "added_p99_ms"}


def test_the_in_process_micro_benchmark_runs_the_pipeline():
    workload = build_workload(count=1, spans=50)
    result = run_micro(workload.payloads, workload.spans_per_request, stages=False, iterations=2)
    assert result.spans == 100
    assert "spans per CPU-second" in result.table()


def test_the_in_process_latency_benchmark_times_every_batch_and_each_stage():
    workload = build_workload(count=1, spans=50)
    result = run_wall(workload.payloads, stages=True, iterations=3)
    assert len(result.batch_ms) == 3
    assert set(result.stage_ms) == {"cost", "redaction", "policy"}
    assert "wall ms per batch" in result.table()


def test_the_workload_mixes_genai_and_plain_spans_with_pii_and_the_counting_sink_agrees():
    (request,) = build_requests(count=1, spans=500, resources=3)
    raw = request.SerializeToString()
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    genai = [s for s in spans if any(kv.key == "gen_ai.request.model" for kv in s.attributes)]
    assert len(spans) == count_spans(raw) == 500
    assert 0.3 < len(genai) / len(spans) < 0.5
    assert len({kv.value.string_value for s in genai for kv in s.attributes if kv.key == "gen_ai.request.model"}) >= 20
    assert b"4111 1111 1111 1111" in raw or b"5555-5555-5555-4444" in raw
    for rs in request.resource_spans:
        assert {"service.name", "genops.team"} <= {kv.key for kv in rs.resource.attributes}


def test_the_collector_config_prices_each_of_500_models_with_one_ottl_statement():
    config = collector_config(4317, 13133, "127.0.0.1:4418", table_size=500)
    (group,) = config["processors"]["transform/cost"]["trace_statements"]
    statements = group["statements"]
    assert len(statements) == 500
    assert len({s.rsplit("==", 1)[1] for s in statements}) == 500
    assert any('== "gpt-4o"' in s for s in statements)
    assert len(MODELS) >= 20


def test_the_scaling_benchmark_runs_processes_side_by_side_on_one_budget_state():
    from benchmarks.scaling import report, run_scaling

    workload = build_workload(count=1, spans=20)
    runs = [run_scaling(workload.bases, workload.spans_per_request, n, iterations=2) for n in (1, 2)]
    assert [len(r.runs) for r in runs] == [1, 2]
    assert all(p.spans == 40 for r in runs for p in r.runs)
    assert "| 2 |" in report([runs])


ANNOTATED = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
431,180,210 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                    file:function
--------------------------------------------------------------------------------
41,373,820 ( 9.60%)  ???:_otlp_native::rewrite::rewrite [/x/processor/_otlp_native.so]
16,177,242 ( 3.75%)  ???:0x0000000000055480 [/x/site-packages/blake3/blake3.so]
 9,433,102 ( 2.19%)  /tmp/Python-3.11.7/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/x/libpython3.11.so.1.0]
"""


def test_instruction_counts_are_read_from_callgrind_output():
    profile = "events: Ir\ntotals: 300\nfn=(1) a\ntotals: 131\n"
    assert instructions._totals(profile) == 431
    assert instructions._top_functions(ANNOTATED, 2) == [
        (41_373_820, "_otlp_native::rewrite::rewrite"),
        (16_177_242, "0x0000000000055480 in blake3.so"),
    ]


@pytest.mark.skipif(bool(instructions.missing_tools()), reason="valgrind is not installed")
def test_the_instruction_count_covers_only_the_measured_batches():
    counted = instructions.count_instructions(["--spans", "50", "--distinct", "2"], batches=2, top=5)
    assert counted.spans_per_batch == 50
    # Imports and warm-up alone would be billions; a 50-span batch is a few million instructions
    # (~100 million without the native extension, GENOPS_NATIVE_DECODE=0).
    assert 0 < counted.per_batch < 500_000_000
    assert len(counted.top) == 5
