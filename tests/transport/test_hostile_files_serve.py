"""A real `serve` process whose pricing directory (a ConfigMap volume) is rewritten with hostile
files: it keeps answering, its memory stays bounded, SIGTERM stops it in time, and
`validate-config` refuses the same files with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.support.collector_harness import free_port
from tests.support.configmap_volume import ConfigMapVolume
from tests.support.cost_helpers import valid_table
from tests.support.hostile_files import ALIAS_BOMB, sparse
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import OtlpSink
from tests.support.serve import child_pids, http_get, sample, start_sidecar, terminate, wait_ready

GRACE_SECONDS = 3
MAX_PEAK_RSS_KIB = 600 * 1024
CATASTROPHIC = "(a+)+b"
LOOKAHEAD = "(?=gpt)gpt.*"


def table_with_regex(pattern: str, version: str = "v1") -> str:
    return valid_table(version) + f"  - {{model: {json.dumps(pattern)}, match: regex, input: 1, output: 1}}\n"


def big_valid_table(size: int) -> str:
    lines = ['version: "big"', "provider: openai", "models:"]
    count = 0
    while sum(map(len, lines)) < size:
        lines.append(f"  - {{model: m-{count}-abcdefgh, input: 1.5, output: 2.5, aliases: [a-{count}, b-{count}]}}")
        count += 1
    return "\n".join(lines) + "\n"


def sidecar_env(sink: OtlpSink, pricing: Path, tmp_path: Path) -> tuple[dict[str, str], str, str]:
    grpc_listen, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {
        "GENOPS_SERVER_LISTEN": grpc_listen,
        "GENOPS_SERVER_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
        "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
        "GENOPS_HTTP_LISTEN": http,
        "GENOPS_COST_PRICING_FILE": str(pricing),
        "GENOPS_COST_RELOAD_INTERVAL_SECONDS": "0.2",
        "GENOPS_POLICY_STATE_PATH": str(tmp_path / "state.sqlite"),
    }
    return env, grpc_listen, http


def round_trip(grpc_listen: str, sink: OtlpSink, name: str, model: str) -> dict:
    attributes = {"gen_ai.system": "openai", "gen_ai.request.model": model, "gen_ai.usage.input_tokens": 1_000_000}
    with grpc.insecure_channel(grpc_listen) as channel:
        export_traces(channel, trace_request([span(name=name, attributes=attributes)]))
    (received,) = [s for s in sink.spans() if s.span.name == name]
    return received.attributes


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def wait_invalid_reloads(http: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (
                sample(http_get(f"http://{http}/metrics")[1], "genops_pricing_reload_total", 'outcome="invalid"')
                >= count
            ):
                return
        except AssertionError:
            pass  # no invalid reload counted yet
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} invalid reloads counted")


def publish_oversized(volume: ConfigMapVolume) -> None:
    volume.publish({"pricing.yaml": ""})
    sparse(volume.root / "..data" / "pricing.yaml", 100 * 1024 * 1024)


def test_hostile_pricing_reloads_neither_stall_requests_nor_exhaust_memory_nor_block_sigterm(sink, tmp_path):
    volume = ConfigMapVolume(tmp_path / "pricing")
    volume.root.mkdir()
    volume.publish({"pricing.yaml": table_with_regex(CATASTROPHIC)})
    env, grpc_listen, http = sidecar_env(sink, volume.root, tmp_path)
    process = start_sidecar(env)
    stderr = ""
    try:
        wait_ready(process, http)
        # Backtracking would take days on 40 characters; the span comes back unpriced at once.
        assert "genops.cost.total" not in round_trip(grpc_listen, sink, "catastrophic", "a" * 40)
        assert round_trip(grpc_listen, sink, "regex", "aab")["genops.cost.total"] == pytest.approx(1.0)
        hostile = [
            lambda: volume.publish({"pricing.yaml": ALIAS_BOMB}),
            lambda: publish_oversized(volume),
            lambda: volume.publish({"pricing.yaml": table_with_regex(LOOKAHEAD, "v2")}),
        ]
        for count, publish in enumerate(hostile, start=1):
            publish()
            wait_invalid_reloads(http, count)
            received = round_trip(grpc_listen, sink, f"after-{count}", "gpt-4o")
            assert received["genops.cost.total"] == pytest.approx(2.5)
            assert received["genops.cost.pricing_version"] == "v1"
        assert peak_rss_kib(process.pid) < MAX_PEAK_RSS_KIB
    finally:
        started = time.monotonic()
        stderr = terminate(process, timeout=GRACE_SECONDS + 15)
        stopped_after = time.monotonic() - started
    assert process.returncode == 0, stderr
    assert stopped_after < GRACE_SECONDS + 15
    rejections = [line for line in stderr.splitlines() if "reload rejected" in line]
    assert len(rejections) == 3, stderr[-3000:]
    assert all(len(line) < 3000 for line in rejections)
    assert "Traceback" not in stderr


def test_sigterm_during_a_long_reload_stops_the_sidecar_and_its_loader(sink, tmp_path):
    volume = ConfigMapVolume(tmp_path / "pricing")
    volume.root.mkdir()
    volume.publish({"pricing.yaml": valid_table("v1")})
    env, grpc_listen, http = sidecar_env(sink, volume.root, tmp_path)
    process = start_sidecar(env)
    loaders: list[int] = []
    try:
        wait_ready(process, http)
        # Just under the size cap: seconds of parsing, done by a child process.
        volume.publish({"pricing.yaml": big_valid_table(7 * 1024 * 1024)})
        deadline = time.monotonic() + 30
        while not loaders and time.monotonic() < deadline:
            loaders = [
                p for p in child_pids(process.pid) if b"isolated_load" in Path(f"/proc/{p}/cmdline").read_bytes()
            ]
            time.sleep(0.02)
        assert loaders, "no reload started"
        assert round_trip(grpc_listen, sink, "during-reload", "gpt-4o")["genops.cost.total"] == pytest.approx(2.5)
    finally:
        stderr = terminate(process, timeout=GRACE_SECONDS + 15)
    assert process.returncode == 0, stderr
    assert "[killed" not in stderr
    assert not any(os.path.exists(f"/proc/{pid}") for pid in loaders)


def validate(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "processor", "validate-config", str(config)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("bad", ["alias-bomb", "oversized", "lookahead", "5000-groups", "policy-bomb", "rules-bomb"])
def test_validate_config_refuses_hostile_files_with_one_line(tmp_path, bad):
    pricing = tmp_path / "pricing.yaml"
    pricing.write_text(valid_table())
    extra = ""
    if bad == "alias-bomb":
        pricing.write_text(ALIAS_BOMB)
    elif bad == "oversized":
        sparse(pricing, 100 * 1024 * 1024)
    elif bad == "lookahead":
        pricing.write_text(table_with_regex(LOOKAHEAD))
    elif bad == "5000-groups":
        pricing.write_text(table_with_regex("(" * 5000 + "x" + ")" * 5000))
    elif bad == "policy-bomb":
        (tmp_path / "policy.yaml").write_text("budgets: &b [{name: x, limit_usd: 1, period: daily}]\npolicies: *b\n")
        extra = f"policy: {{policy_file: {tmp_path / 'policy.yaml'}, state_path: {tmp_path / 'state.sqlite'}}}\n"
    else:
        (tmp_path / "rules.yaml").write_text("ignored_keys: &k [a]\nallowed_keys: *k\n")
        extra = f"redaction: {{rules_file: {tmp_path / 'rules.yaml'}}}\n"
    config = tmp_path / "config.yaml"
    config.write_text(f"cost: {{pricing_file: {pricing}}}\n{extra}")
    result = validate(config)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("invalid:"), result.stderr
    assert len(lines[0]) < 2000
