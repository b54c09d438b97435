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
import os
import secrets
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from processor.stages.policy.budget_spill import PendingCharge, SpillFile
from processor.stages.policy.budget_state import (
    Applied,
    BudgetStore,
    MemoryStore,
    RedisStore,
    SqliteStore,
    StateRows,
    _recorded,
    default_state_path,
    redacted_url,
)
from processor.stages.policy.store_caps import AdmittingStore

log = structlog.get_logger(__name__)

# What spans and API answers say: never the store's address or the client's error text.
UNAVAILABLE = "budget store unavailable"
STORE_UP = "genops_budget_store_up"
PENDING = "genops_budget_store_pending_charges"
LOST = "genops_budget_charges_lost_total"
# Charges kept in memory when the spill file cannot be written either; more are dropped (counted
# and logged): a bound on what a double failure may cost in memory.
MAX_PENDING_IN_MEMORY = 100_000
# Windows whose last known total is remembered for the estimates (a bound: keys keep coming).
MAX_KNOWN_TOTALS = 100_000
RETRY_SECONDS = 1.0


class StoreUnavailable(Exception):
    def __init__(self) -> None:
        super().__init__(UNAVAILABLE)


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
        self.lost = Counter(
            LOST,
            "Budget charges dropped: the store was down, the spill file could not be written and memory was full.",
            registry=registry,
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
        self._spill = SpillFile(spill_path, spill_glob)
        self._spill_problem: str | None = None
        # How many of the spill file's charges are in _pending, being applied.
        self._spill_loaded = 0
        # Rows of a deleted state file not yet loaded into its replacement.
        self._restore: StateRows | None = None
        # One copy of a deleted file at a time (a batch and the recovery thread may both see it).
        self._file_lock = threading.Lock()
        self._told_unwritable = False
        self._told_dropped = False
        # The first ones of _pending that came from the spill file (still in it until applied).
        self._loaded_in_pending = 0
        self._retry_seconds = retry_seconds
        self._max_in_memory = max_in_memory
        self.metrics = StoreMetrics(registry)
        self._lock = threading.Lock()
        self._pending: deque[PendingCharge] = deque()
        # Fingerprint -> the totals its batch was answered with, for every kept charge.
        self._kept: dict[str, dict[str, float]] = {}
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
            return self._pending_locked()

    def _pending_locked(self) -> int:
        # The spill file's charges being applied are in _pending too.
        return len(self._pending) + self._spill.count - self._spill_loaded

    def apply(self, fingerprint: str, increments: dict[str, float], expires_at: dict[str, int]) -> Applied:
        with self._lock:
            kept = self._kept.get(fingerprint)
            if kept is not None:
                return Applied(_recorded(kept, increments, self._estimates(list(increments))), True)
            backend = self._backend if self.problem is None else None
        if isinstance(backend, SqliteStore) and backend.file_replaced():
            # Checked on every batch (one stat): a charge written into a deleted file is found only
            # when this process copies that file, and a Collector retry sent meanwhile to another
            # worker would not find its fingerprint in the new file and be charged again.
            self._check_file()
            backend = None
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

    def admit(self, family: str, members: list[str], cap: int, expires_at: int) -> set[str]:
        """The store's answer (processor/stages/policy/store_caps.py); StoreUnavailable while it is down (the
        caller then counts the cap in its own process)."""
        backend = self._backend if self.problem is None else None
        if not isinstance(backend, AdmittingStore):
            raise StoreUnavailable()
        try:
            return backend.admit(family, members, cap, expires_at)
        except Exception as exc:
            self._down(exc)
            raise StoreUnavailable() from None

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
        # A last pass: charges written since the last check into a file deleted meanwhile, or kept
        # while the store was down, go to the store now if it answers.
        with contextlib.suppress(Exception):
            self._check_file()
            if self.problem is not None or self.pending():
                self._recover()
        if self._backend is not None:
            try:
                self._backend.close()
            except Exception:
                log.warning("closing the budget store failed", store=self.where, exc_info=True)
        with self._lock:
            # Those read from the spill file are still in it.
            unspilled = list(self._pending)[self._loaded_in_pending :]
            if unspilled:
                try:
                    self._spill.append(unspilled)
                    self._pending.clear()
                except OSError as exc:
                    log.error(
                        f"stopping with budget charges not applied and the spill file {self._spill.path} not"
                        f" writable ({exc.strerror}): they are lost; make its directory writable",
                        store=self.where,
                        lost=len(unspilled),
                    )
                    self.metrics.lost.inc(len(unspilled))
            if self._spill.count:
                log.error(
                    "stopping with budget charges not applied; they stay in the spill file for the next start",
                    store=self.where,
                    pending=self._spill.count,
                    spill_file=str(self._spill.path),
                )
            self._spill.close()

    # -- while down ------------------------------------------------------------------------------

    def _keep(self, charge: PendingCharge) -> Applied:
        with self._lock:
            for key, amount in charge.increments.items():
                self._known[key] = self._known.get(key, 0.0) + amount
            totals = {key: self._known[key] for key in charge.increments}
            self._kept[charge.fingerprint] = totals
            # To the file first: a worker killed during the outage (out of memory, a poison
            # request) leaves its charges there for the next process to take over.
            if self._spilled_now(charge):
                pass
            elif len(self._pending) < self._max_in_memory:
                self._pending.append(charge)
            else:
                self.metrics.lost.inc()
                if not self._told_dropped:  # once per outage; the counter has every one
                    self._told_dropped = True
                    log.error(
                        "budget charges dropped: the store is down, the spill file cannot be written and"
                        f" memory is full; counted in {LOST}",
                        store=self.where,
                        spill_file=str(self._spill.path),
                    )
            self.metrics.pending.set(self._pending_locked())
            return Applied(dict(totals), False)

    def _spilled_now(self, charge: PendingCharge) -> bool:
        """Whether `charge` went to the spill file; a file that cannot be written is logged once
        (until it can again), and the charge then stays in memory."""
        try:
            self._spill.append([charge], durable=False)
        except OSError as exc:
            if self._spill_problem is None:
                self._spill_problem = str(exc.strerror)
                log.error(
                    f"budget charges cannot be spilled to {self._spill.path} ({exc.strerror}): kept in memory"
                    " only, and lost if this process stops; make the directory writable",
                    store=self.where,
                )
            return False
        self._spill_problem = None
        return True

    def _estimates(self, keys: list[str]) -> dict[str, float]:
        # _known holds the last stored total plus every kept charge added since.
        return {key: self._known.get(key, 0.0) for key in keys}

    def _kept_sum(self, key: str) -> float:
        if not self._kept:
            return 0.0
        return sum(charge.increments.get(key, 0.0) for charge in self._pending) + self._spilled_sum(key)

    def _spilled_sum(self, key: str) -> float:
        if not self._spill.count:
            return 0.0
        unloaded = self._spill.read()[self._spill_loaded :]
        return sum(charge.increments.get(key, 0.0) for charge in unloaded)

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

    def _take_over_left_behind(self) -> None:
        charges = self._spill.take_over_left_behind()
        if not charges:
            return
        with self._lock:
            for charge in charges:
                # Answered by a process that stopped: a retry here finds it kept, with no totals.
                self._kept.setdefault(charge.fingerprint, {})
            self.metrics.pending.set(self._pending_locked())

    # -- recovery thread -------------------------------------------------------------------------

    def _recover_loop(self) -> None:
        while True:
            try:
                # Every pass: a worker that died later (killed, out of memory) left its file then.
                self._take_over_left_behind()
                self._check_file()
                self._check_writable()
                if self.problem is not None or self.pending():
                    self._recover()
            except Exception:
                log.exception("budget store recovery failed; retried later", store=self.where)
            if self._stop.wait(self._retry_seconds):
                return

    def _check_file(self) -> None:
        with self._file_lock:
            self._check_file_locked()

    def _check_writable(self) -> None:
        """A file or directory made read-only while open is still written through the open
        connection, until the next start fails on it: said now, once, while it can be fixed."""
        backend = self._backend
        if self.problem is not None or not isinstance(backend, SqliteStore):
            return  # a store that is down has said why
        path = Path(backend.path)
        writable = all(os.access(p, os.W_OK) for p in (path, path.parent) if p.exists())
        if not writable and not self._told_unwritable:
            log.error(
                f"budget state file {self.where} or its directory became read-only: it is still written"
                " through the open file, but the next start cannot open it; make both writable by this"
                " process",
                store=self.where,
            )
        self._told_unwritable = not writable

    def _check_file_locked(self) -> None:
        backend = self._backend
        if self.problem is not None or not isinstance(backend, SqliteStore) or not backend.file_replaced():
            return
        # The file was deleted (or replaced) under the open connection, which still writes into the
        # unlinked copy. Charges are kept from now (marked down) while its rows go into a new file
        # at the path (by _reopen, on the recovery thread); the kept ones are applied there after.
        with self._lock:
            self.problem = f"budget state file {self.where} was deleted while in use"
            self.metrics.up.set(0)
        rows = backend.take_rows()
        backend.close()
        # Held until they are in a file: a new one that cannot be made now is retried by _recover.
        self._restore = rows
        log.error(
            f"budget state file {self.where} was deleted while in use: recreating it with the spend it held;"
            " keep the file on a volume nothing else cleans",
            store=self.where,
            windows=len(rows.consumed),
        )

    def _reopen(self) -> bool:
        """Reopened each time: a file made writable again, a Redis restarted elsewhere. Under the
        file lock: the rows of a deleted file being copied go into the new one first."""
        with self._file_lock:
            stale, self._backend = self._backend, None
            if stale is not None:
                with contextlib.suppress(Exception):
                    stale.close()
            try:
                self._backend = self._open()
                if self._restore is not None:
                    assert isinstance(self._backend, SqliteStore)
                    self._backend.load(self._restore)
                    self._restore = None
            except Exception:
                return False
        return True

    def _recover(self) -> None:
        if self.problem is not None and not self._reopen():
            return
        backend = self._backend
        assert backend is not None
        applied = 0
        try:
            while True:
                with self._lock:
                    if not self._pending and self._spill.count:
                        # The file is emptied only once all it held is applied: a process killed
                        # meanwhile leaves it whole, and the store skips what it applied already.
                        if self._spill_loaded == self._spill.count:
                            self._spill.clear()
                            self._spill_loaded = 0
                            continue
                        # Only those not loaded before: the rest of the file is applied already.
                        loaded = self._spill.read()[self._spill_loaded :]
                        self._pending.extend(loaded)
                        self._loaded_in_pending = len(loaded)
                        self._spill_loaded = self._spill.count
                    if not self._pending:
                        self._kept.clear()
                        self.metrics.pending.set(0)
                        was_down, self.problem = self.problem is not None, None
                        self._told_dropped = False
                        self.metrics.up.set(1)
                        break
                    charge = self._pending[0]
                done = backend.apply(charge.fingerprint, charge.increments, charge.expires_at)
                with self._lock:
                    self._pending.popleft()
                    self._loaded_in_pending = max(0, self._loaded_in_pending - 1)
                    self.metrics.pending.set(self._pending_locked())
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


def open_store(backend: str, state_path: str, redis_url: str, registry: CollectorRegistry | None = None) -> BudgetStore:
    """The configured store, guarded: a failing Redis or SQLite
    file keeps charges for later instead of losing them. Its charges kept on disk, if it comes to
    that, go next to the state file (for Redis: in the default state directory)."""
    if backend == "memory":
        return MemoryStore()
    # Unique per store, not per PID: a restarted container's worker often gets its predecessor's
    # PID, and must not mistake that one's left-behind charges for its own.
    pid = f"{os.getpid()}-{secrets.token_hex(4)}"
    if backend == "redis":
        spill_dir = Path(state_path).parent if state_path else default_state_path().parent
        return GuardedStore(
            lambda: RedisStore(redis_url),
            where=redacted_url(redis_url),
            kind="redis",
            spill_path=spill_dir / f"redis-pending.{pid}.jsonl",
            spill_glob="redis-pending.*.jsonl",
            registry=registry,
        )
    path = state_path or str(default_state_path())
    name = Path(path).name
    return GuardedStore(
        lambda: SqliteStore(path),
        where=path,
        kind="sqlite",
        spill_path=Path(path).parent / f"{name}.pending.{pid}.jsonl",
        spill_glob=f"{name}.pending.*.jsonl",
        registry=registry,
    )
