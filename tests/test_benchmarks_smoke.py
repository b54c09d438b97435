"""The benchmark tooling works end to end on a tiny run. Nothing here is timed or asserts speed."""

from __future__ import annotations

import json

from benchmarks import run
from benchmarks.micro import run_micro
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
