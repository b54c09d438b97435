"""A real redis-server for tests, started on a free loopback port in a private directory."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest


def start_redis(port: int, workdir) -> subprocess.Popen:
    """A private redis-server on 127.0.0.1:port (AOF, fsync always: a killed server keeps every
    acknowledged write); skips the test when the Debian package is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
    process = subprocess.Popen(
        [*argv, "--appendfsync", "always", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            client.close()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def redis_sum(port: int, pattern: str, leave_out: bytes | None = None) -> float:
    """The sum of the values at the keys matching `pattern` (keys containing `leave_out` not counted):
    the spend the sidecar charged to Redis."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        keys = [key for key in client.keys(pattern) if leave_out is None or leave_out not in key]
        return sum(float(value) for value in client.mget(keys)) if keys else 0.0
    finally:
        client.close()
