"""Cardinality caps kept in the state store, so they hold across worker processes, pods and restarts.

A cap bounds the distinct members of a family: the ledger rows of one UTC day, the subjects of one
budget window keyed on a span attribute. The store admits members atomically (`admit`: already
admitted, or added while the family holds fewer than the cap), and admission only grows until the
family expires, so asking again gives the same answer: a batch the Collector retries lands in the
same rows as the first time, which keeps the charge retry-safe without a fingerprint of its own.

Each process remembers what the store answered, so a batch asks the store only about members it
has not seen yet (one round trip, none in the steady state). While the store does not answer,
members are admitted against a cap kept by this process alone, as before the cap was shared.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import structlog

from processor.stages.policy.budget_state import admitted_of

log = structlog.get_logger(__name__)

# The stand-in member everything past a cap is charged to.
OVERFLOW = "__overflow__"
# Families a process remembers answers for (older ones are asked again, which costs a round trip).
_FAMILIES_REMEMBERED = 64


@runtime_checkable
class AdmittingStore(Protocol):
    def admit(self, family: str, members: list[str], cap: int, expires_at: int) -> set[str]:
        """Of `members`, those admitted to `family` (at most `cap` distinct members, smallest
        first among newcomers), atomically across every process sharing the store. The family
        is forgotten after `expires_at` (epoch seconds)."""
        ...


@dataclass
class _Known:
    admitted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    # Admitted by this process alone while the store did not answer.
    local: set[str] = field(default_factory=set)


class StoreCap:
    """At most `cap` distinct members per family, counted in the store (see the module docstring)."""

    def __init__(self, cap: int, what: str) -> None:
        self.cap = cap
        self.what = what
        self._lock = threading.Lock()
        self._families: dict[str, _Known] = {}
        self._told_local = False

    def admitted(self, store: object, family: str, members: set[str], expires_at: int) -> set[str]:
        """The members of `members` admitted to `family`; the others go to the overflow member."""
        with self._lock:
            known = self._families.get(family)
            if known is None:
                if len(self._families) >= _FAMILIES_REMEMBERED:
                    del self._families[next(iter(self._families))]
                known = self._families[family] = _Known()
            unknown = members - known.admitted - known.refused
        if unknown:
            found = self._ask(store, family, unknown, expires_at)
            with self._lock:
                if found is None:
                    found = admitted_of(known.local, list(unknown), self.cap)
                    known.admitted |= found
                else:
                    known.admitted |= found
                    # Refusals are final while the family lives; bounded: random values keep coming.
                    if len(known.refused) > 4 * self.cap:
                        known.refused.clear()
                    known.refused |= unknown - found
        with self._lock:
            return members & known.admitted

    def _ask(self, store: object, family: str, members: set[str], expires_at: int) -> set[str] | None:
        if not isinstance(store, AdmittingStore):
            return None
        try:
            return store.admit(family, sorted(members), self.cap, expires_at)
        except Exception as exc:
            if not self._told_local:
                self._told_local = True
                log.warning(
                    "state store cannot count the cardinality cap; this process counts it alone meanwhile",
                    cap=self.what,
                    error=type(exc).__name__,
                )
            return None
