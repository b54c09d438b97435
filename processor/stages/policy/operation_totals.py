"""Where the per-operation metrics' running totals live.

A batch adds a few hundred to a few thousand per-series sums (cost, tokens, operations, errors,
latency buckets and sum). With the native extension every series' totals are in one native object
(OperationTotals, processor/native/src/stages/operation_totals.rs) that the native policy path adds a
whole batch into in one call; each metric child then reads its value through a stand-in for its
MutexValue, so prometheus_client writes the exposition exactly as before. Without the extension
the totals stay in the children's MutexValue objects, added to in place.

In multiprocess mode (`server.workers` > 1) a child's value is a slot in a file shared with the
front process, and writing one costs a lock and a file write: a batch's few thousand of them
doubled a worker's CPU per batch. There the native store adds the batch up as well, and
FlushedTotals copies the values that changed to the children's files once a second (and when the
stage closes), so /metrics trails the workers by at most about a second.

Every store adds a row as GovernanceMetrics has always added it (same operations, same order,
same skips), so all give the same values to the last bit.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import values as prometheus_values
from prometheus_client.values import MutexValue

from processor.core.decode import native_available, native_module

# How often a worker's multiprocess metric files get the totals that changed.
FLUSH_SECONDS = 1.0
# Values written between two pauses of a flush from the background thread, and the pause.
_FLUSH_PIECE = 200
_FLUSH_PAUSE_SECONDS = 0.0005

# Value slots of a native series, in the order of the children handed to `register`.
_LATENCY_SUM_SLOT = 6
_FIRST_BUCKET_SLOT = 7


class HolderTotals:
    """Totals kept in prometheus_client's MutexValue objects; a series' key is its holders."""

    # What OperationGroups.add_to takes: none, so it hands every group back to `add`.
    native = None
    # The value holders this store can add to (others are changed through `inc`).
    value_class: type = MutexValue

    def register(self, children: list) -> tuple:
        """`children`: cost, tokens input, tokens output, tokens, operations, errors, latency."""
        *counters, latency = children
        return (*(child._value for child in counters), latency._sum, latency._buckets)

    def alias(self, values: tuple, key: Any) -> None:
        pass

    def add(
        self,
        holders: tuple,
        spent: float,
        tokens_in: int,
        tokens_out: int,
        tokens: int,
        count: int,
        errors: int,
        buckets_hit: list[tuple[int, int]] | None,
        latency_total: float,
    ) -> None:
        # Only ever changed here, under GovernanceMetrics' update lock: added to in place (a
        # quarter of inc()'s cost, which takes a lock per call).
        cost, tokens_in_total, tokens_out_total, tokens_total, operations, error_total, latency_sum, buckets = holders
        cost._value += spent
        tokens_in_total._value += tokens_in
        tokens_out_total._value += tokens_out
        tokens_total._value += tokens
        operations._value += count
        if errors:
            error_total._value += errors
        if buckets_hit:
            for bucket, hits in buckets_hit:
                buckets[bucket]._value += hits
            latency_sum._value += latency_total

    def close(self) -> None:
        pass


class NativeTotals:
    """Totals in a native OperationTotals; a series' key is its number there."""

    value_class: type = MutexValue

    def __init__(self, factory: Any, width: int) -> None:
        self.native = factory(width)
        # Bound once: the polars path calls it per row.
        self.add = self.native.add

    def register(self, children: list) -> int:
        """A new series whose `children` (as for HolderTotals) read and change their values here.
        Their MutexValue objects are still zero: nothing was added to them yet."""
        series = self.native.new_series()
        value = self.native.value
        *counters, latency = children
        for slot, child in enumerate(counters):
            child._value = value(series, slot)
        latency._sum = value(series, _LATENCY_SUM_SLOT)
        latency._buckets[:] = [value(series, _FIRST_BUCKET_SLOT + b) for b in range(len(latency._buckets))]
        return series

    def alias(self, values: tuple, series: int) -> None:
        """Groups labelled `values` go to `series` from now on, also in OperationGroups.add_to."""
        # (As prometheus_client labels a child: label values as text.)
        self.native.alias([str(value) for value in values], series)

    def close(self) -> None:
        pass


class FlushedTotals(NativeTotals):
    """Multiprocess mode: totals in a native OperationTotals, copied to the children's own value
    holders (their slots in the multiprocess files) every `interval` seconds and on `close`."""

    def __init__(self, factory: Any, width: int, interval: float) -> None:
        super().__init__(factory, width)
        self.value_class = prometheus_values.ValueClass
        self.interval = interval
        # Per series number: its children's holders, in the native slot order.
        self._holders: list[tuple] = []
        self._flush_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, children: list) -> int:
        """A new series; its children keep their own value holders, which `flush` writes."""
        *counters, latency = children
        self._holders.append((*(child._value for child in counters), latency._sum, *latency._buckets))
        series = self.native.new_series()
        if self._thread is None:
            self._thread = threading.Thread(target=self._flush_every_interval, name="metrics-flush", daemon=True)
            self._thread.start()
        return series

    def flush(self, pause_every: int = 0) -> None:
        """Writes the values that changed; with `pause_every`, lets go of the GIL after that many.

        A second's changes are ~10k writes (~20-30 ms of Python): written in one go from the
        background thread they held a request up for as long (p99 added latency 50 ms with 2
        workers). Pausing briefly between pieces lets the request thread run in between.
        """
        with self._flush_lock:
            holders = self._holders
            for done, (series, slot, value) in enumerate(self.native.changes(), 1):
                holders[series][slot].set(value)
                if pause_every and done % pause_every == 0:
                    time.sleep(_FLUSH_PAUSE_SECONDS)

    def _flush_every_interval(self) -> None:
        while not self._closed.wait(self.interval):
            self.flush(pause_every=_FLUSH_PIECE)

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()


def operation_totals(width: int) -> HolderTotals | NativeTotals:
    """The native store when the extension is built and on (flushed to the multiprocess files in
    multiprocess mode), else the children's own holders."""
    factory = getattr(native_module(), "OperationTotals", None)
    if factory is None or not native_available():
        return HolderTotals()
    if prometheus_values.ValueClass is MutexValue:
        return NativeTotals(factory, width)
    return FlushedTotals(factory, width, FLUSH_SECONDS)
