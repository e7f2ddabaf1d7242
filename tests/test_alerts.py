"""dashboards/alerts.yml and the generated dashboards/slo.yml: valid for the real promtool,
unit-tested alert by alert (dashboards/alerts_test.yml), in the monitoring-mixins style, and
keyed on the metric names rtguard exports. The SLO's burn-rate alerts follow the SRE
workbook's multi-window, multi-burn-rate table. The example Prometheus and Alertmanager
configs pass their own checkers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from promstack import (
    ALERTMANAGER_CONFIG,
    ALERTS,
    DASHBOARDS,
    PROMETHEUS_CONFIG,
    ROOT,
    RULE_FILES,
    SLO_RULES,
    run_tool,
)
from rtguard.telemetry import _names as n

ALERTS_TEST = DASHBOARDS / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK = "https://github.com/rtguard/rtguard/blob/main/docs/operations.md#"
SEVERITIES = {"critical", "warning", "info"}
HISTOGRAMS = {n.METRIC_TOOL_DURATION, n.METRIC_OUTPUT_LATENCY}
SERIES = {v for k, v in vars(n).items() if k.startswith("METRIC_")} | {
    f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "count", "sum")
}
RECORDED = {n.SLO_ERROR_RATIO.format(window=w) for w in n.SLO_WINDOWS}
# A metric name outside label matchers: rtguard's own, or one of the SLO's recorded series.
METRIC_NAME = r"(?<![\w:])((?:job:)?(?:rtguard|gen_ai)_[\w:]+)"


def rules(*kinds: str) -> list[dict[str, Any]]:
    """The rules of every shipped rule file that have one of these keys (alert, record)."""
    groups = [g for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]
    return [rule for group in groups for rule in group["rules"] if set(kinds) & set(rule)]


def alert_rules() -> list[dict[str, Any]]:
    return rules("alert")


def unit_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    return tests


def github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def check(result: Any) -> str:
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    return output


def test_promtool_check_rules() -> None:
    for path in RULE_FILES:
        output = check(run_tool("promtool", "check", "rules", str(path)))
        groups = yaml.safe_load(path.read_text())["groups"]
        assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in output


def test_promtool_unit_tests_pass() -> None:
    output = check(run_tool("promtool", "test", "rules", str(ALERTS_TEST), timeout=60))
    assert "SUCCESS" in output


def test_promtool_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests compare labels and annotations exactly (they are not vacuous)."""
    text = ALERTS_TEST.read_text().replace("reason: rejected_by_server", "reason: other", 1)
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    (tmp_path / "slo.yml").write_text(SLO_RULES.read_text())
    (tmp_path / "alerts_test.yml").write_text(text)
    result = run_tool("promtool", "test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "RtguardCallWithoutOutput" in result.stdout + result.stderr


def test_example_prometheus_config_is_valid_and_loads_the_rules() -> None:
    output = check(run_tool("promtool", "check", "config", str(PROMETHEUS_CONFIG)))
    for path in RULE_FILES:
        groups = yaml.safe_load(path.read_text())["groups"]
        assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in output
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml", "slo.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["rtguard"]["static_configs"] == [{"targets": ["127.0.0.1:9464"]}]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": ["127.0.0.1:9093"]}]


def test_example_alertmanager_config_is_valid() -> None:
    check(run_tool("amtool", "check-config", str(ALERTMANAGER_CONFIG)))


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    missing_fires: set[str] = set()  # absent() guards firing on `_` samples
    stale_fires: set[str] = set()  # ... and on stale samples
    for test in unit_tests():
        values = " ".join(s["values"] for s in test["input_series"])
        for case in test["alert_rule_test"]:
            name = case["alertname"]
            if case.get("exp_alerts"):
                firing.add(name)
                for alert in case["exp_alerts"]:
                    assert alert["exp_annotations"], (test["name"], name)
                    assert alert["exp_labels"]["severity"] in SEVERITIES
                if re.search(r"(^|\s)_", values):
                    missing_fires.add(name)
                if "stale" in values:
                    stale_fires.add(name)
            else:
                silent.add(name)
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"
    guards = {rule["alert"] for rule in alert_rules() if "absent(" in rule["expr"]}
    assert guards, "absent() guards"
    assert guards - missing_fires == set(), "guards not shown to fire on missing samples"
    assert guards - stale_fires == set(), "guards not shown to fire on stale samples"


def test_the_alerts_the_issue_asks_for() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    without_output = rules["RtguardCallWithoutOutput"]
    assert n.METRIC_CALLS_WITHOUT_OUTPUT in without_output["expr"]
    assert without_output["labels"]["severity"] == "critical"
    assert "for" not in without_output  # fires at once
    waiting = rules["RtguardCallAwaitingOutputTooLong"]
    assert n.METRIC_OLDEST_WAITING_AGE in waiting["expr"]
    assert waiting["labels"]["severity"] == "critical"
    assert rules["RtguardSwallowedErrors"]["labels"]["severity"] == "warning"
    assert n.METRIC_SWALLOWED_ERRORS in rules["RtguardSwallowedErrors"]["expr"]
    assert n.METRIC_TOOL_CALLS in rules["RtguardHighToolFailureRatio"]["expr"]
    assert n.METRIC_SEND_RETRIES in rules["RtguardOutputSendRetriesHigh"]["expr"]
    assert 'up{job="rtguard"} == 0' in rules["RtguardMetricsTargetDown"]["expr"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: str(r["alert"]))
def test_alert_style(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"Rtguard(?:[A-Z][a-z0-9]*)+", name), "CamelCase, Rtguard prefix"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["summary"].endswith(".")
    assert annotations["runbook_url"] == RUNBOOK + name.lower()


def test_runbook_urls_point_at_runbook_sections() -> None:
    headings = re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(h) for h in headings}
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"docs/operations.md has no section for {rule['alert']}"


