"""Spend is never lost when the budget state store fails: a real redis-server killed (SIGKILL) and
hung (SIGSTOP) under traffic, a SQLite file deleted or corrupt; every cent is charged exactly once
after the store is back, and requests never wait on a store known to be down."""

from __future__ import annotations

import json
import os
import signal
import time

from prometheus_client import CollectorRegistry, generate_latest

from processor.config import PolicyConfig
from processor.core.decode import decode_traces
from processor.stages.policy.budget_state import MemoryStore
from processor.stages.policy.stage import build_policy_stage
from tests.support.clock import START_NS
from tests.support.collector_harness import free_port
from tests.support.otlp_builders import span, trace_request
from tests.support.redis_server import start_redis

POLICY = {"budgets": [{"name": "all", "limit_usd": 1000.0, "period": "daily", "mode": "enforced"}]}


def stage_with(tmp_path, **store):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY))
    registry = CollectorRegistry()
    config = PolicyConfig(enabled=True, policy_file=str(path), **store)
    return build_policy_stage(config, registry), registry


# The attribution the GenOps spec asks of every GenAI span (without it the result is a WARNING).
ATTRIBUTED = {"genops.team": "ml", "genops.environment": "production"}


def send(stage, costs: list[float]) -> list:
    spans = [
        span(
            attributes={**ATTRIBUTED, "gen_ai.request.model": "gpt-4o", "genops.cost.total": cost},
            start_time_unix_nano=START_NS,
        )
        for cost in costs
    ]
    batch = decode_traces(trace_request(spans).SerializeToString(), stage.wanted_keys())
    changes = stage.process(batch)
    return changes.set_attributes["genops.policy.result"].to_list()


def charged(stage) -> float:
    status = stage.budget_status.status({})
    return status[0].consumed_usd


def wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def metric(registry, name: str) -> float | None:
    return registry.get_sample_value(name)


