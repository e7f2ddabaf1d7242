"""dashboards/rtguard.json: generated from dashboards/generate.py and committed, structurally
sound by grafana/dashboard-linter's conventions, and every query returns data from a real
Prometheus after a simulator run (no dead panels, exemplars that name real traces)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import re
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from promstack import ALERTS, DASHBOARDS, Stack, http_get, run_session, stack
from rtguard import Agent, function_tool
from rtguard.simulator import CallSpec, Faults, Scenario
from rtguard.telemetry import _names as n

DASHBOARD = DASHBOARDS / "rtguard.json"
GRAFANA = DASHBOARDS / "grafana"

# Grafana units, a subset of grafana/dashboard-linter's panel-units-rule list.
UNITS = {"short", "none", "percent", "percentunit", "s", "ms", "reqps", "ops", "cps", "bool"}
METRICS = {v for k, v in vars(n).items() if k.startswith("METRIC_")}
HISTOGRAMS = {n.METRIC_TOOL_DURATION, n.METRIC_OUTPUT_LATENCY}  # with exemplars
SERIES = METRICS | {
    f"{h}_{s}" for h in (*HISTOGRAMS, n.METRIC_DISCONNECTED) for s in ("bucket", "count", "sum")
}
# The SLO's recorded series (dashboards/slo.yml): per job, so they match the job only.
RECORDED = {n.SLO_ERROR_RATIO.format(window=w) for w in n.SLO_WINDOWS}
METRIC_NAME = r"(?<![\w:])((?:job:)?(?:rtguard|gen_ai)_[\w:]+)"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rtguard_dashboard", DASHBOARDS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data (rows only group them)."""
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield panel, target


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


# --- generated and current ------------------------------------------------------------------


def test_committed_json_is_what_the_generator_writes() -> None:
    generator = load_generator()
    assert DASHBOARD.read_text() == generator.render(), (
        "dashboards/rtguard.json is out of date: run .venv/bin/python dashboards/generate.py"
    )
    assert generator.main(["--check"]) == 0


# --- structure ------------------------------------------------------------------------------


