"""Issue 22: cardinality caps counted in the state store (the ledger's max_rows_per_day, and the
subjects of budgets keyed on a span attribute), shared by processes and kept across restarts."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.config import LedgerConfig, PolicyConfig
from processor.stages.policy.budget_state import MemoryStore, SqliteStore
from processor.stages.policy.ledger import OVERFLOW, read_rows
from processor.stages.policy.stage import build_policy_stage
from processor.stages.policy.store_caps import StoreCap
from tests.support.genai_spans import priced
from tests.support.http_sidecar import get
from tests.support.otlp_builders import trace_request
from tests.support.pipeline_runs import run_pipeline
from tests.support.sample_values import EMAIL


def _config(backend: str, tmp_path, redis: str, name: str) -> PolicyConfig:
    ledger = LedgerConfig(enabled=True, keys="team", max_rows_per_day=2)
    if backend == "redis":
        return PolicyConfig(
            state_backend="redis", redis_url=redis, state_path=str(tmp_path / name / "s"), ledger=ledger
        )
    return PolicyConfig(state_backend="sqlite", state_path=str(tmp_path / "state.sqlite"), ledger=ledger)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_ledger_row_cap_holds_across_processes_and_restarts(tmp_path, redis_url, backend):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    # Two processes sharing the store (a pod's workers, or DaemonSet pods on one Redis).
    first = build_policy_stage(_config(backend, tmp_path, redis_url, "a"), CollectorRegistry())
    second = build_policy_stage(_config(backend, tmp_path, redis_url, "b"), CollectorRegistry())
    try:
        run_pipeline(first, trace_request([priced("a", 0.25), priced("b", 0.25)]))
        # Before, each process counted the cap alone: c and d got rows of their own here.
        request = trace_request([priced("c", 0.25), priced("d", 0.5), priced("a", 0.125)])
        run_pipeline(second, request)
        # The same request again (a Collector retry): charged once, to the same rows.
        run_pipeline(second, request)
    finally:
        first.close()
        second.close()
    restarted = build_policy_stage(_config(backend, tmp_path, redis_url, "c"), CollectorRegistry())
    try:
        run_pipeline(restarted, trace_request([priced("e", 1.0), priced("b", 2.0)]))
        rows = {(r.model, dict(r.keys)["team"]): r for r in read_rows(restarted.store)}
    finally:
        restarted.close()
    assert set(rows) == {("gpt-4o", "a"), ("gpt-4o", "b"), (OVERFLOW, OVERFLOW)}
    assert (rows[("gpt-4o", "a")].usd_total, rows[("gpt-4o", "a")].spans) == (0.375, 2)
    assert (rows[("gpt-4o", "b")].usd_total, rows[("gpt-4o", "b")].spans) == (2.25, 2)
    # c 0.25 + d 0.5 (once: the retry added nothing) + e 1.0.
    assert (rows[(OVERFLOW, OVERFLOW)].usd_total, rows[(OVERFLOW, OVERFLOW)].spans) == (1.75, 3)


def test_every_store_admits_the_same_members(tmp_path, redis_url):
    import redis

    from processor.stages.policy.budget_state import RedisStore

    redis.Redis.from_url(redis_url).flushdb()
    stores = [MemoryStore(), SqliteStore(str(tmp_path / "s.sqlite")), RedisStore(redis_url)]
    try:
        for store in stores:
            # Newcomers smallest first while there is room; admitted ones stay admitted.
            assert store.admit("f", ["z", "b", "y"], 2, 2**40) == {"b", "y"}
            assert store.admit("f", ["a", "z", "y"], 2, 2**40) == {"y"}
            assert store.admit("g", ["a"], 1, 2**40) == {"a"}
            # An expired family starts over.
            assert store.admit("old", ["a"], 1, 1) == {"a"}
            assert store.admit("old", ["b"], 1, 1) == {"b"}
    finally:
        for store in stores:
            store.close()


def test_a_store_that_does_not_answer_leaves_the_cap_to_the_process():
    class Down(MemoryStore):
        def admit(self, family, members, cap, expires_at):
            raise ConnectionError("down")

    cap = StoreCap(2, "test")
    store = Down()
    assert cap.admitted(store, "f", {"c", "a", "b"}, 2**40) == {"a", "b"}
    assert cap.admitted(store, "f", {"a", "d"}, 2**40) == {"a"}


CONVERSATION_POLICY = """
budgets:
  - name: per-conversation
    attribute: gen_ai.conversation.id
    limit_usd: 1.0
    period: daily
    warn_at: [0.5]
    max_subjects: 2
    mode: enforced
