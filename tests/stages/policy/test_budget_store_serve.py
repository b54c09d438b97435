"""Budget state faults against `genops-sidecar serve` as real processes (two workers): a real
redis-server killed and hung by its PID under concurrent traffic, a SQLite file made read-only,
deleted and corrupt while in use. Every answer is OK and in time, the outage shows in /readyz, a
metric and one log line, and every cent is charged exactly once once the store is back."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.support.clock import START_NS
from tests.support.collector_harness import free_port
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import OtlpSink
from tests.support.redis_server import redis_sum, start_redis
from tests.support.serve import http_get, sample_plain, terminate, wait_for, wait_ready, workers_of

POLICY = {"budgets": [{"name": "all", "limit_usd": 1_000_000.0, "period": "daily", "mode": "enforced"}]}
# The Collector's export timeout: an answer later than this is a failed export, retried.
COLLECTOR_TIMEOUT_SECONDS = 10.0
# Binary fractions: any order of additions gives the exact same total.
COSTS = (0.25, 0.125, 0.5, 0.0625)


class Traffic:
    """Batches sent from several threads at once until stopped, each retried once like the
    Collector does when its first attempt failed or timed out; counts what was sent."""

    def __init__(self, grpc_port: int, threads: int = 4) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.sent_usd = 0.0
        self.batches = 0
        self.slowest = 0.0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads)
        self._running = [self._pool.submit(self._loop, index) for index in range(threads)]

    def _loop(self, index: int) -> None:
        count = 0
        while not self._stop.is_set():
            count += 1
            costs = [COSTS[(index + count + i) % len(COSTS)] for i in range(3)]
            batch = trace_request(
                [
                    span(
                        name=f"chat {index}-{count}-{i}",
                        attributes={"gen_ai.request.model": "gpt-4o", "genops.cost.total": cost},
                        start_time_unix_nano=START_NS,
                    )
                    for i, cost in enumerate(costs)
                ]
            )
            began = time.monotonic()
            try:
                export_traces(self.channel, batch)  # with the Collector's timeout
                took = time.monotonic() - began
                # Every fourth batch comes again, as after an export the Collector saw fail.
                if count % 4 == 0:
                    export_traces(self.channel, batch)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"{exc.code()}: {exc.details()}")
                # Retried until answered, as the Collector does: a failed attempt may have been
                # charged already, and the retry must not be charged again.
                if not self._retry(batch):
                    continue
                took = time.monotonic() - began
            with self._lock:
                self.sent_usd += sum(costs)
                self.batches += 1
                self.slowest = max(self.slowest, took)
            time.sleep(0.02)

    def _retry(self, batch) -> bool:
        for _ in range(20):
            time.sleep(0.2)
            try:
                export_traces(self.channel, batch)
                return True
            except grpc.RpcError:
                continue
        return False

    def wait_batches(self, more: int, seconds: float = 30.0) -> None:
        target = self.batches + more
        deadline = time.monotonic() + seconds
        while self.batches < target:
            assert time.monotonic() < deadline, f"traffic stalled at {self.batches} batches: {self.failures[:3]}"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for running in self._running:
            running.result(60)
        self._pool.shutdown()
        self.channel.close()


def redis_total(port: int) -> float:
    # Batch markers (kept so a retried batch is not charged twice) are not spend.
    return redis_sum(port, "genops:*", leave_out=b":batch:")


def store_up(http: str) -> float:
    return sample_plain(http_get(f"http://{http}/metrics")[1], "genops_budget_store_up")


def serve(tmp_path, sink: OtlpSink, wrapper: list[str] | None = None, **policy: str) -> tuple[object, int, str]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(json.dumps(POLICY))
    grpc_port, http_port = free_port(), free_port()
    http = f"127.0.0.1:{http_port}"
    env = {
        "GENOPS_SERVER_LISTEN": f"127.0.0.1:{grpc_port}",
        "GENOPS_SERVER_WORKERS": "2",
        "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
        "GENOPS_HTTP_LISTEN": http,
        "GENOPS_POLICY_POLICY_FILE": str(policy_file),
        **{"GENOPS_POLICY_" + key.upper(): value for key, value in policy.items()},
    }
    process = subprocess.Popen(
        [*(wrapper or []), sys.executable, "-m", "processor", "serve"],
        start_new_session=True,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_ready(process, http)
    return process, grpc_port, http


@dataclass
class RedisBackedSidecar:
    """A redis-server and a `serve` keeping its budgets there (in sqlite while Redis is away)."""

    redis_port: int
    redis_dir: Path
    redis: subprocess.Popen
    process: subprocess.Popen
    grpc_port: int
    http: str

    def restart_redis(self) -> None:
        self.redis = start_redis(self.redis_port, self.redis_dir)

    def stop(self) -> tuple[str, float]:
        """Stops the sidecar, then Redis; the sidecar's stderr and the spend Redis held at the end."""
        stderr = terminate(self.process)
        totals = redis_total(self.redis_port)
        self.redis.kill()
        self.redis.wait()
        return stderr, totals