def test_expressions_use_the_exported_metric_names() -> None:
    for rule in rules("alert", "record"):
        # Metric names: what is left outside label matchers and `by (...)` groupings.
        outside = re.sub(r"\{[^}]*\}|\b(?:by|without) \([^)]*\)", "", rule["expr"])
        names = set(re.findall(METRIC_NAME, outside))
        assert names or "up{" in rule["expr"], rule
        for name in names:
            assert name in SERIES | RECORDED, f"{name} is not in telemetry/_names.py"
    assert {rule["record"] for rule in rules("record")} == RECORDED


def test_burn_rate_alerts_follow_the_workbook() -> None:
    """Each burn-rate alert pairs a long and a short window at the workbook's burn rates for a
    99% objective (budget 0.01): 14.4x over 1h/5m and 6x over 6h/30m page, 3x over 1d/2h and
    1x over 3d/6h open a ticket."""
    by_name = {rule["alert"]: rule for rule in alert_rules()}
    expected = {
        "RtguardErrorBudgetFastBurn": ("critical", [("1h", "5m", "14.4"), ("6h", "30m", "6")]),
        "RtguardErrorBudgetSlowBurn": ("warning", [("1d", "2h", "3"), ("3d", "6h", "1")]),
    }
    for name, (severity, windows) in expected.items():
        rule = by_name[name]
        assert rule["labels"]["severity"] == severity
        found = re.findall(r"ratio_rate(\w+) > \(([\d.]+) \* 0.01\)", rule["expr"])
        pairs = [(found[i][0], found[i + 1][0], found[i][1]) for i in range(0, len(found), 2)]
        assert pairs == windows, rule["expr"]
        assert all(found[i][1] == found[i + 1][1] for i in range(0, len(found), 2))
    ratio = SLO_RULES.read_text()
    assert 'rtguard_output_latency_seconds_bucket{le="2.5"}' in ratio
    assert n.METRIC_CALLS_WITHOUT_OUTPUT in ratio  # unanswered calls count as bad


def test_a_custom_slo_is_generated_from_its_flags(tmp_path: Path) -> None:
    from test_dashboards import load_generator

    generator = load_generator()
    args = ["--slo-seconds", "5", "--slo-objective", "0.995", "--output-dir", str(tmp_path)]
    assert generator.main(args) == 0
    text = (tmp_path / "slo.yml").read_text()
    assert 'le="5.0"' in text
    assert "> (14.4 * 0.005)" in text
    check(run_tool("promtool", "check", "rules", str(tmp_path / "slo.yml")))
    with pytest.raises(SystemExit):
        generator.main(["--slo-seconds", "3", "--output-dir", str(tmp_path)])  # not a bucket
