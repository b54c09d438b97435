"""The reservation stores (processor/stages/policy/reservations.py): a reservation's decision and hold as one
atomic step against the budget store's consumed totals, its release, reconciliation and expiry.

SQLite: tables beside the budget state's own in its file, one BEGIN IMMEDIATE transaction per
call. Redis: one Lua script per call, every key under the budget store's hash tag. Memory: beside
the memory budget store of one process, under one lock. `decide` is the rule all three apply.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from processor.core import genops_semconv as gs
from processor.stages.policy.budget_state import (
    FINGERPRINT_TTL_SECONDS,
    OPEN_TIMEOUT_SECONDS,
    REDIS_PREFIX,
    BudgetStore,
    default_state_path,
    redis_client,
)

# How long a reconciled or expired reservation is remembered: a retried batch (the Collector's
# queue) or a late span finds it. The same horizon as a batch fingerprint.
REMEMBER_SECONDS = FINGERPRINT_TTL_SECONDS
# Why a reconciliation is flagged incomplete (§3.5).
INCOMPLETE_EXPIRED = "reservation_expired"
INCOMPLETE_NO_ACTUAL = "actual_unavailable"


@dataclass(frozen=True)
class Hold:
    """One budget window a reservation counts against: the budget store's consumed key."""

    key: str
    budget: str
    limit_usd: float
    enforced: bool


@dataclass(frozen=True)
class Decision:
    result: str
    reason_code: str
    reserved: float
    budget_name: str
    remaining: float | None
    expires_at: float
    repeated: bool = False
    unit: str = gs.ACCOUNTING_UNIT_USD

    def to_json(self) -> dict[str, object]:
        return {
            "result": self.result,
            "reason_code": self.reason_code,
            "reserved": self.reserved,
            "unit": self.unit,
            "budget_name": self.budget_name,
            "remaining": self.remaining,
            # A blocked reservation holds nothing, so nothing expires.
            "expires_at": _rfc3339(self.expires_at) if self.result == gs.ALLOWED else "",
            "repeated": self.repeated,
        }


@dataclass(frozen=True)
class Reconciled:
    """A reserved span's accounting, as written on it (the same for a retried batch)."""

    reserved: float
    actual: float | None
    budget_name: str
    remaining: float | None
    incomplete: str  # "" when complete, else INCOMPLETE_*
    reserved_at: float
    # Reconciled by this call (not a retried batch finding it done): counted once.
    first: bool = False
    # The budget windows held (charged the reservation when the actual is unavailable).
    keys: tuple[str, ...] = ()

    @property
    def delta(self) -> float | None:
        return None if self.actual is None else self.actual - self.reserved


def decide(amount: float, holds: list[Hold], used: Mapping[str, float], now: float, expires_at: float) -> Decision:
    """The reservation answer from each budget window's use (consumed plus live holds): the
    SQLite and memory books call it inside their transaction; the Redis script mirrors it."""
    tightest: tuple[float, str] | None = None
    for hold in holds:
        if not hold.enforced:
            continue
        spent = used.get(hold.key, 0.0)
        if spent >= hold.limit_usd:
            return Decision(gs.BLOCKED, gs.BUDGET_EXCEEDED, 0.0, hold.budget, 0.0, now)
        if spent + amount > hold.limit_usd:
            return Decision(gs.BLOCKED, gs.BUDGET_RESERVATION_FAILED, 0.0, hold.budget, hold.limit_usd - spent, now)
        room = hold.limit_usd - spent - amount
        if tightest is None or room < tightest[0]:
            tightest = (room, hold.budget)
    if tightest is None:
        return Decision(gs.ALLOWED, "", amount, "", None, expires_at)
    return Decision(gs.ALLOWED, "", amount, tightest[1], tightest[0], expires_at)


