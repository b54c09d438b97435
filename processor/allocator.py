"""C allocator (glibc malloc) settings for a process that allocates and frees large buffers per request.

Every request passes through buffers of hundreds of KiB: the gRPC message, the Python bytes
holding it, the native scan's value buffers and the rewritten request. With glibc's defaults the
freed top of the heap goes back to the kernel once it exceeds twice the largest buffer seen, so the
next request takes the same memory from the kernel again, one page fault per 4 KiB page, zeroed.
Keeping up to `trim_threshold` of freed memory in the process removes that: page faults per
request went from ~150 to ~3, and CPU per all-stages request down by 0.5 to 1.6 ms of ~8.5 ms in
paired runs (benchmarks/RESULTS.md). The price: RSS stays near its peak between bursts.

An operator who sets malloc tunables through GLIBC_TUNABLES keeps them: nothing is changed then.
Other C libraries (musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
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


def tune_allocator(settings: AllocatorSettings | None = None) -> bool:
    """Applies the settings to this process's malloc; True when they were applied."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    settings = settings or AllocatorSettings()
    try:
        mallopt = ctypes.CDLL(None).mallopt
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
    return applied
