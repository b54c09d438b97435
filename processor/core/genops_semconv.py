"""The GenOps Governance Specification v0.1.0 vocabulary the sidecar writes: attribute keys, event
names, decision states and reason codes, each spelled here once.

Spec: koshihq/genops-spec, spec/genops-spec-v0.1.md. Attribution keys (`genops.team`, ...) are
made by processor/core/attribution.py (`dimension_key`) from its dimension names, which are the
spec's own.
"""

from __future__ import annotations

SPEC_VERSION = "genops.spec.version"
SPEC_VERSION_VALUE = "0.1.0"

OPERATION_NAME = "genops.operation.name"
OPERATION_TYPE = "genops.operation.type"

ACCOUNTING_RESERVED = "genops.accounting.reserved"
ACCOUNTING_ACTUAL = "genops.accounting.actual"
ACCOUNTING_RECONCILIATION_DELTA = "genops.accounting.reconciliation_delta"
# Not in the spec, which asks (§3.5) that a reconciliation without its full data be flagged
# incomplete: true on the span and the reconciliation event, with the why on the event.
ACCOUNTING_INCOMPLETE = "genops.accounting.incomplete"
ACCOUNTING_INCOMPLETE_REASON = "genops.accounting.incomplete_reason"
ACCOUNTING_UNIT = "genops.accounting.unit"
# Costs come from a USD pricing table: the accounting unit is the currency.
ACCOUNTING_UNIT_USD = "USD"

POLICY_RESULT = "genops.policy.result"
POLICY_REASON_CODE = "genops.policy.reason_code"
POLICY_NAME = "genops.policy.name"
# Not in the spec: every check a span violated (the spec's reason code names only one).
POLICY_VIOLATIONS = "genops.policy.violations"

# §4.1: the complete set of decision states.
ALLOWED = "ALLOWED"
BLOCKED = "BLOCKED"
WARNING = "WARNING"
RATE_LIMITED = "RATE_LIMITED"
DECISION_STATES = (ALLOWED, BLOCKED, WARNING, RATE_LIMITED)

# §5.2 reason codes the sidecar's checks map to.
BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
BUDGET_RESERVATION_FAILED = "BUDGET_RESERVATION_FAILED"
POLICY_DENY_MODEL = "POLICY_DENY_MODEL"
POLICY_DENY_REGION = "POLICY_DENY_REGION"
POLICY_DENY_CONTENT = "POLICY_DENY_CONTENT"
SLA_LATENCY_VIOLATION = "SLA_LATENCY_VIOLATION"
PROVIDER_ERROR_UPSTREAM = "PROVIDER_ERROR_UPSTREAM"
ACCOUNTING_INVARIANT_VIOLATION = "ACCOUNTING_INVARIANT_VIOLATION"
SPEC_REASON_CODES = (
    BUDGET_EXCEEDED,
    BUDGET_RESERVATION_FAILED,
    POLICY_DENY_MODEL,
    POLICY_DENY_REGION,
    POLICY_DENY_CONTENT,
    RATE_LIMITED,
    SLA_LATENCY_VIOLATION,
    PROVIDER_ERROR_UPSTREAM,
    ACCOUNTING_INVARIANT_VIOLATION,
)
# §5.5 extension codes for the sidecar's checks the taxonomy has no code for.
X_MAX_COST_PER_OPERATION = "x_max_cost_per_operation"
X_MAX_TOKENS_PER_REQUEST = "x_max_tokens_per_request"
X_PII_DETECTED = "x_pii_detected"
X_ATTRIBUTION_MISSING = "x_attribution_missing"
X_BUDGET_WARNING = "x_budget_warning"

COST_TOTAL = "genops.cost.total"
COST_CURRENCY = "genops.cost.currency"
COST_PROVIDER = "genops.cost.provider"
COST_MODEL = "genops.cost.model"

BUDGET_NAME = "genops.budget.name"
BUDGET_PERIOD = "genops.budget.period"
BUDGET_ALLOCATED = "genops.budget.allocated"
BUDGET_CONSUMED = "genops.budget.consumed"
BUDGET_REMAINING = "genops.budget.remaining"
# Not in the spec: the same amount as genops.budget.allocated, the sidecar's older name for it.
BUDGET_LIMIT = "genops.budget.limit"
BUDGET_UTILIZATION = "genops.budget.utilization"
BUDGET_EXCEEDED_FLAG = "genops.budget.exceeded"

# §7.2 required and §7.3 optional events.
EVENT_POLICY_EVALUATED = "genops.policy.evaluated"
EVENT_BUDGET_RESERVATION = "genops.budget.reservation"
EVENT_BUDGET_RECONCILIATION = "genops.budget.reconciliation"
EVENT_COST_CALCULATED = "genops.cost.calculated"
EVENT_BUDGET_ALERT = "genops.budget.alert"

# The attribution the spec requires on every AWU (§2.3); the sidecar's other dimensions
# (customer_id, cost_center, feature) are §7.3 optional attributes of the same spelling.
REQUIRED_DIMENSIONS = ("team", "project", "environment")

# genops.operation.type per gen_ai.operation.name (OTel GenAI semconv values, plus the spellings
# OpenLLMetry's llm.request.type uses). A name not listed is its own type: the instrumentation's
# word for the operation is more meaningful than a guess.
OPERATION_TYPES = {
    "chat": "inference",
    "text_completion": "inference",
    "completion": "inference",
    "generate_content": "inference",
    "embeddings": "embedding",
    "embedding": "embedding",
    "execute_tool": "tool",
    "create_agent": "agent",
    "invoke_agent": "agent",
    "rerank": "rerank",
}
# Where the operation name is read from, first found wins.
OPERATION_SOURCES = ("gen_ai.operation.name", "llm.request.type")

# §7.3 Evaluation attributes, and the §8.4 event carrying them.
EVAL_METRIC = "genops.eval.metric"
EVAL_SCORE = "genops.eval.score"
# Not in the spec: who scored (a judge model, a human review tool); read for the evaluator label.
EVAL_EVALUATOR = "genops.eval.evaluator"
EVENT_EVALUATION_COMPLETE = "genops.evaluation.complete"
