"""`genops_reconciliation_drift_ratio` on the sidecar's own /metrics (issue 22 item 2).

`genops-sidecar reconcile` (a CronJob, typically) records the last day it reconciled in the state
store the sidecar writes: that day's billed and attributed USD, under keys of the run. Each
sidecar process reads the newest run back every `REFRESH_SECONDS`, off the request path, and
shows it as

- `genops_reconciliation_drift_ratio`: (billed - attributed) / billed of that day,
- `genops_reconciliation_day_timestamp_seconds`: the start (UTC) of that day,

the figures `reconcile --metrics-file` writes for node_exporter. The keys are plain consumed keys
(`reconcile|<run>|<day>|billed`), so SQLite and Redis hold them without a schema of their own,
and they expire after `KEEP_SECONDS`. The `memory` backend has no store the command can reach.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Gauge

from processor.stages.policy.budget_state import BudgetStore

log = structlog.get_logger(__name__)

DRIFT_METRIC = "genops_reconciliation_drift_ratio"
DAY_METRIC = "genops_reconciliation_day_timestamp_seconds"
PREFIX = "reconcile|"
BILLED = "billed"
OURS = "ours"
KEEP_SECONDS = 35 * 86400
REFRESH_SECONDS = 60.0


class DayFigures(Protocol):
    """A reconciled day's totals (`billing.reconcile.DayTotal` is one)."""

    @property
    def day(self) -> str: ...
    @property
    def billed_usd(self) -> float: ...
    @property
    def ours_usd(self) -> float: ...


@dataclass(frozen=True)
class RecordedDay:
    run_ns: int
    day: str
    billed_usd: float
    ours_usd: float

    @property
    def drift_ratio(self) -> float:
        return (self.billed_usd - self.ours_usd) / self.billed_usd

    @property
    def day_start(self) -> float:
        return dt.datetime.fromisoformat(self.day).replace(tzinfo=dt.UTC).timestamp()


def _key(run_ns: int, day: str, what: str) -> str:
    return PREFIX + json.dumps([run_ns, day, what], separators=(",", ":"))


def record_last_day(store: BudgetStore, last: DayFigures | None, run_ns: int | None = None) -> RecordedDay | None:
    """Stores a reconciliation's last day (none when nothing was billed that day: no ratio)."""
    if last is None or not last.billed_usd:
        return None
    run_ns = time.time_ns() if run_ns is None else run_ns
    expires = int(time.time()) + KEEP_SECONDS
    increments = {_key(run_ns, last.day, BILLED): last.billed_usd, _key(run_ns, last.day, OURS): last.ours_usd}
    # The run is its own fingerprint: recording it twice adds nothing.
    store.apply(f"reconcile:{run_ns}", increments, dict.fromkeys(increments, expires))
    return RecordedDay(run_ns, last.day, last.billed_usd, last.ours_usd)


def newest_day(stored: dict[str, float]) -> RecordedDay | None:
    """The newest run's day among the store's reconcile keys."""
    runs: dict[tuple[int, str], dict[str, float]] = {}
    for key, value in stored.items():
        try:
            run_ns, day, what = json.loads(key.removeprefix(PREFIX))
            runs.setdefault((int(run_ns), str(day)), {})[str(what)] = value
        except (ValueError, TypeError):
            continue
    complete = [(run, figures) for run, figures in runs.items() if figures.get(BILLED) and OURS in figures]
    if not complete:
        return None
    (run_ns, day), figures = max(complete, key=lambda item: item[0])
    return RecordedDay(run_ns, day, figures[BILLED], figures[OURS])


class DriftGauge:
    """Shows the newest recorded reconciliation; `refresh` reads the store (a thread calls it)."""

    def __init__(
        self, store: BudgetStore, registry: CollectorRegistry, refresh_seconds: float = REFRESH_SECONDS
    ) -> None:
        self._store = store
        self._registry = registry
        # Made at the first figures found: an unset Gauge would show a drift of 0 before any run.
        self._gauges: tuple[Gauge, Gauge] | None = None
        self.shown: RecordedDay | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if refresh_seconds > 0:
            self._thread = threading.Thread(
                target=self._run, args=(refresh_seconds,), name="reconcile-drift", daemon=True
            )
            self._thread.start()

    def refresh(self) -> RecordedDay | None:
        try:
            found = newest_day(self._store.scan(PREFIX))
        except Exception as exc:
            # The store is down: the last figures shown stand (the store's own metrics say why).
            log.debug("reconciliation drift not read", error=type(exc).__name__)
            return self.shown
        if found is not None and found != self.shown:
            if self._gauges is None:
                self._gauges = (
                    Gauge(
                        DRIFT_METRIC,
                        "(billed - attributed) / billed for the last day `genops-sidecar reconcile` compared.",
                        registry=self._registry,
                        multiprocess_mode="mostrecent",
                    ),
                    Gauge(
                        DAY_METRIC,
                        f"Start (UTC) of the day {DRIFT_METRIC} is for.",
                        registry=self._registry,
                        multiprocess_mode="mostrecent",
                    ),
                )
            drift, day = self._gauges
            drift.set(found.drift_ratio)
            day.set(found.day_start)
            self.shown = found
        return self.shown

    def _run(self, seconds: float) -> None:
        while True:
            self.refresh()
            if self._stop.wait(seconds):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
