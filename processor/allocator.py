"""C allocator (glibc malloc) settings for a process that allocates and frees large buffers per request.

Every request passes through buffers of hundreds of KiB: the gRPC message, the Python bytes
holding it, the native scan's value buffers and the rewritten request. With glibc's defaults the
freed top of the heap goes back to the kernel once it exceeds twice the largest buffer seen, so the
next request takes the same memory from the kernel again, one page fault per 4 KiB page, zeroed.
Keeping up to `trim_threshold` of freed memory in the process removes that: page faults per
request went from ~150 to ~3, and CPU per all-stages request down by 0.5 to 1.6 ms of ~8.5 ms in
paired runs (benchmarks/RESULTS.md). Kept memory alone let RSS creep up by steps over a
10-minute run (freed holes between live blocks are never handed back), so a background thread
gives everything free back every `trim_every_seconds` (malloc_trim): the requests right after a trim
fault their pages in again, the others do not, and RSS stays flat.

An operator who sets malloc tunables through GLIBC_TUNABLES keeps them: nothing is changed then.
Other C libraries (musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

MIB = 1024 * 1024

# mallopt(3) parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class AllocatorSettings:
    # Buffers below this come from the heap, so they can be reused; 32 MiB is glibc's upper limit.
    mmap_threshold: int = 32 * MIB
    # Freed memory at the top of the heap kept for the next requests.
    trim_threshold: int = 128 * MIB
    # Extra memory taken from the kernel whenever the heap grows, so it grows in few steps.
    top_pad: int = 16 * MIB
    # How often all free memory goes back to the kernel; 0: never.
    trim_every_seconds: float = 10.0


def tune_allocator(settings: AllocatorSettings | None = None) -> bool:
    """Applies the settings to this process's malloc; True when they were applied."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    settings = settings or AllocatorSettings()
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = all(
        mallopt(parameter, value) == 1
        for parameter, value in (
            (_M_MMAP_THRESHOLD, settings.mmap_threshold),
            (_M_TRIM_THRESHOLD, settings.trim_threshold),
            (_M_TOP_PAD, settings.top_pad),
        )
    )
    if not applied:
        log.warning("malloc settings not accepted by the C library", settings=str(settings))
    elif settings.trim_every_seconds > 0:
        malloc_trim.argtypes = (ctypes.c_size_t,)
        malloc_trim.restype = ctypes.c_int
        interval = settings.trim_every_seconds
        threading.Thread(target=_trim_forever, args=(malloc_trim, interval), name="malloc-trim", daemon=True).start()
    return applied


def _trim_forever(malloc_trim: Callable[[int], int], interval: float) -> None:
    # ctypes lets go of the GIL for the call: Python threads run on while the arenas are walked.
    while True:
        time.sleep(interval)
        malloc_trim(0)
