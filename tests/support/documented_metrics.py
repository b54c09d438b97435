"""The metric names the sidecar documents, and the series a PromQL expression (as rules and
dashboards write them) selects."""

from __future__ import annotations

import re

import promql_parser

# The metric names the sidecar documents (issue 6). Dashboards and rules may only use these, so a
# rename in the code shows up here instead of as an empty panel or an alert that can never fire.
DOCUMENTED_METRICS = frozenset(
    {
        "genops_cost_total_usd",
        "genops_tokens_input_total",
        "genops_tokens_output_total",
        "genops_tokens_total",
        "genops_policy_violations_total",
        "genops_policy_evaluations_total",
        "genops_budget_utilization_ratio",
        "genops_budget_remaining_usd",
        "genops_budget_exceeded_total",
        "genops_operation_latency_seconds",
        "genops_operations_total",
        "genops_operation_errors_total",
        "genops_cost_unpriced_spans_total",
        "genops_sidecar_requests_total",
        "genops_sidecar_forward_errors_total",
        "genops_sidecar_stage_errors_total",
        "genops_sidecar_request_seconds",
        "genops_pricing_reload_success",
        "genops_pricing_table_age_seconds",
        "genops_cost_estimated_spans_total",
        "genops_budget_forecast_exhaustion_seconds",
        "genops_reconciliation_drift_ratio",
        "genops_evaluation_score",
        "genops_cost_by_operation_usd",
        "genops_policy_checks_total",
        "genops_cost_cache_savings_usd",
        "genops_cost_cache_write_unread_usd",
    }
)


HISTOGRAMS = frozenset(
    {"genops_operation_latency_seconds", "genops_sidecar_request_seconds", "genops_evaluation_score"}
)


_GRAFANA_DURATIONS = re.compile(
    r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}"
)


def selected_metrics(expr: str) -> set[str]:
    """Names of every series an expression selects, from a real PromQL parse (Grafana variables allowed)."""
    tree = promql_parser.parse(_GRAFANA_DURATIONS.sub("5m", expr))
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next((m.value for m in node.matchers.matchers if m.name == "__name__"), None)
            assert name, f"selector without a metric name in {expr!r}"
            names.add(name)
        elif isinstance(node, promql_parser.MatrixSelector):
            visit(node.vector_selector)
        elif isinstance(node, promql_parser.BinaryExpr):
            visit(node.lhs)
            visit(node.rhs)
        elif isinstance(node, promql_parser.AggregateExpr):
            visit(node.expr)
            if node.param is not None:
                visit(node.param)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                visit(arg)
        elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
            visit(node.expr)

    visit(tree)
    return names


def documented_family(name: str) -> str | None:
    """The documented metric a series name belongs to (histograms expose _bucket/_sum/_count), else None."""
    if name in DOCUMENTED_METRICS and name not in HISTOGRAMS:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return None
