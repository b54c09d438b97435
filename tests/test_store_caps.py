"""Issue 22: cardinality caps counted in the state store (the ledger's max_rows_per_day, and the
subjects of budgets keyed on a span attribute), shared by processes and kept across restarts."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.budget_state import MemoryStore, SqliteStore
from processor.config import LedgerConfig, PolicyConfig
from processor.ledger import OVERFLOW, read_rows
from processor.policy_stage import build_policy_stage
from processor.store_caps import StoreCap
from tests.test_budgets_policies import redis_url, run_pipeline  # noqa: F401 (fixture)
from tests.test_ledger import priced
from tests.otlp_builders import trace_request


def _config(backend: str, tmp_path, redis: str, name: str) -> PolicyConfig:
    ledger = LedgerConfig(enabled=True, keys="team", max_rows_per_day=2)
    if backend == "redis":
        return PolicyConfig(
            state_backend="redis", redis_url=redis, state_path=str(tmp_path / name / "s"), ledger=ledger
        )
    return PolicyConfig(state_backend="sqlite", state_path=str(tmp_path / "state.sqlite"), ledger=ledger)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_ledger_row_cap_holds_across_processes_and_restarts(tmp_path, redis_url, backend):  # noqa: F811
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


def test_every_store_admits_the_same_members(tmp_path, redis_url):  # noqa: F811
    import redis

    from processor.budget_state import RedisStore

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
