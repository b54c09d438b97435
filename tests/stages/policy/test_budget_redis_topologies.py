"""The shared budget store through Redis Sentinel and Redis Cluster URLs, against real servers: a
three-node cluster (redis-cli --cluster create) and a Sentinel watching one master."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from processor.stages.policy.budget_state import redacted_url
from processor.stages.policy.budget_store_guard import open_store
from tests.support.collector_harness import free_port

KEY = "all|*|2026-12-07"


def redis_server(*args: str) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    return subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except Exception:
            pass
        assert time.monotonic() < deadline, "Redis did not come up in time"
        time.sleep(0.05)


@pytest.fixture
def servers():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def charges_once_and_reads_back(url: str) -> None:
    store = open_store("redis", "", url)
    try:
        first = store.apply("batch-1", {KEY: 0.25}, {})
        again = store.apply("batch-1", {KEY: 0.25}, {})
        store.apply("batch-2", {KEY: 0.5}, {})
        assert store.up
        assert (first.totals[KEY], first.repeated) == (0.25, False)
        assert (again.totals[KEY], again.repeated) == (0.25, True)
        assert store.read([KEY]) == {KEY: 0.75}
    finally:
        store.close()


def test_a_redis_cluster_url_charges_once_across_the_cluster(tmp_path, servers):
    import redis

    ports = [free_port() for _ in range(3)]
    for port in ports:
        node = tmp_path / str(port)
        node.mkdir()
        servers.append(
            redis_server(
                *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(node)),
                *("--cluster-enabled", "yes", "--cluster-config-file", str(node / "nodes.conf")),
            )
        )
    wait_until(lambda: all(redis.Redis(port=port).ping() for port in ports))
    nodes = [f"127.0.0.1:{port}" for port in ports]
    created = subprocess.run(
        ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    wait_until(lambda: redis.Redis(port=ports[0]).cluster("info")["cluster_state"] == "ok")

    # Any node's address will do: the client learns the others from it.
    charges_once_and_reads_back(f"redis+cluster://127.0.0.1:{ports[1]}")


def test_a_sentinel_url_charges_the_master_it_names(tmp_path, servers):
    import redis

    master, sentinel = free_port(), free_port()
    servers.append(redis_server("--port", str(master), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)))
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor budgets 127.0.0.1 {master} 1\n"
    )
    servers.append(redis_server(str(config), "--sentinel"))
    wait_until(lambda: redis.Redis(port=sentinel).sentinel_get_master_addr_by_name("budgets"))

    charges_once_and_reads_back(f"redis+sentinel://127.0.0.1:{sentinel}/budgets")
    assert float(redis.Redis(port=master).get("genops:{budget}:" + KEY)) == 0.75


def test_log_lines_name_sentinel_and_cluster_hosts_without_their_password():
    assert redacted_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26379/budgets") == (
        "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/budgets"
    )
    assert redacted_url("rediss+cluster://user:s3cret@redis.example:6379") == "rediss+cluster://redis.example:6379"
