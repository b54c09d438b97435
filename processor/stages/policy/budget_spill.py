"""The spill file: budget charges a process keeps on disk while the state store is down.

Each process appends to a file of its own, named uniquely (a PID alone repeats: a restarted
container's worker often gets the PID of the one before it) and holds an exclusive `flock` on it
for as long as it runs. Any process sharing the directory may take over a file whose lock it can
take: its owner stopped or died, and the charges in it would otherwise never be applied. The
lock, and a check that the path still names the locked file, make sure only one process takes a
file over, however many workers look at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PendingCharge:
    fingerprint: str
    increments: dict[str, float]
    expires_at: dict[str, int]


def _encode(charge: PendingCharge) -> str:
    return json.dumps([charge.fingerprint, charge.increments, charge.expires_at]) + "\n"


def _decode(text: str) -> list[PendingCharge]:
    charges = []
    for line in text.splitlines():
        try:
            fingerprint, increments, expires_at = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash while it was written: nothing was kept of it
        charges.append(PendingCharge(fingerprint, increments, expires_at))
    return charges


def _same_file(handle: IO, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class SpillFile:
    """This process's spill file (created on the first append) and the take-over of others'."""

    def __init__(self, path: Path, glob: str) -> None:
        self.path = path
        # Matches the spill files of every process sharing the directory.
        self._glob = glob
        self._handle: IO[str] | None = None
        self.count = 0
        # Files that could not be read (permissions): retried on each take-over pass, logged once.
        self._unreadable: set[Path] = set()

    def append(self, charges: list[PendingCharge], durable: bool = True) -> None:
        """Raises OSError when the file cannot be written (the charges are then not in it).
        Not `durable`: written to the OS only, which outlives this process but not the machine."""
        handle = self._open()
        end = handle.seek(0, os.SEEK_END)
        try:
            handle.write("".join(_encode(charge) for charge in charges))
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        except OSError:
            # A part written (disk full) would run into the next line and spoil it.
            with contextlib.suppress(OSError):
                handle.truncate(end)
            raise
        self.count += len(charges)

    def read(self) -> list[PendingCharge]:
        if self._handle is None:
            return []
        self._handle.seek(0)
        return _decode(self._handle.read())

    def clear(self) -> None:
        """Emptied, not removed: this process holds its lock."""
        if self._handle is not None:
            self._handle.truncate(0)
        self.count = 0

    def close(self) -> None:
        """Releases the file: removed when empty, else left for the next process to take over."""
        if self._handle is None:
            return
        if self.count == 0:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._handle.close()
        self._handle = None

    def _open(self) -> IO[str]:
        while self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+", encoding="utf-8")
            # Blocks only while another process, seeing the new file unlocked, takes it over (it
            # then removes it, and this process opens a new one).
            fcntl.flock(handle, fcntl.LOCK_EX)
            if _same_file(handle, self.path):
                self._handle = handle
            else:
                handle.close()
        return self._handle

    def take_over_left_behind(self) -> list[PendingCharge]:
        """Charges of files whose processes stopped: moved into this process's file (so a crash
        now loses none of them) and returned; their files are removed."""
        taken: list[PendingCharge] = []
        for path in sorted(self.path.parent.glob(self._glob)):
            if path == self.path:
                continue
            try:
                charges = self._take_over(path)
            except OSError as exc:
                if path not in self._unreadable:
                    self._unreadable.add(path)
                    log.error(
                        f"budget charges kept in {path} cannot be taken over ({exc.strerror}): make the file"
                        " readable and its directory writable by this process; retried until then",
                        file=str(path),
                    )
                continue
            self._unreadable.discard(path)
            if charges is not None:
                taken += charges
                log.info("took over budget charges a stopped process had kept", file=str(path), charges=len(charges))
        return taken

    def _take_over(self, path: Path) -> list[PendingCharge] | None:
        try:
            other = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            return None  # taken over by another process meanwhile
        with other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # its process still runs
            if not _same_file(other, path):
                return None  # another process took it over between the listing and the lock
            charges = _decode(other.read())
            if charges:
                self.append(charges)
            path.unlink()
        return charges
