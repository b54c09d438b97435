"""A wheel built from the repository, installed the ordinary way into a fresh virtual environment,
prices and redacts with `genops-sidecar serve` on its packaged defaults (no source checkout around)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.stages.cost.pricing_table import TABLE_SUFFIXES
from processor.stages.cost.stage import COST_MODEL, COST_TOTAL, CostStage
from processor.stages.redaction.stage import COUNT_KEY
from tests.support.collector_harness import free_port
from tests.support.cost_helpers import process
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import OtlpSink
from tests.support.serve import terminate, wait_ready

REPO = Path(__file__).resolve().parents[1]
GEN_AI = {
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 300,
}
PROMPT = "my card is 4111 1111 1111 1111, summarise the contract"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The venv's bin/ after `pip install <wheel>`."""
    work = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ)
    # The extension's Rust build reuses the editable install's (or the caller's) compiled dependencies.
    env.setdefault("CARGO_TARGET_DIR", str(REPO / "processor" / "native" / "target"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(REPO)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("genops_sidecar-*.whl")
    venv.create(work / "venv", with_pip=True)
    bin_dir = work / "venv" / "bin"
    pip = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return bin_dir


def test_the_wheel_holds_every_default_pricing_table_and_the_redaction_defaults(installed):
    probe = (
        "import json, processor, processor.stages.cost.pricing_table as t, processor.stages.redaction.rules as r;"
        "print(json.dumps([processor.__file__, str(t.default_table_path()), sorted(p.name for p in"
        " t.default_table_path().iterdir()), len(r.default_rules_text()) > 0]))"
    )
    # Run outside the repository, so nothing can be found through it.
    out = subprocess.run([str(installed / "python"), "-c", probe], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    package_file, tables_dir, names, has_redaction = json.loads(out.stdout)
    venv_root = installed.parent.resolve()
    assert Path(package_file).resolve().is_relative_to(venv_root)
    assert Path(tables_dir).resolve().is_relative_to(venv_root)
    shipped = sorted(p.name for p in (REPO / "pricing_tables").iterdir() if p.suffix in TABLE_SUFFIXES)
    assert names == shipped
    assert has_redaction


def test_serve_from_the_wheel_prices_and_redacts_a_span_on_its_defaults(installed, tmp_path):
    sink = OtlpSink().start()
    grpc_port, http = free_port(), f"127.0.0.1:{free_port()}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GENOPS_", "PYTHON"))}
    env.update(
        GENOPS_SERVER_LISTEN=f"127.0.0.1:{grpc_port}",
        GENOPS_DOWNSTREAM_ENDPOINT=sink.endpoint,
        GENOPS_HTTP_LISTEN=http,
    )
    process_ = subprocess.Popen(
        [str(installed / "genops-sidecar"), "serve"],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(process_, http, timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            export_traces(channel, trace_request([span(attributes={**GEN_AI, "gen_ai.prompt": PROMPT})]))
        (received,) = sink.wait_for_spans(1)
    finally:
        stderr = terminate(process_)
        sink.stop()
    assert process_.returncode == 0, stderr
    # The same price the repository's own tables give.
    stage = CostStage(CostConfig(pricing_file=str(REPO / "pricing_tables")), CollectorRegistry(), watch=False)
    _, (expected,) = process(stage, [GEN_AI])
    attributes = received.attributes
    assert attributes[COST_MODEL] == "gpt-4o-mini"
    assert attributes[COST_TOTAL] == pytest.approx(expected[COST_TOTAL]) and expected[COST_TOTAL] > 0
    assert PROMPT not in str(attributes) and "4111" not in str(attributes)
    assert attributes[COUNT_KEY] >= 1
