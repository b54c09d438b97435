"""Stage assembly: the stages in data order from the config, the check `validate-config` runs, and
closing them. Transport (server, workers) and the CLI build stages only through here."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from processor.config import SidecarConfig
from processor.core.contract import Stage

log = structlog.get_logger(__name__)


def build_stages(config: SidecarConfig, metrics_registry: CollectorRegistry) -> list[Stage]:
    """The processing stages in data order: cost → redaction → policy/budget.

    Redaction runs after cost so token counts and models are read before anything is masked,
    and before policy so the policy stage can see how much PII was found.
    """
    from processor.core.outbound import NO_REDACTION
    from processor.observability import redact_logs_with
    from processor.stages.cost.stage import build_cost_stage
    from processor.stages.policy.stage import build_policy_stage
    from processor.stages.redaction.stage import build_redaction_stage

    # Built first: its rules also redact what the other stages make from span values (metric
    # labels, written attributes, answers), see processor/core/outbound.py.
    redaction = build_redaction_stage(config.redaction, metrics_registry) if config.redaction.enabled else None
    outbound = redaction.outbound if redaction is not None else NO_REDACTION
    redact_logs_with(outbound.free_text if outbound.enabled else None)
    stages: list[Stage] = []
    if config.cost.enabled:
        stages.append(build_cost_stage(config.cost, metrics_registry, outbound=outbound))
    if redaction is not None:
        stages.append(redaction)
    if config.policy.enabled:
        stages.append(build_policy_stage(config.policy, metrics_registry, outbound=outbound))
    return stages


def check_stages(config: SidecarConfig) -> None:
    """Loads and validates every file the stages would use, without starting threads or opening
    state stores; raises ValueError (or OSError) naming the problem."""
    from processor.stages.cost.stage import build_cost_stage
    from processor.stages.policy.stage import check_policy_config
    from processor.stages.redaction.stage import build_redaction_stage

    registry = CollectorRegistry()
    if config.cost.enabled:
        build_cost_stage(config.cost, registry, watch=False).close()
    if config.redaction.enabled:
        build_redaction_stage(config.redaction, registry)
    if config.policy.enabled:
        check_policy_config(config.policy)
        if config.policy.state_backend == "sqlite":
            check_state_file(config.policy.state_path)


def check_state_file(state_path: str) -> None:
    """An existing budget state file must be a SQLite database; opened read-only, so nothing is
    created or changed by the check."""
    from processor.stages.policy.budget_state import default_state_path

    path = Path(state_path) if state_path else default_state_path()
    where = "policy.state_path" if state_path else f"policy.state_path (default {path})"
    if path.is_dir():
        raise ValueError(f"{where} {path} is a directory; give the SQLite file inside it")
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as exc:
        raise ValueError(
            f"{where} {path} cannot be used as budget state ({exc}); move it away to start with empty budgets"
        ) from None


def close_stages(stages: list[Stage]) -> None:
    """Stops the stages' reload threads and closes their state stores."""
    for stage in stages:
        close = getattr(stage, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("closing a stage failed", stage=stage.name)
