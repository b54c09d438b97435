"""Consumed USD per budget window: memory, SQLite (survives restarts) or Redis (shared by pods).

`apply` adds one batch's spend and records the batch fingerprint in the same atomic step. The
Collector retries a batch whose forward failed, and the pipeline runs the stages again before
forwarding, so a retried batch must find its fingerprint and get back the totals of its first
application (the same tags, the same events) without adding its spend a second time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

# Long enough for the Collector's retry queue (5 min by default, longer with a persistent queue).
FINGERPRINT_TTL_SECONDS = 24 * 3600
REDIS_PREFIX = "genops:{budget}:"  # one hash tag: the Lua script touches keys of one cluster slot

log = structlog.get_logger(__name__)

# SQLite's busy timeout, and how long opening a state file other processes are setting up may take.
OPEN_TIMEOUT_SECONDS = 30.0
# How often a SQLite store copies its write-ahead log into the database (off the request path).
CHECKPOINT_SECONDS = 1.0


@dataclass(frozen=True)
class Applied:
    totals: dict[str, float]
    repeated: bool


class BudgetStore(Protocol):
    def apply(self, fingerprint: str, increments: dict[str, float], expires_at: dict[str, int]) -> Applied:
        """Adds `increments` (key -> USD) unless `fingerprint` was applied before.

        Returns key -> consumed total right after this batch's spend: for a repeated fingerprint,
        the totals recorded when it was first applied. `expires_at` (epoch seconds) lets old
        windows be forgotten. Called with no increments it still records the fingerprint, which
        is how a retried batch is kept out of the spend metrics too.
        """
        ...

    def read(self, keys: list[str]) -> dict[str, float]: ...

    def close(self) -> None: ...


class MemoryStore:
    """For tests and single-process deployments that accept losing budgets on restart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._consumed: dict[str, float] = {}
        self._applied: dict[str, tuple[float, dict[str, float]]] = {}

    def apply(self, fingerprint: str, increments: dict[str, float], expires_at: dict[str, int]) -> Applied:
        with self._lock:
            now = time.time()
            if len(self._applied) > 10_000:
                self._applied = {k: v for k, v in self._applied.items() if v[0] > now - FINGERPRINT_TTL_SECONDS}
            if fingerprint in self._applied:
                return Applied(_recorded(self._applied[fingerprint][1], increments, self._consumed), True)
            for key, amount in increments.items():
                self._consumed[key] = self._consumed.get(key, 0.0) + amount
            totals = {key: self._consumed[key] for key in increments}
            self._applied[fingerprint] = (now, totals)
            return Applied(dict(totals), False)

    def read(self, keys: list[str]) -> dict[str, float]:
        with self._lock:
            return {key: self._consumed.get(key, 0.0) for key in keys}

    def close(self) -> None:
        pass