def serve_on_redis(tmp_path: Path, sink: OtlpSink) -> RedisBackedSidecar:
    redis_port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis = start_redis(redis_port, redis_dir)
    process, grpc_port, http = serve(
        tmp_path,
        sink,
        state_backend="redis",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        state_path=str(tmp_path / "state" / "budgets.sqlite"),
    )
    return RedisBackedSidecar(redis_port, redis_dir, redis, process, grpc_port, http)


def error_lines(stderr: str, needle: str) -> list[str]:
    return [line for line in stderr.splitlines() if needle in line and '"error"' in line]


def test_redis_killed_then_hung_under_traffic_charges_every_cent_exactly_once(tmp_path, sink):
    sidecar = serve_on_redis(tmp_path, sink)
    redis_port, http, process = sidecar.redis_port, sidecar.http, sidecar.process
    traffic = Traffic(sidecar.grpc_port)
    try:
        traffic.wait_batches(10)
        os.kill(sidecar.redis.pid, signal.SIGKILL)
        sidecar.redis.wait()
        traffic.wait_batches(40)
        assert store_up(http) == 0
        status, body = http_get(f"http://{http}/readyz")
        assert status == 200 and "degraded: budget store unavailable" in body, body
        assert str(redis_port) not in body

        sidecar.restart_redis()
        wait_for(lambda: store_up(http) == 1, what="store back after the kill")
        traffic.wait_batches(10)

        os.kill(sidecar.redis.pid, signal.SIGSTOP)
        try:
            traffic.wait_batches(40)
            assert store_up(http) == 0
        finally:
            os.kill(sidecar.redis.pid, signal.SIGCONT)
        wait_for(lambda: store_up(http) == 1, what="store back after the hang")
        traffic.wait_batches(10)
    finally:
        traffic.stop()
        stderr_before_stop = None
        try:
            wait_for(lambda: store_up(http) == 1 and "degraded" not in http_get(f"http://{http}/readyz")[1])
        finally:
            stderr_before_stop, totals = sidecar.stop()

    assert process.returncode == 0, stderr_before_stop
    assert traffic.failures == []
    # Well inside the Collector's export timeout, even while Redis hung.
    assert traffic.slowest < COLLECTOR_TIMEOUT_SECONDS / 4, traffic.slowest
    assert traffic.batches >= 110
    assert totals == traffic.sent_usd, (totals, traffic.sent_usd)
    # One line per outage and worker, not one per batch; none carries the address.
    assert 2 <= len(error_lines(stderr_before_stop, "did not answer")) <= 4, stderr_before_stop
    for received in sink.spans():
        error = str(received.attributes.get("genops.processing.error", ""))
        assert "127.0.0.1" not in error and str(redis_port) not in error, error


def sqlite_total(path) -> float:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        (total,) = db.execute("SELECT COALESCE(SUM(usd), 0) FROM consumed").fetchone()
    return total