"""


def _attribute_stage(backend: str, tmp_path, redis: str, name: str, policy: str = CONVERSATION_POLICY):
    from processor.config import load_config
    from processor.stages.redaction.stage import build_outbound

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy)
    if backend == "redis":
        config = PolicyConfig(
            policy_file=str(policy_file),
            state_backend="redis",
            redis_url=redis,
            state_path=str(tmp_path / name / "s"),
        )
    else:
        config = PolicyConfig(
            policy_file=str(policy_file), state_backend="sqlite", state_path=str(tmp_path / "state.sqlite")
        )
    return build_policy_stage(config, CollectorRegistry(), build_outbound(load_config().redaction))


def conversation(conversation_id: str, cost: float, **extra):
    return priced("ml", cost, **{"gen_ai.conversation.id": conversation_id, **extra})


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_budget_per_conversation_is_charged_once_and_capped_in_the_store(tmp_path, redis_url, backend):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    first = _attribute_stage(backend, tmp_path, redis_url, "a")
    second = _attribute_stage(backend, tmp_path, redis_url, "b")
    try:
        one = run_pipeline(first, trace_request([conversation("c1", 0.25), conversation("c2", 0.75)]))
        request = trace_request([conversation("c1", 0.5), conversation("c3", 0.25), conversation("c4", 0.5)])
        two = run_pipeline(second, request)
        # A Collector retry, on the other process: the same tags, charged once.
        again = run_pipeline(first, request)
        window = "per-conversation|{}|2026-12-01"
        stored = first.store.read([window.format(s) for s in ("c1", "c2", "c3", "c4", OVERFLOW)])
    finally:
        first.close()
        second.close()
    consumed = "genops.budget.consumed"
    assert [s[consumed] for s in one] == [0.25, 0.75]
    # c1: 0.25 + 0.5; c3 and c4 came past the cap of two conversations: one overflow window.
    assert [s[consumed] for s in two] == [0.75, 0.25, 0.75]
    assert [s[consumed] for s in again] == [s[consumed] for s in two]
    assert stored == {
        window.format("c1"): 0.75,
        window.format("c2"): 0.75,
        window.format("c3"): 0.0,
        window.format("c4"): 0.0,
        window.format(OVERFLOW): 0.75,
    }
    # c1 crossed its 0.5 warn level on its second span; c2 on its first.
    alerts = [
        (e[1]["genops.budget.subject"], e[1]["genops.budget.threshold"])
        for s in one + two
        for e in s["_events"]
        if e[0] == "genops.budget.alert"
    ]
    assert sorted(alerts) == [("__overflow__", 0.5), ("c1", 0.5), ("c2", 0.5)]


def test_attribute_budget_subjects_are_redacted_before_they_are_keys(tmp_path, redis_url):

    policy = CONVERSATION_POLICY.replace("gen_ai.conversation.id", "user.id")
    stage = _attribute_stage("sqlite", tmp_path, redis_url, "a", policy)
    try:
        written = run_pipeline(stage, trace_request([priced("ml", 0.75, **{"user.id": EMAIL})]))
        keys = list(stage.store.scan("per-conversation|"))
    finally:
        stage.close()
    assert written[0]["genops.budget.consumed"] == 0.75
    assert len(keys) == 1 and EMAIL not in keys[0] and "@" not in keys[0]


def test_a_reload_naming_an_attribute_the_decoder_does_not_read_keeps_the_previous_file(tmp_path):
    from processor.stages.policy.policy_file import PolicyFileError, PolicySource, parse_policy_file

    path = tmp_path / "policy.yaml"
    path.write_text("budgets: [{name: all, limit_usd: 5, period: daily}]\n")
    source = PolicySource(str(path), interval=0)
    try:
        assert source.readable(frozenset({"session.id"})) == frozenset({"session.id"})
        path.write_text(CONVERSATION_POLICY)
        assert source.watcher is not None and source.watcher.check() is True
        # gen_ai.conversation.id is not decoded: its budget would never be charged.
        assert [b.name for b in source.current().budgets] == ["all"]
        path.write_text(CONVERSATION_POLICY.replace("gen_ai.conversation.id", "session.id"))
        assert source.watcher.check() is True
        assert [b.attribute for b in source.current().budgets] == ["session.id"]
    finally:
        source.close()
    with pytest.raises(PolicyFileError, match="not both"):
        parse_policy_file(CONVERSATION_POLICY.replace("    max_subjects: 2", "    dimension: team"))


def _reconciled(tmp_path) -> tuple[PolicyConfig, int]:
    """A state file whose ledger holds 0.75 USD of gpt-4o on 2026-12-01, reconciled by the
    command against an OpenAI costs report billing 1.0 USD that day."""
    import datetime as dt
    import json
    import os
    import subprocess
    import sys

    state = tmp_path / "state.sqlite"
    config = PolicyConfig(state_backend="sqlite", state_path=str(state), ledger=LedgerConfig(enabled=True))
    stage = build_policy_stage(config, CollectorRegistry())
    try:
        run_pipeline(stage, trace_request([priced("ml", 0.25), priced("ads", 0.5)]))
    finally:
        stage.close()
    start = int(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp())
    result = {"object": "organization.costs.result", "amount": {"value": 1.0, "currency": "usd"}}
    bucket = {"object": "bucket", "start_time": start, "end_time": start + 86400, "results": [
        {**result, "line_item": "gpt-4o-2024-08-06, input", "project_id": "p"}
    ]}  # fmt: skip
    report = tmp_path / "openai.json"
    report.write_text(json.dumps({"object": "page", "data": [bucket], "has_more": False}))
    sidecar_config = tmp_path / "sidecar.yaml"
    sidecar_config.write_text(f"policy:\n  state_backend: sqlite\n  state_path: {state}\n  ledger: {{enabled: true}}\n")
    command = [sys.executable, "-m", "processor", "reconcile", "--openai-costs", str(report)]
    run = subprocess.run(
        [*command, "--config", str(sidecar_config)], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert run.returncode == 0, run.stderr
    return config, start


def test_the_drift_of_the_last_reconciled_day_shows_on_the_sidecars_metrics(tmp_path):
    from prometheus_client import generate_latest

    config, start = _reconciled(tmp_path)
    # A sidecar on that state (as after the CronJob ran): billed 1.0, attributed 0.75.
    registry = CollectorRegistry()
    stage = build_policy_stage(config, registry)
    try:
        assert stage.drift is not None
        stage.drift.refresh()
        exposed = generate_latest(registry).decode()
    finally:
        stage.close()
    assert registry.get_sample_value("genops_reconciliation_drift_ratio") == 0.25
    assert registry.get_sample_value("genops_reconciliation_day_timestamp_seconds") == start
    assert "genops_reconciliation_drift_ratio 0.25" in exposed


def test_a_serving_sidecar_with_workers_shows_the_recorded_drift(tmp_path):
    import time

    from tests.support.cli import base_env
    from tests.support.serve import start_sidecar, terminate, wait_ready

    config, start = _reconciled(tmp_path)
    env = base_env(tmp_path)
    env.update(
        {
            "GENOPS_SERVER_WORKERS": "2",
            "GENOPS_POLICY_STATE_BACKEND": "sqlite",
            "GENOPS_POLICY_STATE_PATH": config.state_path,
        }
    )
    process = start_sidecar(env)
    try:
        wait_ready(process, env["GENOPS_HTTP_LISTEN"], timeout=60)
        # Each worker reads the store when it starts: poll until one of them has.
        deadline = time.monotonic() + 30
        while True:
            body = get(f"http://{env['GENOPS_HTTP_LISTEN']}/metrics")[2].decode()
            if "genops_reconciliation_drift_ratio" in body or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        terminate(process)
    lines = {line.split()[0]: float(line.split()[1]) for line in body.splitlines() if line.startswith("genops_recon")}
    assert lines == {
        "genops_reconciliation_drift_ratio": 0.25,
        "genops_reconciliation_day_timestamp_seconds": float(start),
    }


def test_no_reconciliation_recorded_shows_no_drift():
    registry = CollectorRegistry()
    from processor.stages.policy.reconcile_metrics import DriftGauge

    gauge = DriftGauge(MemoryStore(), registry, refresh_seconds=0)
    assert gauge.refresh() is None
    # Not a drift of 0: no figure at all until a run is recorded.
    assert registry.get_sample_value("genops_reconciliation_drift_ratio") is None


def test_the_budget_status_api_answers_for_an_attribute_budget(tmp_path, redis_url):
    import datetime as dt
    import json

    from processor.stages.policy.budget_api import http_budget_status

    stage = _attribute_stage("sqlite", tmp_path, redis_url, "a")
    day = dt.datetime(2026, 12, 1, 18, tzinfo=dt.UTC)
    try:
        run_pipeline(stage, trace_request([conversation("c1", 0.75), conversation("c1", 0.5)]))
        (status,) = stage.budget_status.status({"gen_ai.conversation.id": "c1"}, now=day)
        # No conversation named: no per-conversation window applies (before: a global one, at 0).
        assert stage.budget_status.status({}, now=day) == []
        code, body, _ = http_budget_status(stage.budget_status, "/v1/budgets?gen_ai.conversation.id=c9")
        assert code == 200 and json.loads(body)["budgets"][0]["consumed_usd"] == 0.0
        assert http_budget_status(stage.budget_status, "/v1/budgets?user.id=u")[0] == 400
    finally:
        stage.close()
    assert (status.dimension, status.subject, status.consumed_usd) == ("gen_ai.conversation.id", "c1", 1.25)
    assert status.exceeded and status.blocking
