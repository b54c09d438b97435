"""Policy rule checks and verdicts as polars expressions: the differential oracle of the native
plan's checks and verdict codes (processor/native/src/stages/policy.rs), which tests/oracle/policy.py runs."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from processor.core import genops_semconv as gs
from processor.files.linear_regex import glob_regex
from processor.stages.policy.budgets import COST
from processor.stages.policy.policy_file import PolicyRule
from processor.stages.policy.rules import (
    BUDGET_WARNING,
    MODE_ORDER,
    MODEL,
    PII_COUNT,
    REASON_CODE,
    RESULT,
    TOKENS_INPUT,
    TOKENS_OUTPUT,
    VIOLATIONS,
    Check,
    _severity,
    severity_order,
)


def rule_check(rule: PolicyRule) -> pl.Expr:
    """Whether a span violates `rule`, from the cost column, model, tokens_input/output,
    redaction count and dimension columns."""
    return (_applies(rule) & _violation(rule)).fill_null(False)


def _applies(rule: PolicyRule) -> pl.Expr:
    applies = pl.lit(True)
    for dimension, values in rule.match.items():
        applies &= pl.col(dimension).is_in(list(values))
    return applies


def _violation(rule: PolicyRule) -> pl.Expr:
    if rule.type == "max_cost_per_operation":
        return pl.col(COST) > rule.max_usd
    if rule.type == "max_tokens_per_request":
        return (pl.col(TOKENS_INPUT).fill_null(0) + pl.col(TOKENS_OUTPUT).fill_null(0)) > rule.max_tokens
    if rule.type == "pii_detected":
        return pl.col(PII_COUNT) > 0
    if rule.type == "required_attribution":
        return pl.any_horizontal(pl.col(dimension).is_null() for dimension in rule.dimensions)
    # model_access: a span whose model is unknown cannot be judged, so it is not a violation.
    model = pl.col(MODEL)
    violated = pl.lit(False)
    if rule.allow:
        violated |= ~model.str.contains(glob_regex(rule.allow))
    if rule.deny:
        violated |= model.str.contains(glob_regex(rule.deny))
    return model.is_not_null() & violated


def verdict(checks: Sequence[Check], warned: pl.Expr, evaluated: pl.Expr) -> list[pl.Expr]:
    """Per span: violations (list of check names, null when none), result, reason code.

    Only `evaluated` (GenAI) spans get a verdict; `warned` marks spans past a budget warn level.
    The reason code is the one of the most severe violation, the first listed on a tie.
    """
    flags = [c.violated.fill_null(False) for c in checks]
    names = [pl.when(flag).then(pl.lit(c.name)) for flag, c in zip(flags, checks, strict=True)]
    by_mode = {mode: [flag for flag, c in zip(flags, checks, strict=True) if c.mode == mode] for mode in MODE_ORDER}
    blocked = pl.any_horizontal(by_mode["enforced"]) if by_mode["enforced"] else pl.lit(False)
    advisory = pl.any_horizontal(by_mode["advisory"]) if by_mode["advisory"] else pl.lit(False)
    ordered = sorted(zip(flags, checks, strict=True), key=lambda item: _severity(item[1]))
    reasons = [pl.when(flag).then(pl.lit(c.reason_code)) for flag, c in ordered]
    reasons.append(pl.when(warned).then(pl.lit(BUDGET_WARNING)))
    violations = (pl.concat_list(names).list.drop_nulls() if names else pl.lit([], dtype=pl.List(pl.String))).cast(
        pl.List(pl.String)
    )
    return [
        pl.when(evaluated & (violations.list.len() > 0)).then(violations).alias(VIOLATIONS),
        pl.when(~evaluated)
        .then(None)
        .when(blocked)
        .then(pl.lit(gs.BLOCKED))
        .when(advisory | warned)
        .then(pl.lit(gs.WARNING))
        .otherwise(pl.lit(gs.ALLOWED))
        .alias(RESULT),
        # §5.3: no reason code on an ALLOWED span (an audit-only violation is listed, not a reason).
        pl.when(evaluated & (blocked | advisory | warned)).then(pl.coalesce(reasons)).alias(REASON_CODE),
    ]


# The oracle tabulates the verdicts of policies with at most this
# many checks (2^(checks+1) rows); the native plan computes each distinct verdict of a batch instead.
MAX_TABLE_CHECKS = 12


class VerdictTable:
    """Every verdict a span can get, indexed by a code: bit 0 is "warned", bit k+1 check k.

    Looking the three verdict columns up by one integer per span is far cheaper in polars than
    assembling the list of violation names per span with list expressions.
    """

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = tuple(checks)
        ordered = severity_order(checks)
        violations, results, reasons = [], [], []
        # Per code: (violated check names or None, result, reason code or None).
        self.entries: tuple[tuple[list[str] | None, str, str | None], ...]
        for code in range(2 ** (len(checks) + 1)):
            warned = bool(code & 1)
            hit = [k for k in range(len(checks)) if code >> (k + 1) & 1]
            modes = {checks[k].mode for k in hit}
            violations.append([checks[k].name for k in hit] or None)
            if "enforced" in modes:
                results.append(gs.BLOCKED)
            elif "advisory" in modes or warned:
                results.append(gs.WARNING)
            else:
                results.append(gs.ALLOWED)
            first = next((checks[k].reason_code for k in ordered if k in hit), None)
            reason = first if first is not None else BUDGET_WARNING if warned else None
            # §5.3: no reason code on an ALLOWED span (an audit-only violation is listed, not a reason).
            reasons.append(None if results[-1] == gs.ALLOWED else reason)
        self.entries = tuple(zip(violations, results, reasons, strict=True))
        self._columns = {
            VIOLATIONS: pl.Series(VIOLATIONS, violations, dtype=pl.List(pl.String)),
            RESULT: pl.Series(RESULT, results, dtype=pl.String),
            REASON_CODE: pl.Series(REASON_CODE, reasons, dtype=pl.String),
        }

    @staticmethod
    def fits(checks: Sequence[Check]) -> bool:
        return len(checks) <= MAX_TABLE_CHECKS

    def code(self, warned: pl.Expr, evaluated: pl.Expr | None) -> pl.Expr:
        """The span's code (null for a span that gets no verdict; `evaluated` None: every span gets one)."""
        bits = [warned.fill_null(False).cast(pl.UInt32)]
        bits += [c.violated.fill_null(False).cast(pl.UInt32) * (2 ** (k + 1)) for k, c in enumerate(self.checks)]
        code = pl.sum_horizontal(bits)
        return code if evaluated is None else pl.when(evaluated).then(code)

    def columns(self, code: str) -> list[pl.Expr]:
        """VIOLATIONS, RESULT and REASON_CODE looked up by the code column."""
        return [pl.lit(column).gather(pl.col(code)).alias(name) for name, column in self._columns.items()]
