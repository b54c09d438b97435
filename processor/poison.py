"""Requests that killed the process processing them, remembered so they stop killing workers.

The Collector retries UNAVAILABLE without end, so a request that crashes a worker would crash
one on every retry. A death is not always the request's fault (an operator's kill, an OOM kill
caused by something else), so the first death earns one retry; a request that kills a second
time is refused as malformed from then on.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

# Deaths after which the same bytes are refused without being processed.
DEATHS_TO_REFUSE = 2
# Distinct requests remembered; the oldest is forgotten first.
REMEMBERED = 1024


@dataclass(frozen=True)
class RequestDigest:
    size: int
    sha256: str

    @classmethod
    def of(cls, raw: bytes) -> RequestDigest:
        return cls(len(raw), hashlib.sha256(raw).hexdigest())


class PoisonRequest(ValueError):
    """The request killed its worker process before; refused as non-retryable (INVALID_ARGUMENT)."""

    def __init__(self, digest: RequestDigest, first_refusal: bool) -> None:
        super().__init__(
            f"request of {digest.size} bytes (sha256 {digest.sha256}) killed a worker process "
            f"{DEATHS_TO_REFUSE} times; refused"
        )
        self.digest = digest
        self.first_refusal = first_refusal


class PoisonRequests:
    """Deaths per request digest, bounded. Sizes are kept apart so that the common case (a size
    no poison request has) is answered without hashing the request."""

    def __init__(self, remembered: int = REMEMBERED) -> None:
        self.remembered = remembered
        self._deaths: OrderedDict[RequestDigest, int] = OrderedDict()
        self._sizes: dict[int, int] = {}

    def check(self, raw: bytes) -> None:
        """Raises PoisonRequest when these bytes killed workers often enough."""
        if len(raw) not in self._sizes:
            return
        digest = RequestDigest.of(raw)
        deaths = self._deaths.get(digest, 0)
        if deaths >= DEATHS_TO_REFUSE:
            raise PoisonRequest(digest, first_refusal=False)

    def died_on(self, raw: bytes) -> RequestDigest:
        """Notes a death; raises PoisonRequest when this one makes the request refused."""
        digest = RequestDigest.of(raw)
        deaths = self._deaths.pop(digest, 0) + 1
        if deaths == 1:
            self._sizes[digest.size] = self._sizes.get(digest.size, 0) + 1
        self._deaths[digest] = deaths
        while len(self._deaths) > self.remembered:
            forgotten, _ = self._deaths.popitem(last=False)
            self._sizes[forgotten.size] -= 1
            if not self._sizes[forgotten.size]:
                del self._sizes[forgotten.size]
        if deaths >= DEATHS_TO_REFUSE:
            raise PoisonRequest(digest, first_refusal=True)
        return digest