def test_redis_killed_and_hung_under_traffic_loses_no_cent(tmp_path):
    port = free_port()
    redis_process = start_redis(port, tmp_path)
    stage, registry = stage_with(
        tmp_path, state_backend="redis", redis_url=f"redis://127.0.0.1:{port}/0", state_path=str(tmp_path / "s.sqlite")
    )
    sent = 0.0
    try:
        for _ in range(3):
            send(stage, [0.25, 0.5])
            sent += 0.75
        os.kill(redis_process.pid, signal.SIGKILL)
        redis_process.wait()
        for _ in range(5):
            assert send(stage, [0.25, 0.125]) == ["ALLOWED", "ALLOWED"]
            sent += 0.375
        assert metric(registry, "genops_budget_store_up") == 0
        assert metric(registry, "genops_budget_store_pending_charges") == 5
        redis_process = start_redis(port, tmp_path)
        wait_for(lambda: metric(registry, "genops_budget_store_up") == 1)
        assert charged(stage) == sent

        os.kill(redis_process.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            for _ in range(8):
                assert send(stage, [0.5]) == ["ALLOWED"]
                sent += 0.5
            # One short wait to learn the store hangs; none per batch after it.
            assert time.monotonic() - began < 5
        finally:
            os.kill(redis_process.pid, signal.SIGCONT)
        wait_for(lambda: metric(registry, "genops_budget_store_up") == 1)
        assert charged(stage) == sent
        assert "127.0.0.1" not in generate_latest(registry).decode()
    finally:
        stage.close()
        redis_process.kill()
        redis_process.wait()


def test_a_sqlite_file_deleted_while_in_use_is_recreated_with_its_spend(tmp_path):
    path = tmp_path / "state" / "budgets.sqlite"
    stage, registry = stage_with(tmp_path, state_backend="sqlite", state_path=str(path))
    try:
        send(stage, [0.25, 0.5])
        assert metric(registry, "genops_budget_store_up") == 1
        path.unlink()
        wait_for(lambda: path.exists() and metric(registry, "genops_budget_store_up") == 1)
        send(stage, [0.125])
        restarted, _ = stage_with(tmp_path, state_backend="sqlite", state_path=str(path))
        assert charged(restarted) == 0.875
        restarted.close()
    finally:
        stage.close()


def test_a_corrupt_sqlite_file_keeps_charges_until_it_is_moved_away(tmp_path):
    path = tmp_path / "budgets.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    stage, registry = stage_with(tmp_path, state_backend="sqlite", state_path=str(path))
    assert send(stage, [0.25, 0.5]) == ["ALLOWED", "ALLOWED"]
    assert metric(registry, "genops_budget_store_up") == 0
    path.rename(tmp_path / "budgets.sqlite.broken")
    wait_for(lambda: metric(registry, "genops_budget_store_up") == 1)
    assert charged(stage) == 0.75
    stage.close()


def test_charges_left_by_a_process_with_this_processes_pid_are_applied(tmp_path):
    # A restarted container's worker often gets the PID of the one before it, whose spill file
    # carries that PID in its name.
    path = tmp_path / "budgets.sqlite"
    window = "all|*|" + time.strftime("%Y-%m-%d", time.gmtime(START_NS // 10**9))
    left = tmp_path / f"budgets.sqlite.pending.{os.getpid()}.jsonl"
    left.write_text(json.dumps(["before-restart", {window: 0.375}, {}]) + "\n")
    stage, registry = stage_with(tmp_path, state_backend="sqlite", state_path=str(path))
    try:
        wait_for(lambda: charged(stage) == 0.375 and metric(registry, "genops_budget_store_pending_charges") == 0)
        assert not left.exists()
    finally:
        stage.close()


def test_a_sqlite_file_corrupted_in_use_is_named_and_later_charges_land_in_its_replacement(tmp_path, capsys):
    path = tmp_path / "budgets.sqlite"
    stage, registry = stage_with(tmp_path, state_backend="sqlite", state_path=str(path))
    try:
        send(stage, [0.25])
        for file in tmp_path.glob("budgets.sqlite*"):
            if ".pending." not in file.name:
                with file.open("r+b") as out:
                    out.write(b"\xff" * max(file.stat().st_size, 4096))
        assert [r.lower() for r in send(stage, [0.5, 0.125])] == ["allowed", "allowed"]
        wait_for(lambda: metric(registry, "genops_budget_store_up") == 0)
        for file in tmp_path.glob("budgets.sqlite*"):
            if ".pending." not in file.name:
                file.rename(tmp_path / ("broken-" + file.name))
        wait_for(lambda: metric(registry, "genops_budget_store_up") == 1)
        send(stage, [0.0625])
    finally:
        stage.close()
    restarted, _ = stage_with(tmp_path, state_backend="sqlite", state_path=str(path))
    try:
        # What the corrupt file held is gone (a backup brings it back); nothing charged after it.
        assert charged(restarted) == 0.6875
    finally:
        restarted.close()
    named = [line for line in capsys.readouterr().out.splitlines() if "is not a usable SQLite database" in line]
    assert len(named) == 1 and str(path) in named[0] and "move it away" in named[0], named


def test_a_sqlite_file_another_process_holds_locked_costs_a_batch_seconds_not_the_export_timeout(tmp_path):
    import sqlite3

    path = tmp_path / "budgets.sqlite"
    stage, registry = stage_with(tmp_path, state_backend="sqlite", state_path=str(path))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        send(stage, [0.25])
        # Another worker stopped (SIGSTOP, a stuck disk) in the middle of its write.
        holder.execute("BEGIN IMMEDIATE")
        began = time.monotonic()
        assert [r.lower() for r in send(stage, [0.5])] == ["allowed"]
        assert [r.lower() for r in send(stage, [0.125])] == ["allowed"]
        assert time.monotonic() - began < 5  # the Collector gives up on an export after 10 s
        holder.execute("ROLLBACK")
        wait_for(lambda: metric(registry, "genops_budget_store_up") == 1)
        assert charged(stage) == 0.875
    finally:
        holder.close()
        stage.close()


class FlakyBackend(MemoryStore):
    """A real in-memory store that fails while `down` is set, as a dead server would."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def apply(self, fingerprint, increments, expires_at):
        if self.down:
            raise ConnectionError("connection refused to 10.0.0.7:6379")
        return super().apply(fingerprint, increments, expires_at)


def test_with_no_writable_spill_file_charges_stay_in_memory_then_are_dropped_counted(tmp_path, capsys):
    from processor.stages.policy.budget_store_guard import GuardedStore

    backend = FlakyBackend()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    registry = CollectorRegistry()
    store = GuardedStore(
        lambda: backend,
        where="redis://store",
        kind="redis",
        spill_path=blocker / "redis-pending.1.jsonl",
        spill_glob="redis-pending.*.jsonl",
        registry=registry,
        retry_seconds=0.1,
        max_in_memory=20,
    )
    try:
        for number in range(25):
            store.apply(f"batch-{number}", {"k": 0.25}, {})
        assert metric(registry, "genops_budget_store_pending_charges") == 20
        assert metric(registry, "genops_budget_charges_lost_total") == 5
        backend.down = False
        wait_for(lambda: store.up and store.pending() == 0)
        assert backend.read(["k"]) == {"k": 20 * 0.25}
    finally:
        store.close()
    out = capsys.readouterr().out
    assert out.count("cannot be spilled to") == 1
    assert "10.0.0.7" not in out


def test_charges_kept_at_stop_are_taken_over_by_the_next_start_and_applied_once(tmp_path):
    from processor.stages.policy.budget_store_guard import GuardedStore

    def guarded(backend, name: str) -> GuardedStore:
        return GuardedStore(
            lambda: backend,
            where="redis://store",
            kind="redis",
            spill_path=tmp_path / f"redis-pending.{name}.jsonl",
            spill_glob="redis-pending.*.jsonl",
            retry_seconds=0.1,
            max_in_memory=2,
        )

    dead = FlakyBackend()
    first = guarded(dead, "first")
    for number in range(5):
        first.apply(f"batch-{number}", {"k": 0.25}, {})
    first.apply("batch-1", {"k": 0.25}, {})  # a Collector retry while down
    first.close()
    lines = (tmp_path / "redis-pending.first.jsonl").read_text().splitlines()
    assert len(lines) == 5

    alive = FlakyBackend()
    alive.down = False
    second = guarded(alive, "second")
    try:
        wait_for(lambda: not (tmp_path / "redis-pending.first.jsonl").exists() and second.pending() == 0)
        assert alive.read(["k"]) == {"k": 1.25}
    finally:
        second.close()
    assert list(tmp_path.glob("redis-pending.*")) == []
