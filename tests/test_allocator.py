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
from processor.allocator import AllocatorSettings, tune_allocator
# No periodic trim here: one landing between the counts would add a cycle's faults.
print(tune_allocator(AllocatorSettings(trim_every_seconds=0)) if sys.argv[1] == "tune" else "untouched")
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


# Holds 200 MiB in request-sized buffers, frees every other one (holes no heap-top trim can
# return), then prints RSS in MiB before and some time after.
HOLES = """
import sys, time
from processor.allocator import AllocatorSettings, tune_allocator
tune_allocator(AllocatorSettings(trim_every_seconds=float(sys.argv[1])))
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
held = [b"x" * (640 * 1024) for _ in range(320)]
del held[::2]
before = rss()
time.sleep(1.0)
print(before, rss())
"""


def _holes(trim_every_seconds: float) -> tuple[float, float]:
    done = subprocess.run(
        [sys.executable, "-c", HOLES, str(trim_every_seconds)],
        env={**os.environ, "GLIBC_TUNABLES": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    before, after = done.stdout.split()
    return float(before), float(after)


def test_freed_memory_goes_back_to_the_kernel_within_the_trim_interval():
    before, after = _holes(0.2)
    assert before - after > 60  # ~100 MiB of freed buffers
    kept_before, kept_after = _holes(0)
    assert kept_before - kept_after < 10
