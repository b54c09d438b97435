"""The Grafana dashboard: valid JSON whose every query is PromQL over the documented metrics."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from tests.support.documented_metrics import DOCUMENTED_METRICS, documented_family, selected_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "dashboards" / "genops-cost.json"
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_dashboard_has_a_stable_uid_and_panels(dashboard):
    assert dashboard["uid"] == "genops-cost"
    assert dashboard["title"]
    assert len(queries(dashboard)) >= 20
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_selects_only_documented_metrics(dashboard):
    for title, expr in queries(dashboard):
        names = selected_metrics(expr)
        assert names, f"{title}: no metric in {expr!r}"
        undocumented = {name for name in names if documented_family(name) is None}
        assert undocumented == set(), f"{title}: {expr}"


def test_every_documented_metric_appears_on_the_dashboard(dashboard):
    shown = {documented_family(name) for _, expr in queries(dashboard) for name in selected_metrics(expr)}
    assert DOCUMENTED_METRICS - shown == set()


def test_queries_only_use_defined_template_variables(dashboard):
    defined = {variable["name"] for variable in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
    for title, expr in queries(dashboard):
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined, f"{title}: {used - defined}"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == datasource, panel["title"]


def test_panels_fit_the_grid_without_overlapping(dashboard):
    boxes = [(panel["title"], panel["gridPos"]) for panel in dashboard["panels"]]
    for title, pos in boxes:
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, title
    for (a, pa), (b, pb) in itertools.combinations(boxes, 2):
        apart = (
            pa["x"] + pa["w"] <= pb["x"]
            or pb["x"] + pb["w"] <= pa["x"]
            or pa["y"] + pa["h"] <= pb["y"]
            or pb["y"] + pb["h"] <= pa["y"]
        )
        assert apart, f"{a!r} overlaps {b!r}"


def test_the_genops_seed_metrics_each_have_a_panel(dashboard):
    by_metric: dict[str, set[str]] = {}
    for title, expr in queries(dashboard):
        for name in selected_metrics(expr):
            by_metric.setdefault(documented_family(name) or name, set()).add(title)
    assert by_metric["genops_evaluation_score"] == {"Mean evaluation score"}
    assert by_metric["genops_cost_by_operation_usd"] == {"Cost by operation type (USD/hour)"}
    assert by_metric["genops_policy_checks_total"] == {"Policy compliance rate"}
    assert "Tokens per USD by model" in by_metric["genops_cost_total_usd"]
