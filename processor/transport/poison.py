"""Requests that killed the process processing them, remembered so they stop killing workers.

The Collector retries UNAVAILABLE without end, so a request that crashes a worker would crash
one on every retry. A death is not always the request's fault (an operator's kill, an OOM kill
caused by something else), so the first death earns one retry; a request that kills a second
time is refused as malformed from then on.

With one worker the process that dies is the sidecar itself, so the request being processed is
noted in a small file first (CrashJournal) and a restarted sidecar finds it there.

Requests are told apart by size and CRC-32: computed on every request in the one-worker mode,
it costs ~0.16 ms per MiB where SHA-256 costs ~1 ms.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# Deaths after which the same bytes are refused without being processed.
DEATHS_TO_REFUSE = 2
# Distinct requests remembered; the oldest is forgotten first.
REMEMBERED = 1024


@dataclass(frozen=True)
class RequestDigest:
    size: int
    crc32: int

    @classmethod
    def of(cls, raw: bytes) -> RequestDigest:
        return cls(len(raw), zlib.crc32(raw))

    def __str__(self) -> str:
        return f"{self.size} bytes, crc32 {self.crc32:08x}"


class PoisonRequest(ValueError):
    """The request killed its worker process before; refused as non-retryable (INVALID_ARGUMENT)."""

    def __init__(self, digest: RequestDigest, first_refusal: bool) -> None:
        super().__init__(f"request ({digest}) killed a worker process {DEATHS_TO_REFUSE} times; refused")
        self.digest = digest
        self.first_refusal = first_refusal


class PoisonRequests:
    """Deaths per request digest, bounded. Sizes are kept apart so that the common case (a size
    no poison request has) is answered without hashing the request."""

    def __init__(self, remembered: int = REMEMBERED) -> None:
        self.remembered = remembered
        self._deaths: OrderedDict[RequestDigest, int] = OrderedDict()
        self._sizes: dict[int, int] = {}

    def check(self, raw: bytes, digest: RequestDigest | None = None) -> None:
        """Raises PoisonRequest when these bytes killed workers often enough."""
        if len(raw) not in self._sizes:
            return
        digest = digest or RequestDigest.of(raw)
        if self._deaths.get(digest, 0) >= DEATHS_TO_REFUSE:
            raise PoisonRequest(digest, first_refusal=False)

    def died_on(self, raw: bytes) -> RequestDigest:
        """Notes a death; raises PoisonRequest when this one makes the request refused."""
        digest = RequestDigest.of(raw)
        if self.note_death(digest) >= DEATHS_TO_REFUSE:
            raise PoisonRequest(digest, first_refusal=True)
        return digest

    def note_death(self, digest: RequestDigest) -> int:
        deaths = self._deaths.pop(digest, 0) + 1
        if deaths == 1:
            self._sizes[digest.size] = self._sizes.get(digest.size, 0) + 1
        self._deaths[digest] = deaths
        while len(self._deaths) > self.remembered:
            forgotten, _ = self._deaths.popitem(last=False)
            self._sizes[forgotten.size] -= 1
            if not self._sizes[forgotten.size]:
                del self._sizes[forgotten.size]
        return deaths

    def items(self) -> list[tuple[RequestDigest, int]]:
        return list(self._deaths.items())


# The request being processed: size and CRC-32, zero when none.
_INFLIGHT = struct.Struct("<QI")


class CrashJournal:
    """For the one-worker mode: the request in the pipeline is written to `inflight` before it
    runs and cleared after, so a sidecar restarted after a crash knows what it died on; deaths
    are kept in `deaths.json`. A plain write (no fsync) is enough: the page cache outlives the
    process, and a node crash is not the request's doing."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._deaths_path = directory / "deaths.json"
        self.poison = PoisonRequests()
        self._logged: set[RequestDigest] = set()
        self._load()
        self._fd = os.open(directory / "inflight", os.O_RDWR | os.O_CREAT, 0o600)
        found = os.pread(self._fd, _INFLIGHT.size, 0)
        if len(found) == _INFLIGHT.size and any(found):
            digest = RequestDigest(*_INFLIGHT.unpack(found))
            deaths = self.poison.note_death(digest)
            self._save()
            log.error(
                "the previous sidecar process died processing a request; it is refused after a second death",
                request=str(digest),
                deaths=deaths,
            )
        self._clear()

    @classmethod
    def open(cls, directory: Path) -> CrashJournal | None:
        """None (with one log line) when the directory cannot be used: the sidecar runs unprotected."""
        try:
            return cls(directory)
        except (OSError, ValueError) as exc:
            log.warning("no crash journal; a request that crashes the sidecar will be retried", error=str(exc))
            return None

    def begin(self, raw: bytes) -> None:
        """Raises PoisonRequest for a request that killed the sidecar twice; notes it otherwise."""
        digest = RequestDigest.of(raw)
        try:
            self.poison.check(raw, digest)
        except PoisonRequest as exc:
            # Declared at start-up, so the first refusal in this process is the one logged.
            raise PoisonRequest(digest, first_refusal=not self._refused(digest)) from exc
        os.pwrite(self._fd, _INFLIGHT.pack(digest.size, digest.crc32), 0)

    def end(self) -> None:
        self._clear()

    def close(self) -> None:
        os.close(self._fd)

    def _refused(self, digest: RequestDigest) -> bool:
        """Whether this process refused (and logged) the request before."""
        seen = digest in self._logged
        self._logged.add(digest)
        return seen

    def _clear(self) -> None:
        os.pwrite(self._fd, bytes(_INFLIGHT.size), 0)

    def _load(self) -> None:
        try:
            entries = json.loads(self._deaths_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("crash journal unreadable; starting a new one", path=str(self._deaths_path), error=str(exc))
            return
        for entry in entries if isinstance(entries, list) else []:
            try:
                digest = RequestDigest(int(entry["size"]), int(entry["crc32"]))
                for _ in range(min(int(entry["deaths"]), DEATHS_TO_REFUSE)):
                    self.poison.note_death(digest)
            except (KeyError, TypeError, ValueError):
                continue

    def _save(self) -> None:
        entries = [{"size": d.size, "crc32": d.crc32, "deaths": n} for d, n in self.poison.items()]
        partial = self._deaths_path.with_suffix(".tmp")
        partial.write_text(json.dumps(entries))
        partial.replace(self._deaths_path)
