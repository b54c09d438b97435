"""The README's worked gateway example, run as written against a real `genops-sidecar serve`: the
reservation is allowed, the span the example emits with the OpenTelemetry SDK arrives downstream
reconciled with its reservation (GenOps §3), and the hold is charged once at its actual cost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from processor.core import genops_semconv as gs
from tests.support.collector_harness import free_port
from tests.support.otlp_sink import OtlpSink
from tests.support.serve import start_sidecar, terminate, wait_ready

README = Path(__file__).resolve().parents[2] / "README.md"
TOKEN = "gateway-example-token-0123456789"
# gpt-4o at $2.50 / $10 per million tokens: 1,200 input and 300 output tokens.
ACTUAL_USD = 1200 * 2.5e-6 + 300 * 10e-6
RESERVED_USD = 0.02


def example_code() -> str:
    found = re.search(r"<!-- gateway-example -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert found, "the README lost its gateway example"
    return found.group(1)


@pytest.fixture
def sidecar(tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"budgets": [{"name": "ml", "limit_usd": 5, "period": "daily", "dimension": "team"}]}))
    sink = OtlpSink().start()
    grpc_port, http_port = free_port(), free_port()
    process = start_sidecar(
        {
            "GENOPS_SERVER_LISTEN": f"127.0.0.1:{grpc_port}",
            "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
            "GENOPS_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "GENOPS_POLICY_POLICY_FILE": str(policy),
            "GENOPS_POLICY_STATE_BACKEND": "sqlite",
            "GENOPS_POLICY_STATE_PATH": str(tmp_path / "budgets.sqlite"),
            "GENOPS_BUDGET_API_TOKEN": TOKEN,
        }
    )
    try:
        wait_ready(process, f"127.0.0.1:{http_port}")
        yield grpc_port, http_port, sink
    finally:
        terminate(process)
        sink.stop()


def test_the_readme_gateway_reserves_calls_and_its_span_is_reconciled(sidecar, tmp_path):
    grpc_port, http_port, sink = sidecar
    script = tmp_path / "gateway.py"
    script.write_text(example_code())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENOPS_", "OTEL_"))}
    env |= {
        "GENOPS_BUDGET_URL": f"http://127.0.0.1:{http_port}",
        "GENOPS_BUDGET_API_TOKEN": TOKEN,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{grpc_port}",
    }
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "reservation: ALLOWED" in run.stdout

    [received] = sink.wait_for_spans(1)
    attributes = received.attributes
    assert attributes[gs.ACCOUNTING_RESERVED] == pytest.approx(RESERVED_USD)
    assert attributes[gs.ACCOUNTING_ACTUAL] == pytest.approx(ACTUAL_USD)
    assert attributes[gs.ACCOUNTING_RECONCILIATION_DELTA] == pytest.approx(ACTUAL_USD - RESERVED_USD)
    assert attributes["genops.cost.total"] == pytest.approx(ACTUAL_USD)
    events = {event.name for event in received.span.events}
    assert {gs.EVENT_BUDGET_RESERVATION, gs.EVENT_BUDGET_RECONCILIATION} <= events
    assert gs.ACCOUNTING_INCOMPLETE not in attributes
