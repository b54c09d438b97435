"""C allocator (glibc malloc) settings for a process that allocates and frees large buffers per request.

Every request passes through buffers of hundreds of KiB: the gRPC message, the Python bytes
holding it, the native scan's value buffers and the rewritten request. With glibc's defaults the
freed top of the heap goes back to the kernel once it exceeds twice the largest buffer seen, so the
next request takes the same memory from the kernel again, one page fault per 4 KiB page, zeroed.
Keeping freed memory in the process removes that: page faults per request went from ~150 to ~3,
and CPU per all-stages request down by 0.5 to 1.6 ms of ~8.5 ms in paired runs
(benchmarks/RESULTS.md).

Kept memory needs one arena (heap) for all threads: with one per gRPC thread it spread over
several heaps and RSS crept up over a 10-minute run (158 -> 184 MiB); with one it stayed at
158.7 MiB. glibc fixes the arena limit once the process has threads, and mallopt() after start-up
did not hold it, so `serve` applies the settings as GLIBC_TUNABLES by re-executing itself once,
first thing (same PID, nothing opened yet); worker processes inherit them. The price: after a
burst, RSS stays near its peak (up to `trim_threshold` more) instead of falling back. (A thread
handing free memory back every 10 s with malloc_trim made RSS creep up again, by 3.5 MiB in 4
minutes: left out.)

An operator who sets any malloc tunable in GLIBC_TUNABLES keeps exactly those. Other C libraries
(musl) are left as they are. The native module's own buffers do not come from glibc: it allocates
with mimalloc, a heap per thread (processor/native/src/lib.rs says why).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

MIB = 1024 * 1024

# Set together with our GLIBC_TUNABLES: the malloc settings in the environment are ours.
MARKER = "GENOPS_MALLOC_SETTINGS"


@dataclass(frozen=True)
class AllocatorSettings:
    # Buffers below this come from the heap, so they can be reused; 32 MiB is glibc's upper limit.
    mmap_threshold: int = 32 * MIB
    # Freed memory at the top of the heap kept for the next requests.
    trim_threshold: int = 128 * MIB
    # Extra memory taken from the kernel whenever the heap grows, so it grows in few steps.
    top_pad: int = 16 * MIB
    # One heap for every thread (see above).
    arena_max: int = 1

    def tunables(self) -> str:
        return ":".join(
            f"glibc.malloc.{name}={value}"
            for name, value in (
                ("mmap_threshold", self.mmap_threshold),
                ("trim_threshold", self.trim_threshold),
                ("top_pad", self.top_pad),
                ("arena_max", self.arena_max),
            )
        )


def tune_allocator(settings: AllocatorSettings | None = None, reexec: bool = True) -> bool:
    """Puts the settings in effect; True when they are (False: the operator's own malloc tunables,
    not glibc, or not in the environment and `reexec` off). Without them in the environment yet,
    re-executes the process with them: call it before anything that must not happen twice.
    Processes started by one that has them inherit them (`reexec=False` there)."""
    settings = settings or AllocatorSettings()
    if os.environ.get(MARKER) == settings.tunables():
        return True
    current = os.environ.get("GLIBC_TUNABLES", "")
    if not reexec or "glibc.malloc." in current or platform.libc_ver()[0] != "glibc":
        return False
    os.environ["GLIBC_TUNABLES"] = ":".join(part for part in (current, settings.tunables()) if part)
    os.environ[MARKER] = settings.tunables()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
    raise AssertionError("unreachable: execv returns only by raising")
