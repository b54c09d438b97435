"""Hot reload of a file or directory (pricing tables, policy files) by polling.

Polling, not inotify: a Kubernetes ConfigMap volume is updated by the kubelet writing a new
timestamped directory (`..2026_11_22_10_00_00.123`) and atomically swapping the `..data` symlink
to it; the visible files are symlinks through `..data`. inotify on the visible path sees nothing
of that swap, while a poll of the *resolved* paths sees the new target at once.

Every `interval` seconds the watcher takes a cheap signature (resolved realpath, mtime, size of
each file). Only when that changed does it hash the contents, and only when the contents changed
does it call `load`. A load that raises keeps the last good value: the reason is logged, and the
`<prefix>_reload_success` gauge drops to 0 until a later load succeeds.

Reloads run `load` in a child process (processor/files/isolated_load.py): a hostile or huge file can
then neither hold the GIL against the event loop, nor raise this process's memory peak, nor delay
shutdown; the child is killed on stop() and after LOAD_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from processor.files.error_text import clip
from processor.files.file_limits import MAX_FILE_BYTES
from processor.files.isolated_load import LoadStopped, load_isolated

log = structlog.get_logger(__name__)

T = TypeVar("T")
# Far above what a file under the size caps takes to load (about 10 s for 8 MiB of YAML).
LOAD_TIMEOUT_SECONDS = 120.0
_CHUNK = 1024 * 1024


def watched_files(path: Path) -> list[Path]:
    """The files behind a path: itself, or a directory's visible files (hidden `..` entries skipped)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    return [path]


def signature(path: Path) -> tuple:
    """Cheap change detector: realpath, mtime and size of every file (symlinks resolved)."""
    parts: list[tuple] = []
    try:
        files = watched_files(path)
    except OSError as exc:
        return (("error", str(exc)),)
    for file in files:
        real = os.path.realpath(file)
        try:
            stat = os.stat(real)
        except OSError as exc:
            parts.append((file.name, real, "missing", exc.errno))
            continue
        parts.append((file.name, real, stat.st_mtime_ns, stat.st_size))
    return tuple(parts)


def content_hash(path: Path) -> str:
    """Hash of the files' contents, read in chunks; a file over the size cap counts by its size only
    (the load refuses it anyway), so a huge file is never read whole into memory."""
    digest = hashlib.sha256()
    for file in watched_files(path):
        digest.update(file.name.encode() + b"\0")
        try:
            with open(file, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as handle:
                info = os.fstat(handle.fileno())
                if info.st_size > MAX_FILE_BYTES or not stat.S_ISREG(info.st_mode):
                    digest.update(f"unread:{info.st_size}:{info.st_mtime_ns}:{info.st_mode}".encode())
                else:
                    for chunk in iter(lambda: handle.read(_CHUNK), b""):
                        digest.update(chunk)
                        if handle.tell() > MAX_FILE_BYTES:
                            break
        except OSError as exc:
            digest.update(f"unreadable:{exc.errno}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


class ReloadMetrics:
    def __init__(self, prefix: str, what: str, registry: CollectorRegistry) -> None:
        self.success = Gauge(
            f"{prefix}_reload_success",
            f"1 if the last {what} reload succeeded, 0 if it failed and the previous {what} is still in use.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.total = Counter(
            f"{prefix}_reload",
            f"{what} reload attempts by outcome (success, invalid).",
            ["outcome"],
            registry=registry,
        )


class Watcher(Generic[T]):
    """Polls `path`, loads it with `load` when its contents change, and hands the result to `apply`.

    The first load happens in the constructor and is not caught: a broken file at start-up
    should stop the process with a clear error, not run with no configuration.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        load: Callable[[Path], T],
        apply: Callable[[T], None],
        interval_seconds: float,
        metrics: ReloadMetrics | None = None,
        name: str = "config",
    ) -> None:
        self.path = Path(path)
        self.load = load
        self.apply = apply
        self.interval = interval_seconds
        self.metrics = metrics
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signature = signature(self.path)
        self._hash = content_hash(self.path)
        self.apply(self.load(self.path))
        if self.metrics:
            self.metrics.success.set(1)

    def start(self) -> Watcher[T]:
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"reload-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                # The watcher thread must survive anything, or reloads silently stop forever.
                log.exception("reload check failed", name=self.name, path=str(self.path))

    def check(self) -> bool | None:
        """One poll. Returns True (reloaded), False (changed but invalid), None (unchanged)."""
        current = signature(self.path)
        if current == self._signature:
            return None
        self._signature = current
        digest = content_hash(self.path)
        if digest == self._hash:
            return None
        try:
            value = load_isolated(self.load, self.path, timeout=LOAD_TIMEOUT_SECONDS, stop=self._stop)
        except LoadStopped:
            return None
        except Exception as exc:
            # Remember the bad contents so the same broken file is not re-parsed every poll;
            # the next edit changes the hash and is tried again.
            self._hash = digest
            log.error(
                "reload rejected; keeping the previous version",
                name=self.name,
                path=str(self.path),
                reason=clip(str(exc)),
            )
            if self.metrics:
                self.metrics.success.set(0)
                self.metrics.total.labels(outcome="invalid").inc()
            return False
        self._hash = digest
        self.apply(value)
        if self.metrics:
            self.metrics.success.set(1)
            self.metrics.total.labels(outcome="success").inc()
        log.info("reloaded", name=self.name, path=str(self.path))
        return True