class ReservationStore(Protocol):
    """`reserve` and `release` sweep first (like `sweep`) and return how many holds that released."""

    def reserve(
        self, awu: str, amount: float, holds: list[Hold], now: float, expires_at: float
    ) -> tuple[Decision, int]: ...

    def release(self, awu: str, now: float) -> tuple[bool, int]: ...

    def reconcile(self, actuals: dict[str, float | None], now: float) -> dict[str, Reconciled]:
        """For each AWU of `actuals` that was reserved: releases its hold (once) and returns its
        accounting; AWUs never reserved are left out."""
        ...

    def sweep(self, now: float) -> int:
        """Releases the holds whose time to live passed; returns how many."""
        ...

    def any_recent(self) -> bool:
        """Whether a reservation may be remembered at all (lets a batch skip reading its ids)."""
        ...

    def close(self) -> None: ...


def _decision_record(decision: Decision, keys: list[str], now: float) -> str:
    return json.dumps(
        {
            "at": now,
            "reserved": decision.reserved,
            "budget": decision.budget_name,
            "remaining": decision.remaining,
            "expires_at": decision.expires_at,
            "keys": keys,
        }
    )


def _recorded_decision(record: str) -> Decision:
    found = json.loads(record)
    return Decision(gs.ALLOWED, "", found["reserved"], found["budget"], found["remaining"], found["expires_at"], True)


def _incomplete(state: str, actual: float | None) -> str:
    """Why a first reconciliation is incomplete, "" when it is not (the Redis script's rule too)."""
    if state == "expired":
        return INCOMPLETE_EXPIRED
    return "" if actual is not None else INCOMPLETE_NO_ACTUAL


def _reconciled(record: str, actual: float | None, incomplete: str, first: bool) -> Reconciled:
    found = json.loads(record)
    budget, keys = found["budget"], tuple(found["keys"])
    return Reconciled(found["reserved"], actual, budget, found["remaining"], incomplete, found["at"], first, keys)


@dataclass
class _MemoryRow:
    state: str  # held, released, expired, reconciled
    record: str
    reserved: float
    keys: list[str]
    expires_at: float
    forget_at: float
    actual: float | None = None
    incomplete: str = ""


