"""Policy rules evaluated per GenAI span, and how violations combine into one verdict.

A rule in `enforced` mode makes its violations `blocked`, `advisory` makes them `warning`, and
`audit_only` only records them (result stays `allowed`). The sidecar never drops a span: the verdict
is a tag that gateways, alerts and dashboards act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from processor.budget_policy_file import PolicyRule
from processor.budgets import COST

VIOLATIONS = "genops.policy.violations"
RESULT = "genops.policy.result"
REASON_CODE = "genops.policy.reason_code"

MODEL = "model"
TOKENS_INPUT = "tokens_input"
TOKENS_OUTPUT = "tokens_output"
PII_COUNT = "genops.redaction.count"

REASON_CODES = {
    "max_cost_per_operation": "cost_per_operation_exceeded",
    "model_access": "model_not_allowed",
    "required_attribution": "attribution_missing",
    "pii_detected": "pii_detected",
    "max_tokens_per_request": "tokens_per_request_exceeded",
    "budget": "budget_exceeded",
}
BUDGET_WARNING = "budget_warning"
MODE_ORDER = ("enforced", "advisory", "audit_only")


@dataclass(frozen=True)
class Check:
    """One named check and, per span, whether it was violated."""

    name: str
    reason_code: str
    mode: str
    violated: pl.Series  # Boolean, one per span; null counts as not violated


def rule_checks(rules: Sequence[PolicyRule], spans: pl.DataFrame) -> list[Check]:
    """`spans`: the cost column, model, tokens_input/output, redaction count and dimension columns."""
    if not rules:
        return []
    columns = spans.select(
        (_applies(rule) & _violation(rule)).fill_null(False).alias(str(index)) for index, rule in enumerate(rules)
    )
    return [
        Check(rule.name, REASON_CODES[rule.type], rule.mode, columns[str(index)]) for index, rule in enumerate(rules)
    ]


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


def glob_regex(patterns: Sequence[str]) -> str:
    """Case-insensitive, anchored regex matching any of the shell-style patterns (* and ?)."""
    return "(?i)^(?:" + "|".join(_glob(p) for p in patterns) + ")$"


def _glob(pattern: str) -> str:
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char.isascii() and not char.isalnum() and char not in " _-":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def verdict(checks: Sequence[Check], warned: pl.Series, evaluated: pl.Series) -> pl.DataFrame:
    """Per span: violations (list of check names, null when none), result, reason code.

    Only `evaluated` (GenAI) spans get a verdict; `warned` marks spans past a budget warn level.
    The reason code is the one of the most severe violation, the first listed on a tie.
    """
    flags = pl.DataFrame(
        [c.violated.fill_null(False).alias(f"c{i}") for i, c in enumerate(checks)]
        + [warned.fill_null(False).alias("warned"), evaluated.alias("evaluated")]
    )
    names = [pl.when(pl.col(f"c{i}")).then(pl.lit(c.name)) for i, c in enumerate(checks)]
    by_mode = {mode: [pl.col(f"c{i}") for i, c in enumerate(checks) if c.mode == mode] for mode in MODE_ORDER}
    blocked = pl.any_horizontal(by_mode["enforced"]) if by_mode["enforced"] else pl.lit(False)
    advisory = pl.any_horizontal(by_mode["advisory"]) if by_mode["advisory"] else pl.lit(False)
    ordered = sorted(enumerate(checks), key=lambda item: MODE_ORDER.index(item[1].mode))
    reasons = [pl.when(pl.col(f"c{i}")).then(pl.lit(c.reason_code)) for i, c in ordered]
    reasons.append(pl.when(pl.col("warned")).then(pl.lit(BUDGET_WARNING)))
    violations = (pl.concat_list(names).list.drop_nulls() if names else pl.lit([], dtype=pl.List(pl.String))).cast(
        pl.List(pl.String)
    )
    evaluated_only = pl.col("evaluated")
    return flags.select(
        pl.when(evaluated_only & (violations.list.len() > 0)).then(violations).alias(VIOLATIONS),
        pl.when(~evaluated_only)
        .then(None)
        .when(blocked)
        .then(pl.lit("blocked"))
        .when(advisory | pl.col("warned"))
        .then(pl.lit("warning"))
        .otherwise(pl.lit("allowed"))
        .alias(RESULT),
        pl.when(evaluated_only).then(pl.coalesce(reasons)).alias(REASON_CODE),
    )
