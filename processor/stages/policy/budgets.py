"""What budgets write and keep: the budget tags, the alert event of a threshold crossed, and how
long a closed window is kept.

Each priced span is charged to every budget it falls under, in the window holding its start time
(in the budget's timezone); the native plan (processor/native/src/stages/policy.rs) adds a batch's
spend per window to the store in one atomic step, and gives each span its consumed amount from the
store's total after the batch, so the amount before it is known even when other pods charge the
same window concurrently. The polars queries it was written against are the differential oracle
(tests/oracle/policy_budgets.py).
"""

from __future__ import annotations

from typing import Final

import polars as pl

from processor.core import genops_semconv as gs
from processor.core.contract import SpanEventToAdd
from processor.stages.policy.policy_file import Budget

COST = gs.COST_TOTAL
END_TIME = "_end_time_unix_nano"
# The spec's one alert event for every threshold crossed (genops.budget.threshold 1.0: exceeded).
EVENT_ALERT = gs.EVENT_BUDGET_ALERT
# Old windows are kept a while after they close so late spans and the status API still see them.
KEEP_CLOSED_WINDOW_SECONDS = 7 * 86400

TAGS = {
    "name": gs.BUDGET_NAME,
    "period": gs.BUDGET_PERIOD,
    "allocated": gs.BUDGET_ALLOCATED,
    "limit": gs.BUDGET_LIMIT,
    "consumed": gs.BUDGET_CONSUMED,
    "remaining": gs.BUDGET_REMAINING,
    "utilization": gs.BUDGET_UTILIZATION,
    "exceeded": gs.BUDGET_EXCEEDED_FLAG,
}
# Attributes of an alert event besides the spec's name, consumed and allocated.
ALERT_SUBJECT = "genops.budget.subject"
ALERT_WINDOW = "genops.budget.window"
ALERT_THRESHOLD = "genops.budget.threshold"
ALERT_MODE = "genops.budget.mode"


def alert_event(
    row: int, event_time: int, budget: Budget, subject: str | None, label: str, threshold: float, consumed: float
) -> SpanEventToAdd:
    """The genops.budget.alert event of `budget` crossing `threshold` (a fraction of its limit)."""
    limit = float(budget.limit_usd)
    return SpanEventToAdd(
        row=row,
        name=EVENT_ALERT,
        time_unix_nano=event_time,
        attributes={
            TAGS["name"]: budget.name,
            ALERT_SUBJECT: subject,
            ALERT_WINDOW: label,
            ALERT_THRESHOLD: float(threshold),
            TAGS["allocated"]: limit,
            TAGS["limit"]: limit,
            TAGS["consumed"]: round(consumed, 9),
            ALERT_MODE: budget.mode,
        },
    )


# The engine of eager DataFrame calls, which these queries replaced: float sums (budget windows,
# spend metrics) come out to the last bit as they did; the streaming engine adds in another order.
ENGINE: Final = "in-memory"
# And the optimiser passes of eager calls: the queries are small and written in the shape they
# run in, so pushdowns and common-subexpression search cost more than they save.
OPTIMIZATIONS = pl.QueryOptFlags(
    predicate_pushdown=False,
    projection_pushdown=False,
    slice_pushdown=False,
    comm_subplan_elim=False,
    comm_subexpr_elim=False,
    cluster_with_columns=False,
    check_order_observe=False,
    fast_projection=False,
    sort_collapse=False,
)


def column(index: int, what: str) -> str:
    """The name of budget `index`'s column `what` in the polars oracle's span frame (what its
    budget check reads there)."""
    return f"_b{index}_{what}"
