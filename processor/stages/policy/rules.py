"""Policy rules evaluated per GenAI span, and how violations combine into one verdict.

A rule in `enforced` mode makes its violations `BLOCKED`, `advisory` makes them `WARNING`, and
`audit_only` only records them (result stays `ALLOWED`): the decision states and reason codes of the
GenOps specification (processor/core/genops_semconv.py). The sidecar never drops a span: the verdict
is a tag that gateways, alerts and dashboards act on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from processor.core import genops_semconv as gs
from processor.stages.policy.policy_file import PolicyFile, PolicyRule

VIOLATIONS = gs.POLICY_VIOLATIONS
RESULT = gs.POLICY_RESULT
REASON_CODE = gs.POLICY_REASON_CODE

MODEL = "model"
TOKENS_INPUT = "tokens_input"
TOKENS_OUTPUT = "tokens_output"
# Values a detector or value pattern changed on the span, written by redaction (a key rule masking
# a prompt by its key is not a finding).
PII_COUNT = "genops.redaction.detected"

# Per check type: its spec reason code (§5.2), or an `x_` extension (§5.5) where the taxonomy has none.
REASON_CODES = {
    "max_cost_per_operation": gs.X_MAX_COST_PER_OPERATION,
    "model_access": gs.POLICY_DENY_MODEL,
    "required_attribution": gs.X_ATTRIBUTION_MISSING,
    "pii_detected": gs.X_PII_DETECTED,
    "max_tokens_per_request": gs.X_MAX_TOKENS_PER_REQUEST,
    "budget": gs.BUDGET_EXCEEDED,
}
BUDGET_WARNING = gs.X_BUDGET_WARNING
MODE_ORDER = ("enforced", "advisory", "audit_only")

# The spec requires team, project and environment on every AI Workload Unit and forbids placeholder
# values (§2.3, §9.1.8): a GenAI span without one gets no made-up value but a WARNING, from this
# check every policy has after its own rules. Its reason code comes last among the advisory ones.
SPEC_ATTRIBUTION_RULE = PolicyRule(
    name="genops-spec-attribution",
    type="required_attribution",
    mode="advisory",
    dimensions=gs.REQUIRED_DIMENSIONS,
)


def with_spec_checks(policy: PolicyFile, attribution_check: bool = True) -> PolicyFile:
    """`policy` with the checks the GenOps specification asks of every span added after its rules
    (none when `attribution_check` is off: `policy.spec_attribution_check`)."""
    if not attribution_check:
        return policy
    return dataclasses.replace(policy, rules=(*policy.rules, SPEC_ATTRIBUTION_RULE))


@dataclass(frozen=True)
class Check:
    """One named check; `violated` is its Boolean column (null counts as not violated)."""

    name: str
    reason_code: str
    mode: str
    violated: pl.Expr
    # Among violations of one mode, the reason code of the lowest rank wins (then the first listed).
    rank: int = 0


def rule_checks(rules: Sequence[PolicyRule], column: Callable[[int], str]) -> list[Check]:
    """The rules' checks reading their flags from `column(index)` (the oracle's `rule_check`:
    tests/oracle/policy_rules.py)."""
    return [
        Check(rule.name, REASON_CODES[rule.type], rule.mode, pl.col(column(i)), int(rule == SPEC_ATTRIBUTION_RULE))
        for i, rule in enumerate(rules)
    ]


def _severity(check: Check) -> tuple[int, int]:
    return MODE_ORDER.index(check.mode), check.rank


def severity_order(checks: Sequence[Check]) -> list[int]:
    """Check indices, the most severe first (the first listed on a tie): the reason code of a
    span's verdict is that of its first violated check in this order."""
    return sorted(range(len(checks)), key=lambda k: _severity(checks[k]))


# The native plan's verdict words: BLOCKED, WARNING, ALLOWED and the budget warning's reason code.
VERDICT_WORDS = (gs.BLOCKED, gs.WARNING, gs.ALLOWED, BUDGET_WARNING)
