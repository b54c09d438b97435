"""The malloc settings `serve` runs with: request-sized buffers are reused instead of re-faulted,
processes it starts inherit them, and an operator's own malloc tunables are kept."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from processor.transport.allocator import MARKER

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")

# As `serve` starts: tune_allocator() first (it re-executes this script once with the settings in
# its environment). Then four request-sized buffers written and freed per cycle, as requests in
# flight do. Prints whether the settings are in effect, then the minor page faults per cycle.
CYCLES = """
import resource, sys
from processor.transport.allocator import tune_allocator
print(tune_allocator() if sys.argv[1] == "tune" else "untouched")
def cycle():
    buffers = [b"x" * (640 * 1024) for _ in range(4)]
    del buffers
for _ in range(5):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
"""


def _run(script: str, *args: str, tunables: str = "") -> list[str]:
    env = {key: value for key, value in os.environ.items() if key != MARKER}
    env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_freed_request_buffers_are_reused_without_new_page_faults():
    applied, tuned = _run(CYCLES, "tune")
    _, untouched = _run(CYCLES, "leave")
    assert applied == "True"
    # A cycle touches ~640 pages: with glibc's defaults most of them come from the kernel anew.
    assert float(untouched) > 200
    assert float(tuned) < 20


def test_malloc_settings_set_by_the_operator_are_kept():
    applied, faults = _run(CYCLES, "tune", tunables="glibc.malloc.trim_threshold=131072")
    assert applied == "False"
    assert float(faults) > 200


def test_a_process_started_by_a_tuned_one_inherits_the_settings_without_re_executing():
    script = """
import os, subprocess, sys
from processor.transport.allocator import tune_allocator
if sys.argv[1] == "parent":
    tune_allocator()
    sys.exit(subprocess.run([sys.executable, "-c", sys.argv[2], "child"]).returncode)
print(tune_allocator(reexec=False), os.environ["GLIBC_TUNABLES"], os.getpid())
"""
    applied, tunables, _ = _run(script, "parent", script)
    assert applied == "True"
    assert "glibc.malloc.arena_max=1" in tunables
    untuned = _run(script, "child")
    assert untuned[0] == "False"
