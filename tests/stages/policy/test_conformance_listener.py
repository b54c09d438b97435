"""`genops-sidecar conformance --listen`: a real sidecar forwarding into the conformance sink."""

from __future__ import annotations

import signal
import subprocess
import sys

import grpc
import pytest

from processor.stages.policy import conformance
from tests.support.collector_harness import (
    FAST_RETRY_ENV,
    REPO_ROOT,
    SHIPPED_COLLECTOR_CONFIG,
    CollectorPorts,
    free_port,
    loop_collector_env,
    running_collector,
    running_sidecar,
)
from tests.support.genai_spans import RESOURCE, genai_span
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces


def start_listener(*options: str) -> tuple[subprocess.Popen, str]:
    """`conformance --listen 127.0.0.1:0 ...` running, and the endpoint it announced."""
    process = subprocess.Popen(
        [sys.executable, "-m", "processor", "conformance", "--listen", "127.0.0.1:0", *options],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert line.startswith("conformance: listening on "), line + process.stderr.read()
    return process, line.rsplit(" ", 1)[-1].strip()


def finished(process: subprocess.Popen) -> tuple[int, list[str], str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out.splitlines(), err


def test_the_listener_passes_the_sidecar_output_after_count_requests(tmp_path):
    listener, endpoint = start_listener("--count", "2", "--level", "auto")
    try:
        env = {"GENOPS_POLICY_STATE_BACKEND": "memory", "GENOPS_POLICY_STATE_PATH": str(tmp_path / "unused.sqlite")}
        with running_sidecar(endpoint, extra_env=env) as sidecar, grpc.insecure_channel(sidecar.listen_endpoint) as ch:
            export_traces(ch, trace_request([genai_span("chat"), genai_span("embeddings")], resource=RESOURCE))
            export_traces(ch, trace_request([genai_span("chat", model="gpt-4o")], resource=RESOURCE))
        code, lines, err = finished(listener)
    finally:
        listener.kill()
    assert code == 0, "\n".join(lines) + err
    # No gateway reserved for these calls: each AWU is held to §9.2 (partial).
    assert lines == [
        "GenOps v0.1 — full for 0 AWUs, partial for 3: conformant: 3 AWUs, 0 with violations, 0 violations"
    ]


def test_the_listener_reports_violations_per_awu_on_sigterm():
    listener, endpoint = start_listener("--level", "full")
    try:
        # What the sidecar wrote before issue 21, sent straight to the sink.
        before = span(
            name="chat gpt-4o",
            attributes={
                "gen_ai.request.model": "gpt-4o",
                "genops.team": "ml",
                "genops.policy.result": "warning",
            },
        )
        with grpc.insecure_channel(endpoint) as channel:
            export_traces(channel, trace_request([before]))
        listener.send_signal(signal.SIGTERM)
        code, lines, err = finished(listener)
    finally:
        listener.kill()
    assert code == 1, err
    awu = lines[0].split(" ", 1)[0]
    assert all(line.startswith(awu + " ('chat gpt-4o'): §") for line in lines[:-1])
    problems = {line.split(": ", 2)[-1] for line in lines[:-1]}
    assert "genops.policy.result 'warning' is not one of ALLOWED, BLOCKED, WARNING, RATE_LIMITED" in problems
    assert f"required event {'genops.budget.reservation'} missing" in problems  # full level: §9.1.3
    assert lines[-1].startswith("GenOps v0.1 — full: NOT conformant: 1 AWUs, 1 with violations")


def test_the_listener_with_nothing_received_reports_no_units_and_a_bad_address_is_exit_2():
    listener, _ = start_listener()
    listener.send_signal(signal.SIGINT)
    code, lines, _ = finished(listener)
    assert code == 1
    assert lines[0].startswith("no AI Workload Units found")

    both = subprocess.run(
        [sys.executable, "-m", "processor", "conformance", "x.jsonl", "--listen", "127.0.0.1:0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 2 and "one of them" in both.stderr


def test_the_auto_level_holds_a_unit_whose_runtime_reserved_to_full_compliance():
    common = {
        "gen_ai.operation.name": "chat",
        "genops.spec.version": "0.1.0",
        "genops.team": "ml",
        "genops.project": "chat-api",
        "genops.environment": "production",
        "genops.operation.name": "chat",
        "genops.operation.type": "inference",
        "genops.policy.result": "ALLOWED",
        "genops.accounting.actual": 0.01,
        "genops.accounting.unit": "USD",
    }
    partial = span(name="partial", attributes=common)
    reserved = span(name="reserved", attributes={**common, "genops.accounting.reserved": 0.02})
    report = conformance.check([trace_request([partial, reserved])], conformance.AUTO)
    assert (report.units, report.full_units) == (2, 1)
    assert {(v.span_name, v.problem) for v in report.violations} == {
        ("reserved", "required event genops.policy.evaluated missing"),
        ("reserved", "required event genops.budget.reservation missing"),
        ("reserved", "required event genops.budget.reconciliation missing"),
    }
    assert conformance.render(report)[-1].startswith("GenOps v0.1 — full for 1 AWUs, partial for 1: NOT conformant")


@pytest.mark.e2e
def test_the_listener_as_the_backend_of_the_real_collector_loop_passes_the_sidecar_output(tmp_path):
    """apps -> Collector (shipped config) -> sidecar -> Collector -> conformance sink."""
    listener, endpoint = start_listener("--count", "1", "--level", "auto")
    try:
        ports, sidecar_port = CollectorPorts(), free_port()
        env = loop_collector_env(ports, f"127.0.0.1:{sidecar_port}", endpoint, **FAST_RETRY_ENV)
        sidecar_env = {"GENOPS_POLICY_STATE_BACKEND": "memory", "GENOPS_POLICY_STATE_PATH": str(tmp_path / "x.sqlite")}
        with (
            running_collector(SHIPPED_COLLECTOR_CONFIG, env, ports.health),
            running_sidecar(ports.return_grpc_endpoint, listen_port=sidecar_port, extra_env=sidecar_env),
            grpc.insecure_channel(ports.apps_grpc_endpoint) as channel,
        ):
            spans = [genai_span("chat"), genai_span("embeddings"), span(name="GET /", attributes={"http.route": "/"})]
            export_traces(channel, trace_request(spans, resource=RESOURCE))
            # (Three spans are one batch: the Collector sends them on as one request.)
            code, lines, err = finished(listener)
    finally:
        listener.kill()
    assert code == 0, "\n".join(lines) + err
    assert lines == [
        "GenOps v0.1 — full for 0 AWUs, partial for 2: conformant: 2 AWUs, 0 with violations, 0 violations"
    ]
