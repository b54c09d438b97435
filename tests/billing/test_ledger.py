"""Issue 22 item 1: the spend ledger kept in the budget state store, bounded, redacted, readable."""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest
from prometheus_client import CollectorRegistry

from processor.config import LedgerConfig, PolicyConfig, load_config
from processor.stages.policy.ledger import OVERFLOW, read_rows
from processor.stages.policy.stage import build_policy_stage
from processor.stages.redaction.stage import build_outbound
from tests.support.cli import base_env
from tests.support.clock import DAY_START
from tests.support.genai_spans import priced
from tests.support.http_sidecar import TOKEN, Sidecar, get
from tests.support.otlp_builders import trace_request
from tests.support.otlp_export import export_traces
from tests.support.pipeline_runs import run_pipeline
from tests.support.sample_values import EMAIL
from tests.support.serve import start_sidecar, terminate, wait_ready

DAY = "2026-12-01"


def ledger_stage(registry=None, **ledger):
    config = PolicyConfig(state_backend="memory", ledger=LedgerConfig(enabled=True, keys="team", **ledger))
    return build_policy_stage(config, registry or CollectorRegistry(), build_outbound(load_config().redaction))


@pytest.mark.parametrize("native", ["1", "0"])
def test_rows_past_the_daily_cap_go_to_one_overflow_row_and_are_counted(monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    registry = CollectorRegistry()
    stage = ledger_stage(registry, max_rows_per_day=2)
    try:
        teams = ["a", "b", "c", "d", "e"]
        run_pipeline(stage, trace_request([priced(team, 0.25) for team in teams]))
        # A later batch of a team already admitted keeps its row.
        run_pipeline(stage, trace_request([priced("a", 0.5)]))
        rows = {(r.model, dict(r.keys)["team"]): r for r in read_rows(stage.store)}
    finally:
        stage.close()
    assert set(rows) == {("gpt-4o", "a"), ("gpt-4o", "b"), (OVERFLOW, OVERFLOW)}
    assert rows[("gpt-4o", "a")].usd_total == 0.75 and rows[("gpt-4o", "a")].spans == 2
    overflow = rows[(OVERFLOW, OVERFLOW)]
    # No spend is lost to the cap: the three teams past it are all in the overflow row.
    assert (overflow.usd_total, overflow.spans, overflow.tokens["input"]) == (0.75, 3, 3000)
    assert overflow.usd_parts == {"input": 0.5625, "output": 0.1875}
    assert registry.get_sample_value("genops_ledger_overflow_spans_total") == 3


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_bad_cost_part_on_one_span_changes_no_other_spans_row(monkeypatch, native):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", native)
    stage = ledger_stage()
    try:
        spans = [
            priced("ml", 0.25, **{"genops.cost.input": [1, 2]}),
            priced("ml", 0.25, **{"genops.cost.input": "not a number"}),
            priced("ads", 0.5),
            priced("web", 0.25, **{"genops.cost.output": float("nan")}),
        ]
        written = run_pipeline(stage, trace_request(spans))
        rows = {dict(r.keys)["team"]: r for r in read_rows(stage.store)}
    finally:
        stage.close()
    assert len(written) == 4
    assert rows["ads"].usd_total == 0.5 and rows["ads"].usd_parts == {"input": 0.375, "output": 0.125}
    # The bad parts are left out for their own spans; their totals and token counts still count.
    assert rows["ml"].usd_total == 0.5 and rows["ml"].spans == 2 and rows["ml"].tokens["input"] == 2000
    assert rows["web"].usd_parts == {"input": 0.1875}


def test_ledger_in_redis_is_charged_once_per_batch_and_kept_for_the_retention_days(tmp_path, redis_url):
    import redis

    ledger = LedgerConfig(enabled=True, keys="team", retention_days=3)
    # (state_path: where each pod's guard would keep charges while Redis is down.)
    stages = [
        build_policy_stage(
            PolicyConfig(
                state_backend="redis", redis_url=redis_url, state_path=str(tmp_path / f"pod{i}" / "s"), ledger=ledger
            ),
            CollectorRegistry(),
        )
        for i in range(2)
    ]
    request = trace_request([priced("ml", 0.25), priced("ml", 0.5, model="gpt-4o-mini")])
    try:
        # The same request through two sidecars sharing Redis (a retry landing on another pod).
        for stage in stages:
            run_pipeline(stage, request)
        run_pipeline(stages[0], trace_request([priced("ml", 0.125)]))
        rows = {r.model: r for r in read_rows(stages[1].store)}
    finally:
        for stage in stages:
            stage.close()
    assert rows["gpt-4o"].usd_total == 0.375 and rows["gpt-4o"].spans == 2
    assert rows["gpt-4o-mini"].usd_total == 0.5 and rows["gpt-4o-mini"].spans == 1
    client = redis.Redis.from_url(redis_url)
    keys = [k for k in client.keys("genops:{budget}:ledger|*") if b'"2026-12-01"' in k]
    assert keys
    # Kept until the end of the day plus 3 days; that day is past already, so: a day from now.
    expected = max(DAY_START + 86400 + 3 * 86400, int(time.time()) + 86400)
    assert all(abs(client.expiretime(k) - expected) <= 5 for k in keys)
    client.close()


POLICY_LEDGER_ENV = {
    "GENOPS_POLICY_LEDGER_ENABLED": "true",
    "GENOPS_POLICY_LEDGER_KEYS": "team,project",
    "GENOPS_POLICY_STATE_BACKEND": "sqlite",
}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_get_v1_ledger_from_a_running_sidecar_answers_redacted_rows(tmp_path, workers):
    from tests.support.otlp_sink import OtlpSink

    sink = OtlpSink().start()
    env = base_env(tmp_path)
    env.update(POLICY_LEDGER_ENV)
    env.update(
        {
            "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
            "GENOPS_SERVER_WORKERS": workers,
            "GENOPS_POLICY_STATE_PATH": str(tmp_path / "state.sqlite"),
        }
    )
    process = start_sidecar(env)
    try:
        wait_ready(process, env["GENOPS_HTTP_LISTEN"], timeout=60)
        with grpc.insecure_channel(env["GENOPS_SERVER_LISTEN"]) as channel:
            export_traces(channel, trace_request([priced(EMAIL, 0.25), priced("search", 0.5)]))
        base = f"http://{env['GENOPS_HTTP_LISTEN']}/v1/ledger"
        deadline = time.monotonic() + 20
        while True:
            status, _, body = get(f"{base}?since={DAY}&until={DAY}")
            rows = json.loads(body)["rows"] if status == 200 else []
            if len(rows) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200, body
        assert EMAIL.encode() not in body and b"example.com" not in body
        teams = sorted(r["keys"]["team"] for r in rows)
        assert len(teams) == 2 and "search" in teams
        by_team = {r["keys"]["team"]: r for r in rows}
        assert by_team["search"]["usd_total"] == 0.5 and by_team["search"]["keys"]["project"] == "chat-api"
        status, _, body = get(f"{base}?team=search")
        assert status == 200 and [r["usd_total"] for r in json.loads(body)["rows"]] == [0.5]
        assert get(f"{base}?since=yesterday")[0] == 400
        assert json.loads(get(f"{base}?since=2026-12-02")[2])["rows"] == []
    finally:
        stderr = terminate(process)
        sink.stop()
    assert EMAIL not in stderr
    # The command reads the same file, redacted the same way.
    from tests.support.cli import run_cli

    result = run_cli({**env, "GENOPS_SERVER_WORKERS": "1"}, "ledger", "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert EMAIL not in result.stdout and "search" in result.stdout
    assert os.path.exists(tmp_path / "state.sqlite")


def test_ledger_keys_outside_the_attribution_dimensions_are_a_config_error(tmp_path):
    from tests.support.cli import run_cli

    env = base_env(tmp_path)
    env.update({"GENOPS_POLICY_LEDGER_ENABLED": "true", "GENOPS_POLICY_LEDGER_KEYS": "team,colour"})
    result = run_cli(env, "validate-config")
    assert result.returncode == 1
    assert "policy.ledger.keys: unknown dimension 'colour'" in result.stderr


def test_get_v1_ledger_takes_the_budget_api_token(tmp_path):

    with Sidecar(
        tmp_path, GENOPS_BUDGET_API_TOKEN=TOKEN, **POLICY_LEDGER_ENV | {"GENOPS_POLICY_STATE_BACKEND": "memory"}
    ) as sidecar:
        status, headers, _ = get(sidecar.url("/v1/ledger"))
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert get(sidecar.url("/v1/ledger"), f"Bearer {TOKEN}x")[0] == 401
        status, _, body = get(sidecar.url("/v1/ledger"), f"Bearer {TOKEN}")
        assert (status, json.loads(body)) == (200, {"rows": []})
