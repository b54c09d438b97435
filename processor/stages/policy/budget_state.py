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
from typing import Any, Protocol

import structlog

# Long enough for the Collector's retry queue (5 min by default, longer with a persistent queue).
FINGERPRINT_TTL_SECONDS = 24 * 3600
REDIS_PREFIX = "genops:{budget}:"  # one hash tag: the Lua script touches keys of one cluster slot

log = structlog.get_logger(__name__)

# SQLite's busy timeout, and how long opening a state file other processes are setting up may take.
OPEN_TIMEOUT_SECONDS = 30.0
APPLY_BUSY_SECONDS = 2.0
# How often a SQLite store copies its write-ahead log into the database (off the request path).
CHECKPOINT_SECONDS = 1.0


@dataclass(frozen=True)
class Applied:
    totals: dict[str, float]
    repeated: bool


@dataclass(frozen=True)
class StateRows:
    """A SQLite state file's rows, to be loaded into another file (see SqliteStore.load)."""

    source: str
    consumed: list[tuple[str, float, int]]
    applied: list[tuple[str, str, int]]


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

    def scan(self, prefix: str) -> dict[str, float]:
        """Every consumed key starting with `prefix` and its total (the spend ledger's rows)."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """For tests and single-process deployments that accept losing budgets on restart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._consumed: dict[str, float] = {}
        self._applied: dict[str, tuple[float, dict[str, float]]] = {}
        # family -> (expires at, members admitted): see `admit`.
        self._admitted: dict[str, tuple[int, set[str]]] = {}

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

    def scan(self, prefix: str) -> dict[str, float]:
        with self._lock:
            return {key: usd for key, usd in self._consumed.items() if key.startswith(prefix)}

    def admit(self, family: str, members: list[str], cap: int, expires_at: int) -> set[str]:
        with self._lock:
            now = int(time.time())
            self._admitted = {f: held for f, held in self._admitted.items() if held[0] >= now}
            held = self._admitted.get(family, (expires_at, set()))[1]
            admitted = admitted_of(held, members, cap)
            self._admitted[family] = (expires_at, held)
            return admitted

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
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=OPEN_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
        try:
            _set_up(self._db)
            # The file this connection writes: if it is unlinked, writes still succeed, into nothing.
            found = os.stat(path)
            self._inode = found.st_ino
            # Names this file among its copies loaded elsewhere (see `load`); no other live file
            # has its inode while this one is open.
            self._source = f"{found.st_dev}:{found.st_ino}"
        except BaseException:
            self._db.close()
            raise
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        # A batch waits this long at most for another process's write: one that holds the file
        # longer (stopped mid-write, a stuck disk) gets the batch's charge kept for later, not an
        # answer after the Collector's 10 s export timeout.
        self._db.execute(f"PRAGMA busy_timeout={int(APPLY_BUSY_SECONDS * 1000)}")
        self._applies = 0
        self._admits = 0
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
                # A failed BEGIN (read-only file) leaves no transaction: rolling back would raise a
                # second error ("no transaction is active") hiding the first.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return Applied(totals, False)

    def read(self, keys: list[str]) -> dict[str, float]:
        with self._lock:
            return self._read_locked(keys)

    def scan(self, prefix: str) -> dict[str, float]:
        # A range on the primary key, not LIKE: LIKE would read '_' and '%' in a prefix as patterns.
        with self._lock:
            rows = self._db.execute(
                "SELECT key, usd FROM consumed WHERE key >= ? AND key < ?", (prefix, prefix + "\U0010ffff")
            ).fetchall()
        return {key: float(usd) for key, usd in rows}

    def admit(self, family: str, members: list[str], cap: int, expires_at: int) -> set[str]:
        """See `admission.AdmittingStore.admit`: one transaction, so the workers of a pod share the cap."""
        now = int(time.time())
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS admitted (family TEXT NOT NULL, member TEXT NOT NULL,"
                " expires_at INTEGER NOT NULL, PRIMARY KEY (family, member))"
            )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                held = {
                    row[0]
                    for row in self._db.execute(
                        "SELECT member FROM admitted WHERE family = ? AND expires_at >= ?", (family, now)
                    )
                }
                added: list[str] = []
                admitted = admitted_of(held, members, cap, added)
                self._db.executemany(
                    "INSERT INTO admitted (family, member, expires_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(family, member) DO UPDATE SET expires_at = excluded.expires_at",
                    [(family, member, expires_at) for member in added],
                )
                self._admits += 1
                if self._admits % 1000 == 1:  # as `apply` forgets old rows: not on every call
                    self._db.execute("DELETE FROM admitted WHERE expires_at < ?", (now,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return admitted

    def file_replaced(self) -> bool:
        """Whether the path no longer names the file this store writes (deleted or replaced)."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def take_rows(self) -> StateRows:
        """Every row of the open file (which may be unlinked already), closing the connection in
        the same step: nothing written after it can go into a file no one reads any more."""
        with self._lock:
            consumed = self._db.execute("SELECT key, usd, expires_at FROM consumed").fetchall()
            applied = self._db.execute("SELECT fingerprint, totals, applied_at FROM applied").fetchall()
            self._db.close()
        return StateRows(self._source, consumed, applied)

    def load(self, rows: StateRows) -> None:
        """The rows of another file into this one. Every worker of a pod had the deleted file open
        and each loads its own later copy of it: per key, only what the file held beyond what an
        earlier copy of it brought here is added (recorded in `restored`), so no worker's charges
        made in between are lost and none is added twice."""
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS restored"
                " (source TEXT NOT NULL, key TEXT NOT NULL, usd REAL NOT NULL, PRIMARY KEY (source, key))"
            )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key, usd, expires_at in rows.consumed:
                    found = self._db.execute(
                        "SELECT usd FROM restored WHERE source = ? AND key = ?", (rows.source, key)
                    ).fetchone()
                    # The file only grows while in use: a copy taken earlier than the one loaded
                    # already holds less, and adds nothing.
                    added = usd - (found[0] if found else 0.0)
                    if added <= 0:
                        continue
                    self._db.execute(
                        "INSERT INTO consumed (key, usd, expires_at) VALUES (?, ?, ?)"
                        " ON CONFLICT(key) DO UPDATE SET usd = usd + excluded.usd,"
                        " expires_at = max(expires_at, excluded.expires_at)",
                        (key, added, expires_at),
                    )
                    self._db.execute(
                        "INSERT INTO restored (source, key, usd) VALUES (?, ?, ?)"
                        " ON CONFLICT(source, key) DO UPDATE SET usd = excluded.usd",
                        (rows.source, key, usd),
                    )
                self._db.executemany(
                    "INSERT OR IGNORE INTO applied (fingerprint, totals, applied_at) VALUES (?, ?, ?)", rows.applied
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

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


# KEYS[1]: the family's set. ARGV[1]: the cap, ARGV[2]: expire-at, then the members asked about.
# Returns those admitted: already in the set, or added while it held fewer than the cap.
_ADMIT_SCRIPT = """
local held = redis.call('SCARD', KEYS[1])
local cap = tonumber(ARGV[1])
local admitted = {}
for i = 3, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then
    admitted[#admitted + 1] = ARGV[i]
  elseif held < cap then
    redis.call('SADD', KEYS[1], ARGV[i])
    held = held + 1
    admitted[#admitted + 1] = ARGV[i]
  end
end
if held > 0 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return admitted
"""


class RedisStore:
    """Shared by every pod pointing at the same Redis: cluster-wide budgets for a DaemonSet."""

    def __init__(self, url: str) -> None:

        self._redis = redis_client(url)
        self._apply = self._redis.register_script(_APPLY_SCRIPT)
        self._admit = self._redis.register_script(_ADMIT_SCRIPT)

    def admit(self, family: str, members: list[str], cap: int, expires_at: int) -> set[str]:
        # Asked smallest first, as the other stores admit them.
        ordered = sorted(set(members))
        found = self._admit(keys=[REDIS_PREFIX + "admit:" + family], args=[cap, expires_at, *ordered])
        return {m.decode() if isinstance(m, bytes) else m for m in found}

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

    def scan(self, prefix: str) -> dict[str, float]:
        pattern = _glob_escaped(REDIS_PREFIX + prefix) + "*"
        keys = sorted({key.decode() if isinstance(key, bytes) else key for key in self._redis.scan_iter(pattern, 1000)})
        found: dict[str, float] = {}
        for at in range(0, len(keys), 1000):
            chunk = keys[at : at + 1000]
            for key, value in zip(chunk, self._redis.mget(chunk), strict=True):
                if value is not None:  # expired between the scan and the read
                    found[key.removeprefix(REDIS_PREFIX)] = float(value)
        return found

    def close(self) -> None:
        self._redis.close()


def admitted_of(held: set[str], members: list[str], cap: int, added: list[str] | None = None) -> set[str]:
    """Of `members`, those in `held` or added to it (smallest first) while it holds fewer than
    `cap`; the added ones also go to `added`. The rule every store's `admit` follows."""
    admitted = set()
    for member in sorted(set(members)):
        if member in held:
            admitted.add(member)
        elif len(held) < cap:
            held.add(member)
            admitted.add(member)
            if added is not None:
                added.append(member)
    return admitted


def _glob_escaped(text: str) -> str:
    """`text` matched literally by a Redis SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# A store call waits this long for Redis at most: the stage runs on the request path (on the event
# loop with one worker), and a hung server must cost one short wait, not the Collector's timeout.
REDIS_TIMEOUT_SECONDS = 0.25
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel", "sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def redis_client(url: str, timeout: float = REDIS_TIMEOUT_SECONDS):
    """A client for `url`: redis:// or rediss:// (one server), redis+sentinel:// or sentinel://
    host:port[,host:port...]/service[/db] (the master Sentinel names), redis+cluster://host:port
    (a Redis Cluster). No retries inside the client: the guarded store keeps a failed charge."""
    from urllib.parse import unquote, urlsplit

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in CLUSTER_SCHEMES:
        from redis.cluster import RedisCluster

        plain = url.replace(parts.scheme + "://", "rediss://" if scheme.startswith("rediss") else "redis://", 1)
        return RedisCluster.from_url(plain, **options)
    if scheme in SENTINEL_SCHEMES:
        from redis.sentinel import Sentinel

        hosts = []
        for host in parts.netloc.rpartition("@")[2].split(","):
            name, _, port = host.rpartition(":")
            hosts.append((name.strip("[]") or "localhost", int(port or 26379)))
        path = [piece for piece in parts.path.split("/") if piece]
        if not path:
            raise ValueError("a Sentinel URL names its service: sentinel://host:port/service")
        password = unquote(parts.password) if parts.password else None
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(hosts, sentinel_kwargs=dict(options), **options)
        return sentinel.master_for(path[0], password=password, db=db, **options)
    return redis.Redis.from_url(url, **options)


def _recorded(recorded: dict[str, float], increments: dict[str, float], current: dict[str, float]) -> dict[str, float]:
    """Totals for a repeated batch. A key the first application did not have (the policy file
    changed in between) is reported as if this batch had been added, without adding it."""
    return {key: recorded[key] if key in recorded else current.get(key, 0.0) + increments[key] for key in increments}


def default_state_path() -> Path:
    """Where the embedded SQLite store lives when policy.state_path is empty: the user's state dir
    (in Kubernetes the manifests set the path to a volume instead)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "genops-sidecar" / "budget-state.sqlite"


def redacted_url(url: str) -> str:
    """The URL for log lines: scheme, hosts and path, never a password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