def test_dashboard_identity_and_schema(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "rtguard-overview"
    assert dashboard["title"] == "rtguard"
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36


def test_exactly_one_datasource_variable(dashboard: dict[str, Any]) -> None:
    (datasource,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert datasource["name"] == "datasource"
    assert datasource["label"] == "Data source"
    assert datasource["query"] == "prometheus"


@pytest.mark.parametrize("name", ["job", "instance", "tool"])
def test_query_variables_follow_the_linter(dashboard: dict[str, Any], name: str) -> None:
    variable = variables(dashboard)[name]
    assert variable["type"] == "query"
    assert variable["datasource"]["uid"] in ("$datasource", "${datasource}")
    assert variable["label"] == name.title()
    assert variable["multi"] is True
    assert variable["includeAll"] is True
    assert variable["allValue"] == ".+"
    assert variable["refresh"] == 2  # reload on time range change
    assert variable["definition"].startswith("label_values(")


def test_tool_variable_lists_tool_names(dashboard: dict[str, Any]) -> None:
    query = variables(dashboard)["tool"]["definition"]
    assert query.startswith(f"label_values({n.METRIC_TOOL_CALLS}{{")
    assert query.endswith(", gen_ai_tool_name)")


def test_panel_ids_are_unique_and_the_grid_does_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_panel_has_title_description_unit_and_templated_datasource(
    dashboard: dict[str, Any],
) -> None:
    for panel in panels(dashboard):
        title = panel["title"]
        assert panel["type"] in ("timeseries", "stat"), title
        assert title, panel
        assert panel["description"], title
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, title
        for override in panel["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in UNITS, title
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], title


def enclosing_call(expr: str, position: int) -> str:
    """The name of the function whose parentheses enclose ``position``."""
    depth = 0
    for i in range(position - 1, -1, -1):
        if expr[i] == ")":
            depth += 1
        elif expr[i] == "(":
            if depth == 0:
                match = re.search(r"([a-z_]+)\s*$", expr[:i])
                return match.group(1) if match else ""
            depth -= 1
    return ""


def test_rates_use_rate_interval_and_counters_are_rated(dashboard: dict[str, Any]) -> None:
    for panel, target in targets(dashboard):
        expr = target["expr"]
        for match in re.finditer(r"\[([^\]]+)\]", expr):
            call = enclosing_call(expr, match.start())
            if call in ("rate", "irate"):
                assert match.group(1) == "$__rate_interval", (panel["title"], expr)
            else:
                assert call == "increase", (panel["title"], expr)
                assert match.group(1) in ("$__rate_interval", "$__range"), (panel["title"], expr)
        for match in re.finditer(r"\b(\w+_total)\{[^}]*\}\[", expr):
            assert enclosing_call(expr, match.start()) in ("rate", "irate", "increase"), expr
        counters = re.findall(r"\b\w+_total\b", expr)
        assert len(counters) == len(re.findall(r"\b\w+_total\{[^}]*\}\[", expr)), expr


def test_every_selector_matches_job_and_instance_and_names_a_real_metric(
    dashboard: dict[str, Any],
) -> None:
    for panel, target in targets(dashboard):
        expr = target["expr"]
        # Metric names: what is left outside label matchers and `by (...)` groupings.
        outside = re.sub(r"\{[^}]*\}|\b(?:by|without) \([^)]*\)", "", expr)
        names = re.findall(METRIC_NAME, outside)
        assert names, expr
        selectors = re.findall(METRIC_NAME + r"\{([^}]*)\}", expr)
        assert len(selectors) == len(names), f"a bare metric name in {expr}"
        for name, matchers in selectors:
            assert name in SERIES | RECORDED, f"{panel['title']}: {name} is not in _names.py"
            assert 'job=~"$job"' in matchers, expr
            if name in SERIES:
                assert 'instance=~"$instance"' in matchers, expr


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for _, t in targets(dashboard)]


def test_the_panels_the_issue_asks_for_exist(dashboard: dict[str, Any]) -> None:
    all_exprs = exprs(dashboard)

    def some(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in all_exprs)

    tool = r'gen_ai_tool_name=~"\$tool"'
    assert some(rf"sum by \(outcome\) \(rate\({n.METRIC_TOOL_CALLS}\{{[^}}]*{tool}")
    assert some(rf'{n.METRIC_TOOL_CALLS}\{{[^}}]*outcome!="success".*/')  # failure ratio
    for histogram in (n.METRIC_TOOL_DURATION, n.METRIC_OUTPUT_LATENCY):
        for q in ("0.5", "0.95", "0.99"):
            assert some(
                rf"histogram_quantile\({q}, sum by \(gen_ai_tool_name, le\) "
                rf"\(rate\({histogram}_bucket\{{[^}}]*{tool}"
            ), (histogram, q)
    for metric in (
        n.METRIC_CALLS_WAITING,
        n.METRIC_OLDEST_WAITING_AGE,
        n.METRIC_CALLS_WITHOUT_OUTPUT,
        n.METRIC_SEND_RETRIES,
        n.METRIC_SWALLOWED_ERRORS,
        n.METRIC_PROTOCOL_ERRORS,
        n.METRIC_ACTIVE_SESSIONS,
    ):
        assert some(rf"\b{metric}\{{"), metric


def test_an_slo_row_shows_the_error_budget_and_its_burn_rate(dashboard: dict[str, Any]) -> None:
    generator = load_generator()
    slo = generator.Slo()
    (row,) = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert row["title"] == f"Error budget: {slo.title}"
    below = [p for p in panels(dashboard) if p["gridPos"]["y"] == row["gridPos"]["y"] + 1]
    by_title = {p["title"]: p for p in below}
    budget = by_title["Error budget remaining"]
    assert budget["targets"][0]["expr"] == (
        f'1 - max({n.SLO_ERROR_RATIO.format(window="30d")}{{job=~"$job"}}) / 0.01'
    )
    burn = by_title["Error budget burn rate"]
    windows = [t["legendFormat"] for t in burn["targets"]]
    assert windows == ["5m", "1h", "6h", "1d", "3d"]
    lines = [s["value"] for s in burn["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]
    assert lines == [1.0, 3.0, 6.0, 14.4]  # every burn-rate alert's threshold
    answered = by_title["Calls answered in time"]["fieldConfig"]["defaults"]["thresholds"]
    assert answered["steps"][-1]["value"] == slo.objective


def test_latency_panels_show_exemplars_in_seconds(dashboard: dict[str, Any]) -> None:
    latency = [p for p in panels(dashboard) if "_bucket{" in p["targets"][0]["expr"]]
    assert len(latency) == 2
    for panel in latency:
        assert panel["fieldConfig"]["defaults"]["unit"] == "s"
        assert all(t["exemplar"] is True for t in panel["targets"])


def test_waiting_threshold_matches_the_alert(dashboard: dict[str, Any]) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    (rule,) = [
        r
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("alert") == "RtguardCallAwaitingOutputTooLong"
    ]
    threshold = float(re.findall(r">\s*([\d.]+)", rule["expr"])[0])
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Oldest call awaiting output"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == threshold


def test_grafana_provisioning_links_exemplars_to_jaeger() -> None:
    provisioned = yaml.safe_load((GRAFANA / "datasources.yml").read_text())
    by_uid = {d["uid"]: d for d in provisioned["datasources"]}
    prometheus = by_uid["prometheus"]
    assert prometheus["type"] == "prometheus"
    (destination,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == "trace_id"  # the exemplar label rtguard writes
    assert by_uid[destination["datasourceUid"]]["type"] == "jaeger"
    assert by_uid[destination["datasourceUid"]]["url"].endswith(":16686")  # Jaeger's UI/API
    providers = yaml.safe_load((GRAFANA / "dashboards.yml").read_text())["providers"]
    assert providers
    assert all(p["type"] == "file" for p in providers)


# --- live: every query against a real Prometheus --------------------------------------------


class Boom(RuntimeError):
    pass


@function_tool
async def lookup(key: str) -> dict[str, str]:
    """Look a key up."""
    return {"key": key}


@function_tool
async def explode() -> str:
    """Always fails."""
    raise Boom("no")


agent = Agent(name="ops", instructions="Operate.", tools=[lookup, explode])


def substitute(query: str, stack: Stack) -> str:
    """What Grafana sends for this dashboard with every variable at All."""
    return (
        query.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace('"$job"', '"rtguard"')
        .replace('"$instance"', '".+"')
        .replace('"$tool"', '".+"')
    )


def label_values(stack: Stack, definition: str) -> set[str]:
    """Grafana's label_values(selector, label), through the same Prometheus API it uses."""
    match = re.fullmatch(r"label_values\((.*), (\w+)\)", substitute(definition, stack))
    assert match, definition
    selector, label = match.groups()
    query = urllib.parse.urlencode({"match[]": selector})
    answer = http_get(f"{stack.prometheus_url}/api/v1/label/{label}/values?{query}")
    assert answer["status"] == "success"
    return set(answer["data"])


def test_every_query_returns_data_from_a_live_prometheus(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    calls = (
        *(CallSpec("lookup", f'{{"key": "k{i}"}}') for i in range(8)),
        CallSpec("explode"),
        CallSpec("explode"),
        CallSpec("invented_tool"),
    )
    scenario = Scenario(
        calls=calls,
        faults=Faults(
            reject_output=frozenset({2}),
            reject_type="server_error",
            malformed_before=frozenset({4}),
            drop_connection_after=frozenset({6}),  # replaced: the continuity panels
        ),
    )
    with stack(tmp_path) as s:
        s.wait_for_target_up()
        started = time.time() - 1
        # A labelled series is born at its first observation, and rate() cannot count what
        # happened before a series' first scrape: warm up once, as a running process has.
        asyncio.run(run_session(scenario, agent, s.telemetry))
        s.wait_for_scrapes(2)
        asyncio.run(run_session(scenario, agent, s.telemetry))
        s.wait_for_scrapes(3)

        for panel, target in targets(dashboard):
            result = s.query(substitute(target["expr"], s))
            values = [float(r["value"][1]) for r in result]
            assert values, f"dead panel: {panel['title']} / {target['refId']}: {target['expr']}"
            assert any(not math.isnan(v) for v in values), (panel["title"], target["expr"])

        names = variables(dashboard)
        assert label_values(s, names["job"]["definition"]) == {"rtguard"}
        assert label_values(s, names["instance"]["definition"]) == {f"127.0.0.1:{s.metrics_port}"}
        assert label_values(s, names["tool"]["definition"]) == {"lookup", "explode", "_unknown"}

        # The latency panels' exemplars carry the trace id of a real execute_tool span.
        traces = {format(span.context.trace_id, "032x") for span in s.spans.get_finished_spans()}
        for histogram in HISTOGRAMS:
            found = s.exemplars(f'{histogram}_bucket{{job="rtguard"}}', started)
            ids = {e["labels"]["trace_id"] for series in found for e in series["exemplars"]}
            assert ids, f"no exemplars for {histogram}"
            assert ids <= traces
