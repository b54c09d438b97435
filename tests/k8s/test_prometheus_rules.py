"""The shipped Prometheus rules: valid for promtool, unit-tested, and in step with the operator CR."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.documented_metrics import documented_family, selected_metrics

K8S = Path(__file__).resolve().parents[2] / "k8s"
RULES_FILE = K8S / "prometheus" / "genops-rules.yaml"
RULES_TEST_FILE = K8S / "prometheus" / "genops-rules.test.yaml"
PROMETHEUS_RULE_CR = K8S / "prometheus" / "prometheusrule.yaml"

# Recorded series named as the GenOps seed metrics are (not level:metric:operation).
SEED_RECORDED = frozenset({"genops_policy_compliance_rate_ratio"})
REQUIRED_ALERTS = frozenset(
    {
        "GenopsCostSpike",
        "GenopsBudgetNearlyExceeded",
        "GenopsBudgetExceeded",
        "GenopsPolicyViolationSpike",
        "GenopsUnpricedModelsSeen",
        "GenopsSidecarForwardErrors",
        "GenopsPricingReloadFailing",
        "GenopsPricingTableStale",
        "GenopsBudgetExhaustionForecast",
        "GenopsReconciliationDrift",
    }
)


def load_groups(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["groups"]


def all_rules() -> list[dict]:
    return [rule for group in load_groups(RULES_FILE) for rule in group["rules"]]


def test_metric_extraction_follows_every_kind_of_expression():
    expr = (
        "sum by (team) (rate(a_total[$__rate_interval])) / on (team) group_left "
        'histogram_quantile(0.9, sum by (le) (rate(b_bucket{x=~"$team"}[5m]))) '
        "and topk(3, -c) or max_over_time(d[1h:1m])"
    )
    assert selected_metrics(expr) == {"a_total", "b_bucket", "c", "d"}


def test_histograms_are_only_accepted_through_their_series_suffixes():
    assert documented_family("genops_sidecar_request_seconds_bucket") == "genops_sidecar_request_seconds"
    assert documented_family("genops_sidecar_request_seconds") is None
    assert documented_family("genops_cost_usd_total") is None
    assert documented_family("genops_tokens_total") == "genops_tokens_total"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    return path


def test_promtool_accepts_the_rule_file(promtool):
    result = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool):
    result = subprocess.run(
        [promtool, "test", "rules", RULES_TEST_FILE.name], capture_output=True, text=True, cwd=RULES_TEST_FILE.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not():
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in all_rules() if "alert" in rule}
    assert alerts - fired == set(), "alerts never shown firing in genops-rules.test.yaml"
    assert alerts - quiet == set(), "alerts never shown staying quiet in genops-rules.test.yaml"


def test_the_issue_alerts_all_exist_with_severity_and_summary():
    alerts = {rule["alert"]: rule for rule in all_rules() if "alert" in rule}
    assert alerts.keys() >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_hourly_cost_by_team_recording_rule_exists():
    recorded = {rule["record"]: rule["expr"] for rule in all_rules() if "record" in rule}
    assert "genops:cost_usd:rate1h" in recorded
    assert selected_metrics(recorded["genops:cost_usd:rate1h"]) == {"genops_cost_total_usd"}
    assert all(name.startswith("genops:") or name in SEED_RECORDED for name in recorded)


def test_rules_select_only_documented_metrics_or_recorded_series():
    recorded = {rule["record"] for rule in all_rules() if "record" in rule}
    for rule in all_rules():
        for name in selected_metrics(rule["expr"]):
            assert name in recorded or documented_family(name), f"{rule.get('record') or rule['alert']}: {name}"


def test_no_group_overrides_the_servers_evaluation_interval():
    # The scrape test evaluates the shipped rules every second; a group interval would silently win.
    assert all("interval" not in group for group in load_groups(RULES_FILE))


def test_prometheusrule_carries_exactly_the_plain_rule_groups():
    custom_resource = yaml.safe_load(PROMETHEUS_RULE_CR.read_text())
    assert custom_resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert custom_resource["kind"] == "PrometheusRule"
    assert custom_resource["metadata"]["name"]
    assert custom_resource["spec"]["groups"] == load_groups(RULES_FILE)
