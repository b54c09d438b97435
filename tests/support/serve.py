"""`genops-sidecar serve` as a real process for tests: start, wait until ready, read /metrics, stop.

A sidecar is started in its own process group, so a hung one is killed with its workers and no test
leaves one behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start_sidecar(env_extra: dict[str, str], *args: str) -> subprocess.Popen:
    env = {**os.environ, **env_extra}
    return subprocess.Popen(
        [sys.executable, "-m", "processor", *args, "serve"],
        # Own process group: a hung sidecar is killed together with its worker processes.
        start_new_session=True,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def terminate(process: subprocess.Popen, timeout: float = 60) -> str:
    """SIGTERM and wait; a sidecar that does not stop in time is killed, so no test leaves one behind."""
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        stderr += "\n[killed: did not stop within the timeout]"
    return stderr


def wait_ready(process: subprocess.Popen, http: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sidecar exited {process.returncode}: {process.stderr.read()}")
        try:
            if http_get(f"http://{http}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("sidecar never became ready")


def wait_for(condition, seconds: float = 30.0, what: str = "condition") -> None:
    """Polls `condition` every 0.1 s; fails the test when it is still false after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met in time"
        time.sleep(0.1)


def sample(metrics_text: str, name: str, *labels: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} sample with {labels}")


def sample_plain(metrics_text: str, name: str) -> float:
    """The value of an unlabelled sample (or of the first labelled one) of `name`."""
    for line in metrics_text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} sample")


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def workers_of(pid: int) -> list[int]:
    """The sidecar's worker processes (multiprocessing spawn children)."""
    return [p for p in child_pids(pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