def serve_without_root_file_access(tmp_path, sink: OtlpSink, **policy: str):
    """The sidecar as root without CAP_DAC_OVERRIDE: file modes bind it as they bind any user."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed")
    return serve(tmp_path, sink, wrapper=[setpriv, "--bounding-set=-dac_override,-dac_read_search"], **policy)


def test_a_read_only_sqlite_file_is_named_with_the_fix_and_its_charges_land_once_it_is_writable(tmp_path, sink):
    state = tmp_path / "state"
    path = state / "budgets.sqlite"
    first, grpc_port, http = serve(tmp_path, sink, state_path=str(path))
    traffic = Traffic(grpc_port)
    traffic.wait_batches(10)
    traffic.stop()
    terminate(first)
    before = traffic.sent_usd
    assert sqlite_total(path) == before
    for file in state.glob("budgets.sqlite*"):
        file.chmod(0o444)

    process, grpc_port, http = serve_without_root_file_access(tmp_path, sink, state_path=str(path))
    traffic = Traffic(grpc_port)
    try:
        traffic.wait_batches(20)
        assert store_up(http) == 0
        assert "degraded" in http_get(f"http://{http}/readyz")[1]
        for file in state.glob("budgets.sqlite*"):
            file.chmod(0o644)
        wait_for(lambda: store_up(http) == 1, what="store back once writable")
        traffic.wait_batches(10)
    finally:
        traffic.stop()
        stderr = terminate(process)
    assert process.returncode == 0, stderr
    assert traffic.failures == []
    assert sqlite_total(path) == before + traffic.sent_usd
    named = error_lines(stderr, "is read-only: make it and its directory writable")
    assert named and all(str(path) in line for line in named), stderr
    assert "no transaction is active" not in stderr


def test_a_read_only_state_directory_is_named_with_the_fix_and_loses_no_charge(tmp_path, sink):
    state = tmp_path / "state"
    state.mkdir()
    path = state / "budgets.sqlite"
    state.chmod(0o555)
    process, grpc_port, http = serve_without_root_file_access(tmp_path, sink, state_path=str(path))
    traffic = Traffic(grpc_port)
    try:
        traffic.wait_batches(20)
        assert store_up(http) == 0
        state.chmod(0o755)
        wait_for(lambda: store_up(http) == 1, what="store back once the directory is writable")
        traffic.wait_batches(10)
    finally:
        state.chmod(0o755)
        traffic.stop()
        stderr = terminate(process)
    assert process.returncode == 0, stderr
    assert traffic.failures == []
    assert sqlite_total(path) == traffic.sent_usd
    assert error_lines(stderr, str(path)), stderr
    assert "no transaction is active" not in stderr
    assert "Traceback" not in stderr, stderr


def test_a_sqlite_file_deleted_under_traffic_keeps_its_spend(tmp_path, sink):
    path = tmp_path / "state" / "budgets.sqlite"
    process, grpc_port, http = serve(tmp_path, sink, state_path=str(path))
    traffic = Traffic(grpc_port)
    try:
        traffic.wait_batches(10)
        # The database last, as `rm -r` would: its log files must be gone when the loss is seen.
        for file in sorted(path.parent.glob("budgets.sqlite*"), reverse=True):
            file.unlink()
        traffic.wait_batches(20)
        wait_for(lambda: path.exists() and store_up(http) == 1, what="file recreated")
        traffic.wait_batches(10)
    finally:
        traffic.stop()
        stderr = terminate(process)
    assert process.returncode == 0, stderr
    assert traffic.failures == []
    assert sqlite_total(path) == traffic.sent_usd
    named = error_lines(stderr, "was deleted while in use")
    assert named and all(str(path) in line for line in named), stderr


def write_spill(path, charges: list[tuple[str, float]]) -> float:
    key = "all|*|" + time.strftime("%Y-%m-%d", time.gmtime(START_NS // 10**9))
    path.write_text("".join(json.dumps([fingerprint, {key: usd}, {}]) + "\n" for fingerprint, usd in charges))
    return sum(usd for _, usd in charges)


def test_two_workers_take_over_each_left_behind_spill_file_once_and_leave_a_live_ones_alone(tmp_path, sink):
    import fcntl

    state = tmp_path / "state"
    state.mkdir()
    path = state / "budgets.sqlite"
    # Files of three processes that died with charges kept; one charge is in two of them (a
    # Collector retry kept by two workers): the store adds it once.
    left = write_spill(state / "budgets.sqlite.pending.101.jsonl", [("a", 0.25), ("b", 0.5), ("shared", 2.0)])
    left += write_spill(state / "budgets.sqlite.pending.102-0f0f0f0f.jsonl", [("c", 0.125), ("shared", 2.0)]) - 2.0
    left += write_spill(state / "budgets.sqlite.pending.103.jsonl", [("d", 1.0)])
    live_file = state / "budgets.sqlite.pending.104.jsonl"
    live_usd = write_spill(live_file, [("e", 4.0)])
    live = live_file.open("r")
    fcntl.flock(live, fcntl.LOCK_EX)  # its process (this test) still runs
    process, _, _ = serve(tmp_path, sink, state_path=str(path))
    try:
        wait_for(lambda: path.exists() and sqlite_total(path) == left, what="left-behind charges applied")
        time.sleep(1.5)  # every recovery pass has looked at the locked file again
        assert live_file.exists() and sqlite_total(path) == left
        live.close()
        wait_for(lambda: sqlite_total(path) == left + live_usd, what="the released file taken over")
    finally:
        live.close()
        stderr = terminate(process)
    assert process.returncode == 0, stderr
    assert sqlite_total(path) == left + live_usd
    assert sorted(file.name for file in state.iterdir() if ".pending." in file.name) == []
    taken = [json.loads(line)["file"] for line in stderr.splitlines() if '"took over budget charges' in line]
    assert sorted(taken) == sorted(
        str(state / f"budgets.sqlite.pending.{n}.jsonl") for n in ("101", "102-0f0f0f0f", "103", "104")
    )


def test_a_sqlite_file_made_read_only_in_use_is_named_at_once_and_charges_go_on(tmp_path, sink):
    state = tmp_path / "state"
    path = state / "budgets.sqlite"
    process, grpc_port, _ = serve_without_root_file_access(tmp_path, sink, state_path=str(path))
    traffic = Traffic(grpc_port)
    try:
        traffic.wait_batches(10)
        path.chmod(0o444)
        time.sleep(2.5)  # a few passes of every process's store check
        traffic.wait_batches(10)
    finally:
        path.chmod(0o644)
        traffic.stop()
        stderr = terminate(process)
    assert process.returncode == 0, stderr
    assert traffic.failures == []
    assert sqlite_total(path) == traffic.sent_usd
    named = error_lines(stderr, "became read-only")
    # One line per process holding the file (two workers and the front process), not per batch.
    assert 1 <= len(named) <= 3 and all(str(path) in line for line in named), stderr


def test_a_worker_killed_while_redis_is_down_loses_none_of_the_charges_it_kept(tmp_path, sink):
    sidecar = serve_on_redis(tmp_path, sink)
    http, process = sidecar.http, sidecar.process
    traffic = Traffic(sidecar.grpc_port)
    try:
        traffic.wait_batches(10)
        os.kill(sidecar.redis.pid, signal.SIGKILL)
        sidecar.redis.wait()
        traffic.wait_batches(30)
        workers = workers_of(process.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)  # out of memory, a poison request
        wait_for(lambda: len(workers_of(process.pid)) == 2 and workers[0] not in workers_of(process.pid))
        traffic.wait_batches(30)
        sidecar.restart_redis()
        wait_for(lambda: store_up(http) == 1, what="store back")
        traffic.wait_batches(10)
    finally:
        traffic.stop()
        try:
            wait_for(lambda: "degraded" not in http_get(f"http://{http}/readyz")[1])
        finally:
            stderr, totals = sidecar.stop()
    assert process.returncode == 0, stderr
    assert totals == traffic.sent_usd, (totals, traffic.sent_usd)
