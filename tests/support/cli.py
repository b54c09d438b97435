"""Running `genops-sidecar` commands: as real processes, with an environment of the test's own, or the
pricing commands parsed and run in this process; and what an operator reads when one refuses."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from processor.config import NON_SETTING_ENV
from processor.stages.cost.pricing_cli import add_pricing_commands
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


def run_in_process(*argv: str) -> int:
    """`genops-sidecar pricing ...` parsed and run here, its exit code returned."""
    parser = argparse.ArgumentParser(prog="genops-sidecar")
    add_pricing_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def problem_lines(stderr: str) -> list[str]:
    """stderr without the structured info/warning log records of a normal start."""
    lines = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("level") in ("debug", "info", "warning"):
            continue
        if line.strip():
            lines.append(line)
    return lines


def assert_one_clear_line(result: subprocess.CompletedProcess, setting: str) -> None:
    assert result.returncode != 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = problem_lines(result.stderr)
    assert len(lines) == 1, lines
    assert setting in lines[0], lines[0]
    assert len(lines[0]) <= 600, lines[0]
