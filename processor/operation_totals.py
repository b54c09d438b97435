"""Where the per-operation metrics' running totals live when values are in-process (not multiprocess mode).

A batch adds a few hundred to a few thousand per-series sums (cost, tokens, operations, errors,
latency buckets and sum). With the native extension every series' totals are in one native object
(OperationTotals, processor/native/src/operation_totals.rs) that the native policy path adds a
whole batch into in one call; each metric child then reads its value through a stand-in for its
MutexValue, so prometheus_client writes the exposition exactly as before. Without the extension
the totals stay in the children's MutexValue objects, added to in place.

Either store adds a row as GovernanceMetrics has always added it (same operations, same order,
same skips), so both give the same values to the last bit.
"""

from __future__ import annotations

from typing import Any

from processor.decode import native_available, native_module

# Value slots of a native series, in the order of the children handed to `register`.
_LATENCY_SUM_SLOT = 6
_FIRST_BUCKET_SLOT = 7


class HolderTotals:
    """Totals kept in prometheus_client's MutexValue objects; a series' key is its holders."""

    # What OperationGroups.add_to takes: none, so it hands every group back to `add`.
    native = None

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


class NativeTotals:
    """Totals in a native OperationTotals; a series' key is its number there."""

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


def operation_totals(width: int) -> HolderTotals | NativeTotals:
    """The native store when the extension is built and on, else the MutexValue holders."""
    factory = getattr(native_module(), "OperationTotals", None)
    return NativeTotals(factory, width) if factory is not None and native_available() else HolderTotals()
