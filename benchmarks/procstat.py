"""CPU seconds and resident memory of a process and its descendants, read from /proc (Linux).

The sidecar with several workers is a supervisor plus spawned worker processes, so every figure
is summed over the whole process tree rooted at the pid we started.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; fields after it are plain.
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """user + system CPU seconds per live pid."""
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # utime and stime are fields 14 and 15 of /proc/pid/stat (1-based), 11 and 12 here.
            out[pid] = (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except OSError:
            pass
    return total


def peak_rss_bytes(pids: list[int]) -> int:
    """Sum over processes of each one's own high-water mark (VmHWM)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


@dataclass
class CpuWindow:
    """CPU consumed by a process tree between `start()` and `stop()`."""

    root: int
    _before: dict[int, float] = field(default_factory=dict)
    _started: float = 0.0
    cpu: float = 0.0
    wall: float = 0.0
    per_process: dict[int, float] = field(default_factory=dict)

    def start(self) -> CpuWindow:
        self._before = cpu_seconds(tree(self.root))
        self._started = time.perf_counter()
        return self

    def stop(self) -> CpuWindow:
        after = cpu_seconds(tree(self.root))
        self.wall = time.perf_counter() - self._started
        self.per_process = {pid: value - self._before.get(pid, 0.0) for pid, value in after.items()}
        self.cpu = sum(self.per_process.values())
        return self

    def busiest(self, count: int) -> list[float]:
        """Cores kept busy by the `count` busiest processes, busiest first (shows worker imbalance)."""
        loads = sorted(self.per_process.values(), reverse=True)[:count]
        return [load / self.wall for load in loads] if self.wall else []


@dataclass
class RssSampler:
    """Samples the tree's summed RSS every `interval` seconds in a background thread."""

    root: int
    interval: float = 1.0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> RssSampler:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self

    def _sample(self) -> None:
        self.samples.append((time.monotonic() - self._t0, rss_bytes(tree(self.root))))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @property
    def start_bytes(self) -> int:
        return self.samples[0][1]

    @property
    def end_bytes(self) -> int:
        return self.samples[-1][1]

    @property
    def peak_bytes(self) -> int:
        return max(rss for _, rss in self.samples)

    def slope_mib_per_minute(self, skip_fraction: float = 0.0) -> float:
        """Least-squares slope of RSS over time, ignoring the first `skip_fraction` (warm-up)."""
        points = self.samples[int(len(self.samples) * skip_fraction) :]
        if len(points) < 2:
            return 0.0
        n = len(points)
        mean_t = sum(t for t, _ in points) / n
        mean_r = sum(r for _, r in points) / n
        var = sum((t - mean_t) ** 2 for t, _ in points)
        if var == 0:
            return 0.0
        cov = sum((t - mean_t) * (r - mean_r) for t, r in points)
        return cov / var * 60 / (1024 * 1024)