class MemoryReservations:
    """With the memory budget store (one process): holds beside it, decided under one lock."""

    def __init__(self, store: BudgetStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._rows: dict[str, _MemoryRow] = {}

    def reserve(
        self, awu: str, amount: float, holds: list[Hold], now: float, expires_at: float
    ) -> tuple[Decision, int]:
        with self._lock:
            expired = self._sweep(now)
            if awu in self._rows:
                return _recorded_decision(self._rows[awu].record), expired
            keys = [hold.key for hold in holds]
            consumed = self.store.read(keys)
            used = {key: consumed[key] + self._held(key) for key in keys}
            decision = decide(amount, holds, used, now, expires_at)
            if decision.result == gs.ALLOWED:
                record = _decision_record(decision, keys, now)
                self._rows[awu] = _MemoryRow("held", record, amount, keys, expires_at, expires_at + REMEMBER_SECONDS)
            return decision, expired

    def _held(self, key: str) -> float:
        return sum(row.reserved for row in self._rows.values() if row.state == "held" and key in row.keys)

    def release(self, awu: str, now: float) -> tuple[bool, int]:
        with self._lock:
            expired = self._sweep(now)
            row = self._rows.get(awu)
            if row is None or row.state != "held":
                return False, expired
            row.state = "released"
            return True, expired

    def reconcile(self, actuals: dict[str, float | None], now: float) -> dict[str, Reconciled]:
        with self._lock:
            out = {}
            for awu, actual in actuals.items():
                row = self._rows.get(awu)
                if row is None or row.state == "released":
                    continue
                first = row.state != "reconciled"
                if first:
                    row.incomplete = _incomplete(row.state, actual)
                    row.state, row.actual, row.forget_at = "reconciled", actual, now + REMEMBER_SECONDS
                out[awu] = _reconciled(row.record, row.actual, row.incomplete, first)
            return out

    def sweep(self, now: float) -> int:
        with self._lock:
            return self._sweep(now)

    def _sweep(self, now: float) -> int:
        expired = [row for row in self._rows.values() if row.state == "held" and row.expires_at <= now]
        for row in expired:
            row.state = "expired"
        self._rows = {awu: row for awu, row in self._rows.items() if row.forget_at > now}
        return len(expired)

    def any_recent(self) -> bool:
        return bool(self._rows)

    def close(self) -> None:
        pass


class SqliteReservations:
    """Tables beside the budget state's own in its SQLite file; BEGIN IMMEDIATE makes the read of
    consumed and held amounts and the new hold one step against every process writing the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._inode: int | None = None
        # Opened on first use, again when the path names another file (deleted, replaced, moved
        # away when corrupt, as the guarded budget store asks) and after any failed call: a
        # connection opened while the file was read-only stays read-only, and one kept open on a
        # broken file would keep the guarded store from recovering it. A corrupt or read-only
        # file makes the calls fail (the API answers UNAVAILABLE, the stage passes spans
        # unreconciled); the sidecar starts all the same.

    def _open(self) -> sqlite3.Connection:
        try:
            inode: int | None = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if self._db is not None and inode == self._inode:
            return self._db
        if self._db is not None:
            self._db.close()
            self._db = None
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=OPEN_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
        try:
            _create_tables(db)
            self._inode = os.stat(self.path).st_ino
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    @property
    def _tx(self) -> sqlite3.Connection:
        """The connection, inside `_transaction` (which opened it)."""
        assert self._db is not None
        return self._db

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._open()
            except sqlite3.Error:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                raise

    def _transaction(self, work):
        with self._using() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work()
                db.execute("COMMIT")
                return result
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _sweep(self, now: float) -> int:
        expired = self._tx.execute(
            "UPDATE reservations SET state = 'expired' WHERE state = 'held' AND expires_at <= ?", (now,)
        ).rowcount
        if expired:
            self._tx.execute("DELETE FROM holds WHERE expires_at <= ?", (now,))
        self._tx.execute("DELETE FROM reservations WHERE forget_at <= ?", (now,))
        return expired

    def reserve(
        self, awu: str, amount: float, holds: list[Hold], now: float, expires_at: float
    ) -> tuple[Decision, int]:
        def work() -> tuple[Decision, int]:
            expired = self._sweep(now)
            row = self._tx.execute("SELECT record FROM reservations WHERE awu = ?", (awu,)).fetchone()
            if row is not None:
                return _recorded_decision(row[0]), expired
            used = {}
            for hold in holds:
                (consumed,) = self._tx.execute(
                    "SELECT coalesce((SELECT usd FROM consumed WHERE key = ?), 0.0)", (hold.key,)
                ).fetchone()
                (held,) = self._tx.execute(
                    "SELECT coalesce(sum(usd), 0.0) FROM holds WHERE key = ?", (hold.key,)
                ).fetchone()
                used[hold.key] = consumed + held
            decision = decide(amount, holds, used, now, expires_at)
            if decision.result == gs.ALLOWED:
                keys = [hold.key for hold in holds]
                self._tx.execute(
                    "INSERT INTO reservations (awu, state, record, expires_at, forget_at) VALUES (?, 'held', ?, ?, ?)",
                    (awu, _decision_record(decision, keys, now), expires_at, expires_at + REMEMBER_SECONDS),
                )
                self._tx.executemany(
                    "INSERT INTO holds (key, awu, usd, expires_at) VALUES (?, ?, ?, ?)",
                    [(key, awu, amount, expires_at) for key in keys],
                )
            return decision, expired

        return self._transaction(work)

    def release(self, awu: str, now: float) -> tuple[bool, int]:
        def work() -> tuple[bool, int]:
            expired = self._sweep(now)
            released = self._tx.execute(
                "UPDATE reservations SET state = 'released' WHERE awu = ? AND state = 'held'", (awu,)
            ).rowcount
            self._tx.execute("DELETE FROM holds WHERE awu = ?", (awu,))
            return released > 0, expired

        return self._transaction(work)

    def reconcile(self, actuals: dict[str, float | None], now: float) -> dict[str, Reconciled]:
        # Which of the batch's spans were reserved at all, read without the write lock: most are
        # not, and most batches have none.
        with self._using() as db:
            wanted = list(actuals)
            reserved = set()
            for at in range(0, len(wanted), 500):
                chunk = wanted[at : at + 500]
                marks = ",".join("?" * len(chunk))
                reserved |= {
                    row[0] for row in db.execute(f"SELECT awu FROM reservations WHERE awu IN ({marks})", chunk)
                }
        if not reserved:
            return {}

        def work() -> dict[str, Reconciled]:
            out = {}
            for awu, actual in actuals.items():
                if awu not in reserved:
                    continue
                row = self._tx.execute(
                    "SELECT state, record, actual, incomplete FROM reservations WHERE awu = ?", (awu,)
                ).fetchone()
                if row is None or row[0] == "released":
                    continue
                state, record, recorded_actual, incomplete = row
                first = state != "reconciled"
                if first:
                    incomplete = _incomplete(state, actual)
                    self._tx.execute(
                        "UPDATE reservations SET state = 'reconciled', actual = ?, incomplete = ?, forget_at = ?"
                        " WHERE awu = ?",
                        (actual, incomplete, now + REMEMBER_SECONDS, awu),
                    )
                    self._tx.execute("DELETE FROM holds WHERE awu = ?", (awu,))
                    recorded_actual = actual
                out[awu] = _reconciled(record, recorded_actual, incomplete, first)
            return out

        return self._transaction(work)

    def sweep(self, now: float) -> int:
        return self._transaction(lambda: self._sweep(now))

    def any_recent(self) -> bool:
        with self._using() as db:
            return db.execute("SELECT 1 FROM reservations LIMIT 1").fetchone() is not None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _create_tables(db: sqlite3.Connection) -> None:
    """The budget store's consumed table (if this opens the file first) and the reservation
    tables, retried while another process of the pod sets up the same file."""
    db.execute("PRAGMA busy_timeout=2000")
    deadline = time.monotonic() + OPEN_TIMEOUT_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS consumed"
                " (key TEXT PRIMARY KEY, usd REAL NOT NULL, expires_at INTEGER NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS reservations (awu TEXT PRIMARY KEY, state TEXT NOT NULL,"
                " record TEXT NOT NULL, expires_at REAL NOT NULL, forget_at REAL NOT NULL,"
                " actual REAL, incomplete TEXT NOT NULL DEFAULT '')"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS holds (key TEXT NOT NULL, awu TEXT NOT NULL, usd REAL NOT NULL,"
                " expires_at REAL NOT NULL, PRIMARY KEY (key, awu))"
            )
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# Every key under the budget store's one hash tag (one cluster slot). Reservation records are
# hashes (state, record, expires_at, actual, incomplete); each consumed key's live holds are a hash
# awu -> USD; the live index is a sorted set by expiry, so expired holds are found without a scan.
_R = REDIS_PREFIX + "reservation:"
_HOLDS = REDIS_PREFIX + "holds:"
_LIVE = REDIS_PREFIX + "reservations:live"
_RECENT = REDIS_PREFIX + "reservations:recent"

# Released holds of expired reservations; ARGV[1] is now. Shared head of every script below.
_SWEEP = """
local function sweep(now)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, awu in ipairs(gone) do
    local record = KEYS[2] .. awu
    local found = redis.call('HGET', record, 'record')
    if found then
      for _, key in ipairs(cjson.decode(found)['keys']) do
        redis.call('HDEL', KEYS[3] .. key, awu)
      end
      redis.call('HSET', record, 'state', 'expired')
    end
    redis.call('ZREM', KEYS[1], awu)
  end
  return #gone
end
"""

# KEYS: live index, record prefix, holds prefix, consumed prefix, recent marker.
# ARGV: now, awu, amount, expires_at, forget_at, the window keys as JSON, then per budget window:
# key, limit, enforced, name. The record is put together from the arguments' own text, not by
# cjson, which keeps only 14 significant digits of a number.
# Mirrors `decide`: the first enforced window with no room blocks; otherwise every window gets
# the hold. Returns {expired swept, repeated, result, reason, budget, remaining or '', record}.
_RESERVE = (
    _SWEEP
    + """
local now, awu, amount = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local expired = sweep(now)
local record_key = KEYS[2] .. awu
local found = redis.call('HGET', record_key, 'record')
if found then return {expired, 1, 'ALLOWED', '', '', '', found} end
local keys, tight_room, tight_name = {}, nil, ''
for i = 7, #ARGV, 4 do
  local key, limit, enforced, name = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == '1', ARGV[i + 3]
  table.insert(keys, key)
  if enforced then
    local used = tonumber(redis.call('GET', KEYS[4] .. key) or '0')
    for _, held in ipairs(redis.call('HVALS', KEYS[3] .. key)) do used = used + tonumber(held) end
    if used >= limit then return {expired, 0, 'BLOCKED', 'BUDGET_EXCEEDED', name, '0', ''} end
    if used + amount > limit then
      return {expired, 0, 'BLOCKED', 'BUDGET_RESERVATION_FAILED', name, string.format('%.17g', limit - used), ''}
    end
    local room = limit - used - amount
    if tight_room == nil or room < tight_room then tight_room, tight_name = room, name end
  end
end
local remaining = tight_room == nil and '' or string.format('%.17g', tight_room)
local record = '{"at":' .. ARGV[1] .. ',"reserved":' .. ARGV[3] .. ',"budget":' .. cjson.encode(tight_name)
  .. ',"remaining":' .. (remaining == '' and 'null' or remaining) .. ',"expires_at":' .. ARGV[4]
  .. ',"keys":' .. ARGV[6] .. '}'
redis.call('HSET', record_key, 'state', 'held', 'record', record)
redis.call('EXPIREAT', record_key, ARGV[5])
for _, key in ipairs(keys) do redis.call('HSET', KEYS[3] .. key, awu, ARGV[3]) end
redis.call('ZADD', KEYS[1], ARGV[4], awu)
redis.call('SET', KEYS[5], '1')
redis.call('EXPIREAT', KEYS[5], ARGV[5])
return {expired, 0, 'ALLOWED', '', tight_name, remaining, record}
"""
)

# KEYS: live index, record prefix, holds prefix. ARGV: now, forget_at, then (awu, actual or '').
# Returns per AWU reserved: awu, record, actual or '', incomplete, first. Sweeps nothing: expiry is
# the API process's to count.
_RECONCILE = """
local out = {}
for i = 3, #ARGV, 2 do
  local awu, actual = ARGV[i], ARGV[i + 1]
  local record_key = KEYS[2] .. awu
  local row = redis.call('HMGET', record_key, 'state', 'record', 'actual', 'incomplete')
  local state, record = row[1], row[2]
  if state and state ~= 'released' then
    local first = 0
    if state ~= 'reconciled' then
      first = 1
      local incomplete = ''
      if state == 'expired' then incomplete = 'reservation_expired'
      elseif actual == '' then incomplete = 'actual_unavailable' end
      for _, key in ipairs(cjson.decode(record)['keys']) do redis.call('HDEL', KEYS[3] .. key, awu) end
      redis.call('ZREM', KEYS[1], awu)
      redis.call('HSET', record_key, 'state', 'reconciled', 'actual', actual, 'incomplete', incomplete)
      redis.call('EXPIREAT', record_key, ARGV[2])
      row[3], row[4] = actual, incomplete
    end
    table.insert(out, awu)
    table.insert(out, record)
    table.insert(out, row[3] or '')
    table.insert(out, row[4] or '')
    table.insert(out, first)
  end
end
return out
"""

# KEYS: live index, record prefix, holds prefix. ARGV: now, awu. Returns {expired, released}.
_RELEASE = (
    _SWEEP
    + """
local expired = sweep(tonumber(ARGV[1]))
local record_key = KEYS[2] .. ARGV[2]
local row = redis.call('HMGET', record_key, 'state', 'record')
if row[1] ~= 'held' then return {expired, 0} end
for _, key in ipairs(cjson.decode(row[2])['keys']) do redis.call('HDEL', KEYS[3] .. key, ARGV[2]) end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HSET', record_key, 'state', 'released')
return {expired, 1}
"""
)

_SWEEP_ONLY = _SWEEP + "\nreturn sweep(tonumber(ARGV[1]))\n"


class RedisReservations:
    """Shared by every sidecar on the same Redis: two sidecars' reservations are decided one
    after the other inside Redis, against the same consumed totals the policy stages charge."""

    _KEYS = (_LIVE, _R, _HOLDS)

    def __init__(self, url: str) -> None:
        self._redis = redis_client(url)
        self._reserve = self._redis.register_script(_RESERVE)
        self._reconcile = self._redis.register_script(_RECONCILE)
        self._release = self._redis.register_script(_RELEASE)
        self._sweep = self._redis.register_script(_SWEEP_ONLY)

    def reserve(
        self, awu: str, amount: float, holds: list[Hold], now: float, expires_at: float
    ) -> tuple[Decision, int]:
        args: list[object] = [repr(now), awu, repr(amount), repr(expires_at), int(expires_at + REMEMBER_SECONDS)]
        args.append(json.dumps([hold.key for hold in holds]))
        for hold in holds:
            args += [hold.key, repr(hold.limit_usd), "1" if hold.enforced else "0", hold.budget]
        expired, repeated, result, reason, budget, remaining, record = self._reserve(
            keys=[*self._KEYS, REDIS_PREFIX, _RECENT], args=args
        )
        if repeated:
            return _recorded_decision(_text(record)), int(expired)
        room = _text(remaining)
        allowed = _text(result) == gs.ALLOWED
        decision = Decision(
            _text(result),
            _text(reason),
            amount if allowed else 0.0,
            _text(budget),
            float(room) if room else None,
            expires_at if allowed else now,
        )
        return decision, int(expired)

    def release(self, awu: str, now: float) -> tuple[bool, int]:
        expired, released = self._release(keys=list(self._KEYS), args=[repr(now), awu])
        return bool(released), int(expired)

    def reconcile(self, actuals: dict[str, float | None], now: float) -> dict[str, Reconciled]:
        args: list[object] = [repr(now), int(now + REMEMBER_SECONDS)]
        for awu, amount in actuals.items():
            args += [awu, "" if amount is None else repr(amount)]
        found = self._reconcile(keys=list(self._KEYS), args=args)
        out = {}
        for at in range(0, len(found), 5):
            awu, record, actual, incomplete, first = (_text(item) for item in found[at : at + 5])
            out[awu] = _reconciled(record, float(actual) if actual else None, incomplete, first == "1")
        return out

    def sweep(self, now: float) -> int:
        return int(self._sweep(keys=list(self._KEYS), args=[repr(now)]))

    def any_recent(self) -> bool:
        return bool(self._redis.exists(_RECENT))

    def close(self) -> None:
        self._redis.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rfc3339(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


@dataclass(frozen=True)
class StoreSettings:
    """policy.state_backend, .state_path and .redis_url of the budget store reserved against."""

    backend: str
    state_path: str
    redis_url: str


def open_reservations(backend: str, state_path: str, redis_url: str, store: BudgetStore) -> ReservationStore:
    """The reservation store beside the budget store of the same settings (`store` is that
    store, whose consumed totals the memory backend reads)."""
    if backend == "redis":
        return RedisReservations(redis_url)
    if backend == "sqlite":
        return SqliteReservations(state_path or str(default_state_path()))
    found = _MEMORY.get(store)
    if found is None:
        found = _MEMORY[store] = MemoryReservations(store)
    return found


# One memory book per memory budget store: the stage and the API of one process share it.
_MEMORY: weakref.WeakKeyDictionary[BudgetStore, MemoryReservations] = weakref.WeakKeyDictionary()
