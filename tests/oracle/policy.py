"""The policy stage's polars queries as the differential oracle of its native plan.

The queries themselves still live in processor/stages/policy/stage.py (`_process_polars`): the
product runs them for the two cases the native plan does not take yet (attribute budgets, log-only
calls). The oracle runs them on every batch, so tests compare the two engines span for span."""

from __future__ import annotations

from processor.core.contract import ENGINE_POLARS, BatchChanges
from processor.core.decode import TelemetryBatch
from processor.stages.policy.budget_state import BudgetStore
from processor.stages.policy.native import NO_EXTRAS, NativeExtras
from processor.stages.policy.stage import PolicyStage, _Plan


class OraclePolicyStage(PolicyStage):
    """The policy stage with every batch run by the polars queries."""

    def _process(self, batch: TelemetryBatch, plan: _Plan, store: BudgetStore) -> tuple[BatchChanges, NativeExtras]:
        # Nor the native AWU columns and forecast: awu.py and budget_forecast.py compute them.
        return self._process_polars(batch, plan, store).with_engine(ENGINE_POLARS), NO_EXTRAS


def oracle_of(stage: PolicyStage) -> OraclePolicyStage:
    """`stage` itself, built as it was (same settings; its store and metrics are the caller's
    business), with its class switched to the oracle."""
    stage.__class__ = OraclePolicyStage
    return stage  # type: ignore[return-value]