class SqliteStore:
    """One file, shared by the worker processes of a pod; WAL and BEGIN IMMEDIATE serialise writers.

    `apply` never copies the write-ahead log into the database (SQLite's automatic checkpoint, with
    its fsyncs, would land on one batch in a few hundred and add milliseconds to it): a thread of
    the store does it every `checkpoint_seconds` instead, on a connection of its own.
    """

    def __init__(self, path: str, checkpoint_seconds: float = CHECKPOINT_SECONDS) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=OPEN_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
        _set_up(self._db)
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._applies = 0
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=_checkpoint_every, args=(path, checkpoint_seconds, self._stop), name="budget-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def apply(self, fingerprint: str, increments: dict[str, float], expires_at: dict[str, int]) -> Applied:
        now = int(time.time())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT totals FROM applied WHERE fingerprint = ?", (fingerprint,)).fetchone()
                if row is not None:
                    self._db.execute("COMMIT")
                    current = self._read_locked(list(increments))
                    return Applied(_recorded(json.loads(row[0]), increments, current), True)
                totals = {}
                for key, amount in increments.items():
                    (totals[key],) = self._db.execute(
                        "INSERT INTO consumed (key, usd, expires_at) VALUES (?, ?, ?)"
                        " ON CONFLICT(key) DO UPDATE SET usd = usd + excluded.usd, expires_at = excluded.expires_at"
                        " RETURNING usd",
                        (key, amount, expires_at.get(key, now + 90 * 86400)),
                    ).fetchone()
                self._db.execute(
                    "INSERT INTO applied (fingerprint, totals, applied_at) VALUES (?, ?, ?)",
                    (fingerprint, json.dumps(totals), now),
                )
                self._applies += 1
                if self._applies % 1000 == 1:
                    self._db.execute("DELETE FROM applied WHERE applied_at < ?", (now - FINGERPRINT_TTL_SECONDS,))
                    self._db.execute("DELETE FROM consumed WHERE expires_at < ?", (now,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return Applied(totals, False)

    def read(self, keys: list[str]) -> dict[str, float]:
        with self._lock:
            return self._read_locked(keys)

    def _read_locked(self, keys: list[str]) -> dict[str, float]:
        found = {}
        for key in keys:
            row = self._db.execute("SELECT usd FROM consumed WHERE key = ?", (key,)).fetchone()
            found[key] = 0.0 if row is None else float(row[0])
        return found

    def close(self) -> None:
        self._stop.set()
        self._checkpointer.join()
        with self._lock:
            self._db.close()


def _checkpoint_every(path: str, seconds: float, stop: threading.Event) -> None:
    db = sqlite3.connect(path, timeout=OPEN_TIMEOUT_SECONDS, isolation_level=None)
    try:
        while not stop.wait(seconds):
            try:
                # PASSIVE: copies what no reader still needs, never waits for or blocks a writer.
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                log.warning("budget state checkpoint failed; retried later", path=path, exc_info=True)
    finally:
        db.close()


def _set_up(db: sqlite3.Connection) -> None:
    """WAL mode and the tables, retried while another process sets up the same file.

    The workers of a pod start together and open one file: switching it to WAL takes an exclusive
    lock, and SQLite answers "database is locked" there at once instead of waiting out the busy
    timeout, so a worker could die at start-up for having come second.
    """
    deadline = time.monotonic() + OPEN_TIMEOUT_SECONDS
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS consumed"
                " (key TEXT PRIMARY KEY, usd REAL NOT NULL, expires_at INTEGER NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS applied"
                " (fingerprint TEXT PRIMARY KEY, totals TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


# KEYS[1]: the batch fingerprint; KEYS[2..n]: consumed keys. ARGV[1]: fingerprint TTL, then
# (increment, expire-at) per consumed key. All of it runs atomically inside Redis, so pods sharing
# the server never double-count a retried batch nor lose a concurrent increment.
_APPLY_SCRIPT = """
local done = redis.call('GET', KEYS[1])
if done then return {1, done} end
local totals = {}
for i = 2, #KEYS do
  totals[KEYS[i]] = redis.call('INCRBYFLOAT', KEYS[i], ARGV[2 * i - 2])
  redis.call('EXPIREAT', KEYS[i], ARGV[2 * i - 1])
end
local encoded = cjson.encode(totals)
redis.call('SET', KEYS[1], encoded, 'EX', ARGV[1])
return {0, encoded}
"""


class RedisStore:
    """Shared by every pod pointing at the same Redis: cluster-wide budgets for a DaemonSet."""

    def __init__(self, url: str) -> None:
        import redis  # only deployments using this backend need the client

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._apply = self._redis.register_script(_APPLY_SCRIPT)

    def apply(self, fingerprint: str, increments: dict[str, float], expires_at: dict[str, int]) -> Applied:
        keys = list(increments)
        args: list[object] = [FINGERPRINT_TTL_SECONDS]
        default_expiry = int(time.time()) + 90 * 86400
        for key in keys:
            args += [repr(float(increments[key])), expires_at.get(key, default_expiry)]
        redis_keys = [REDIS_PREFIX + "batch:" + fingerprint, *(REDIS_PREFIX + k for k in keys)]
        repeated, encoded = self._apply(keys=redis_keys, args=args)
        # cjson encodes an empty table as {} and a one-entry one as an object: both decode to dicts.
        recorded = {k.removeprefix(REDIS_PREFIX): float(v) for k, v in (json.loads(encoded) or {}).items()}
        if set(recorded) >= set(keys):
            return Applied({key: recorded[key] for key in keys}, bool(repeated))
        current = self.read([k for k in keys if k not in recorded])
        return Applied(_recorded(recorded, increments, current), bool(repeated))

    def read(self, keys: list[str]) -> dict[str, float]:
        if not keys:
            return {}
        values = self._redis.mget([REDIS_PREFIX + key for key in keys])
        return {key: 0.0 if value is None else float(value) for key, value in zip(keys, values, strict=True)}

    def close(self) -> None:
        self._redis.close()


def _recorded(recorded: dict[str, float], increments: dict[str, float], current: dict[str, float]) -> dict[str, float]:
    """Totals for a repeated batch. A key the first application did not have (the policy file
    changed in between) is reported as if this batch had been added, without adding it."""
    return {key: recorded[key] if key in recorded else current.get(key, 0.0) + increments[key] for key in increments}


def default_state_path() -> Path:
    """Where the embedded SQLite store lives when policy.state_path is empty: the user's state dir
    (in Kubernetes the manifests set the path to a volume instead)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "genops-sidecar" / "budget-state.sqlite"


def open_store(backend: str, state_path: str, redis_url: str) -> BudgetStore:
    if backend == "memory":
        return MemoryStore()
    if backend == "redis":
        return RedisStore(redis_url)
    return SqliteStore(state_path or str(default_state_path()))
