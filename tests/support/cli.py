"""Running `genops-sidecar` commands as real processes, with an environment of the test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from processor.config import NON_SETTING_ENV
from tests.support.collector_harness import free_port

REPO = Path(__file__).resolve().parents[2]


def base_env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without its GENOPS_* variables, ports that are free, and state
    kept in tmp_path, so a config that is wrongly accepted starts a harmless sidecar."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENOPS_") or k in NON_SETTING_ENV}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["GENOPS_SERVER_LISTEN"] = f"127.0.0.1:{free_port()}"
    env["GENOPS_HTTP_LISTEN"] = f"127.0.0.1:{free_port()}"
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", "processor", *args],
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # A serve that did not refuse the config is running: stop it by its own process group.
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{args} did not exit: the wrong setting was accepted\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
