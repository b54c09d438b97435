"""The malloc settings `serve` applies: request-sized buffers are reused instead of re-faulted."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")

# Four request-sized buffers written and freed per cycle, as requests in flight do; prints
# whether the settings were applied, then the minor page faults per cycle.
CYCLES = """
import resource, sys
from processor.allocator import tune_allocator
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


def _run(mode: str, tunables: str = "") -> tuple[str, float]:
    env = {**os.environ, "GLIBC_TUNABLES": tunables}
    done = subprocess.run([sys.executable, "-c", CYCLES, mode], env=env, capture_output=True, text=True, check=True)
    applied, faults = done.stdout.split()
    return applied, float(faults)


def test_freed_request_buffers_are_reused_without_new_page_faults():
    applied, tuned = _run("tune")
    _, untouched = _run("leave")
    assert applied == "True"
    # A cycle touches ~640 pages: with glibc's defaults most of them come from the kernel anew.
    assert untouched > 200
    assert tuned < 20


def test_malloc_settings_set_by_the_operator_are_kept():
    applied, faults = _run("tune", tunables="glibc.malloc.trim_threshold=131072")
    assert applied == "False"
    assert faults > 200
