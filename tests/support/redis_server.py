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
