"""Keeps budget charges while the state store is down, and applies them once it is back.

A store call that fails (Redis killed or hung, SQLite file read-only, corrupt or missing) marks the
store down: that batch's charge, and every one after it until the store answers again, is kept
here (in memory up to a bound, then appended to a local file) and the batch goes on with totals
estimated from the last ones the store gave plus the kept charges. A thread of its own retries the
store, off the request path, and applies the kept charges in order, each with its batch
fingerprint: the store adds a fingerprint's spend once, so a charge whose first attempt reached the
store after all (a hung Redis that resumes) or a Collector retry meanwhile is still counted once.

State changes (down with the reason and the fix, back with how many charges were applied) are one
log line each, not one per batch; `genops_budget_store_up` and `genops_budget_store_pending_charges`
show them to Prometheus, and /readyz reports the store degraded (the node stays ready: a store
outage must not take the pipeline down).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Gauge

from processor.budget_state import Applied, BudgetStore, SqliteStore, _recorded

log = structlog.get_logger(__name__)

# What spans and API answers say: never the store's address or the client's error text.
UNAVAILABLE = "budget store unavailable"
STORE_UP = "genops_budget_store_up"
PENDING = "genops_budget_store_pending_charges"
# Charges kept in memory before they go to the spill file.
MAX_PENDING_IN_MEMORY = 10_000
# Windows whose last known total is remembered for the estimates (a bound: keys keep coming).
MAX_KNOWN_TOTALS = 100_000
RETRY_SECONDS = 1.0


class StoreUnavailable(Exception):
    def __init__(self) -> None:
        super().__init__(UNAVAILABLE)


@dataclass(frozen=True)
class PendingCharge:
    fingerprint: str
    increments: dict[str, float]
    expires_at: dict[str, int]


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.up = Gauge(
            STORE_UP,
            "1 while the budget state store answers; 0 while charges are kept for it.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.pending = Gauge(
            PENDING,
            "Budget charges kept (in memory or spilled to disk) until the state store answers again.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.up.set(1)


def explain(error: BaseException, where: str, kind: str) -> str:
    """One line naming what failed and the fix (no client error text: it may carry the address)."""
    text = str(error).lower()
    if kind == "sqlite" or isinstance(error, sqlite3.Error):
        if "readonly" in text or "read-only" in text or isinstance(error, PermissionError):
            return f"budget state file {where} is read-only: make it and its directory writable by this process"
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return (
                f"budget state file {where} is not a usable SQLite database: move it away (or restore it"
                " from a backup); the sidecar then starts a new one"
            )
        if "unable to open" in text or isinstance(error, IsADirectoryError | FileNotFoundError):
            return f"budget state file {where} cannot be opened: point policy.state_path at a writable file path"
        return f"budget state file {where} failed ({type(error).__name__}): check the disk and the file"
    return f"{where} did not answer ({type(error).__name__}): check that it runs and is reachable"


class GuardedStore:
    """A BudgetStore that never loses a charge to a failing backend (see the module docstring)."""

    def __init__(
        self,
        open_backend: Callable[[], BudgetStore],
        where: str,
        kind: str,
        spill_path: Path,
        spill_glob: str,
        registry: CollectorRegistry | None = None,
        retry_seconds: float = RETRY_SECONDS,
        max_in_memory: int = MAX_PENDING_IN_MEMORY,
    ) -> None:
        self._open = open_backend
        # Names the store in log lines: a file path, or the Redis URL without its credentials.
        self.where = where
        self.kind = kind
        self._spill_path = spill_path
        # Matches the spill files of every process sharing the store's directory.
        self._spill_glob = spill_glob
        self._retry_seconds = retry_seconds
        self._max_in_memory = max_in_memory
        self.metrics = StoreMetrics(registry)
        self._lock = threading.Lock()
        self._pending: deque[PendingCharge] = deque()
        # Fingerprint -> the totals its batch was answered with, for every kept charge.
        self._kept: dict[str, dict[str, float]] = {}
        self._spilled = 0
        self._known: dict[str, float] = {}
        self._backend: BudgetStore | None = None
        self.problem: str | None = None
        self._stop = threading.Event()
        try:
            self._backend = open_backend()
        except Exception as exc:
            self._down(exc)
        self._thread = threading.Thread(target=self._recover_loop, name="budget-store", daemon=True)
        self._thread.start()

    @property
    def up(self) -> bool:
        return self.problem is None

    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + self._spilled

    def apply(self, fingerprint: str, increments: dict[str, float], expires_at: dict[str, int]) -> Applied:
        with self._lock:
            kept = self._kept.get(fingerprint)
            if kept is not None:
                return Applied(_recorded(kept, increments, self._estimates(list(increments))), True)
            backend = self._backend if self.problem is None else None
        if backend is not None:
            try:
                applied = backend.apply(fingerprint, increments, expires_at)
            except Exception as exc:
                self._down(exc)
            else:
                self._remember(applied.totals)
                return applied
        return self._keep(PendingCharge(fingerprint, dict(increments), dict(expires_at)))

    def read(self, keys: list[str]) -> dict[str, float]:
        backend = self._backend if self.problem is None else None
        if backend is not None:
            try:
                found = backend.read(keys)
            except Exception as exc:
                self._down(exc)
            else:
                with self._lock:
                    # Kept charges are not in the store yet: the status API counts them all the same.
                    return {key: value + self._kept_sum(key) for key, value in found.items()}
        with self._lock:
            return self._estimates(keys)

    def scan(self, prefix: str) -> dict[str, float]:
        """The ledger's rows as stored, with the charges kept for the store added (for rows it has)."""
        backend = self._backend if self.problem is None else None
        if backend is None:
            raise StoreUnavailable()
        try:
            found = backend.scan(prefix)
        except Exception as exc:
            self._down(exc)
            raise StoreUnavailable() from None
        with self._lock:
            return {key: value + self._kept_sum(key) for key, value in found.items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._backend is not None:
            try:
                self._backend.close()
            except Exception:
                log.warning("closing the budget store failed", store=self.where, exc_info=True)
        if self.pending():
            log.error(
                "stopping with budget charges not applied; they stay in the spill file for the next start",
                store=self.where,
                pending=self.pending(),
                spill_file=str(self._spill_path),
            )
            with self._lock:
                self._spill_all_locked()

    # -- while down ------------------------------------------------------------------------------

    def _keep(self, charge: PendingCharge) -> Applied:
        with self._lock:
            for key, amount in charge.increments.items():
                self._known[key] = self._known.get(key, 0.0) + amount
            totals = {key: self._known[key] for key in charge.increments}
            self._kept[charge.fingerprint] = totals
            if len(self._pending) < self._max_in_memory:
                self._pending.append(charge)
            else:
                self._spill_locked([charge])
            self.metrics.pending.set(len(self._pending) + self._spilled)
            return Applied(dict(totals), False)

    def _estimates(self, keys: list[str]) -> dict[str, float]:
        # _known holds the last stored total plus every kept charge added since.
        return {key: self._known.get(key, 0.0) for key in keys}

    def _kept_sum(self, key: str) -> float:
        if not self._kept:
            return 0.0
        return sum(charge.increments.get(key, 0.0) for charge in self._pending) + self._spilled_sum(key)

    def _spilled_sum(self, key: str) -> float:
        if not self._spilled:
            return 0.0
        return sum(charge.increments.get(key, 0.0) for charge in self._read_spill())

    def _remember(self, totals: dict[str, float]) -> None:
        with self._lock:
            if len(self._known) + len(totals) > MAX_KNOWN_TOTALS:
                self._known.clear()
            self._known.update(totals)

    def _down(self, error: BaseException) -> None:
        with self._lock:
            if self.problem is not None:
                return
            self.problem = explain(error, self.where, self.kind)
            self.metrics.up.set(0)
        log.error(
            self.problem + "; budget charges are kept and applied when it is back",
            store=self.where,
            error_type=type(error).__name__,
        )

    # -- spill file ------------------------------------------------------------------------------

    def _spill_locked(self, charges: list[PendingCharge]) -> None:
        self._spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self._spill_path.open("a", encoding="utf-8") as out:
            for charge in charges:
                out.write(json.dumps([charge.fingerprint, charge.increments, charge.expires_at]) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self._spilled += len(charges)

    def _spill_all_locked(self) -> None:
        if self._pending:
            self._spill_locked(list(self._pending))
            self._pending.clear()

    def _read_spill(self) -> list[PendingCharge]:
        try:
            lines = self._spill_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        charges = []
        for line in lines:
            try:
                fingerprint, increments, expires_at = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash while it was written: nothing was kept of it
            charges.append(PendingCharge(fingerprint, increments, expires_at))
        return charges

    def _adopt_left_behind(self) -> None:
        """Spill files of processes that stopped (or died) with charges not applied: each process
        holds a lock on its own, so a file whose lock can be taken has no owner left."""
        self._spill_path.parent.mkdir(parents=True, exist_ok=True)
        self._own_lock = self._spill_path.open("a")
        fcntl.flock(self._own_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for path in sorted(self._spill_path.parent.glob(self._spill_glob)):
            if path == self._spill_path:
                continue
            with path.open("a+") as other:
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its process still runs
                previous, self._spill_path = self._spill_path, path
                try:
                    charges = self._read_spill()
                finally:
                    self._spill_path = previous
                with self._lock:
                    self._spill_locked(charges)
                    for charge in charges:
                        self._kept[charge.fingerprint] = {}
                    self.metrics.pending.set(len(self._pending) + self._spilled)
                path.unlink(missing_ok=True)
                log.info("took over budget charges a stopped process had kept", file=str(path), charges=len(charges))

    # -- recovery thread -------------------------------------------------------------------------

    def _recover_loop(self) -> None:
        self._adopt_left_behind()
        while True:
            try:
                self._check_file()
                if self.problem is not None or self.pending():
                    self._recover()
            except Exception:
                log.exception("budget store recovery failed; retried later", store=self.where)
            if self._stop.wait(self._retry_seconds):
                return

    def _check_file(self) -> None:
        backend = self._backend
        if self.problem is not None or not isinstance(backend, SqliteStore) or not backend.file_replaced():
            return
        # The file was deleted (or replaced) under the open connection, which still writes into the
        # unlinked copy. Charges are kept from now (marked down) while its rows go into a new file
        # at the path; the recovery then applies the kept ones there.
        with self._lock:
            self.problem = f"budget state file {self.where} was deleted while in use"
            self.metrics.up.set(0)
        rows = backend.dump()
        fresh = self._open()
        assert isinstance(fresh, SqliteStore)
        fresh.load(rows)
        self._backend = fresh
        backend.close()
        log.error(
            f"budget state file {self.where} was deleted while in use: recreated it with the spend it held;"
            " keep the file on a volume nothing else cleans",
            store=self.where,
            windows=len(rows[0]),
        )
        self._recover(reopen=False)

    def _recover(self, reopen: bool = True) -> None:
        if self.problem is not None and reopen:
            # Reopened each time: a file made writable again, a Redis restarted elsewhere.
            stale, self._backend = self._backend, None
            if stale is not None:
                with contextlib.suppress(Exception):
                    stale.close()
            try:
                self._backend = self._open()
            except Exception:
                return
        backend = self._backend
        assert backend is not None
        applied = 0
        try:
            while True:
                with self._lock:
                    if not self._pending and self._spilled:
                        self._pending.extend(self._read_spill())
                        self._spilled = 0
                        self._spill_path.write_text("")  # emptied, not removed: this process holds its lock
                    if not self._pending:
                        self._kept.clear()
                        self.metrics.pending.set(0)
                        was_down, self.problem = self.problem is not None, None
                        self.metrics.up.set(1)
                        break
                    charge = self._pending[0]
                done = backend.apply(charge.fingerprint, charge.increments, charge.expires_at)
                with self._lock:
                    self._pending.popleft()
                    self.metrics.pending.set(len(self._pending) + self._spilled)
                applied += 1
                if done.totals:
                    self._remember(done.totals)
        except Exception as exc:
            self._down(exc)
            return
        if was_down or applied:
            log.info("budget store answers again; kept charges applied", store=self.where, applied=applied)


def store_degraded(registry: CollectorRegistry) -> str | None:
    """For /readyz: a line when some process's budget store is down (read from the metrics, which
    every worker process reports), else None."""
    up = registry.get_sample_value(STORE_UP)
    if up is None or up >= 1:
        return None
    pending = registry.get_sample_value(PENDING) or 0
    return f"degraded: {UNAVAILABLE}; {int(pending)} budget charges kept until it is back"
