"""Generate dashboards/rtguard.json (the Grafana dashboard) and dashboards/slo.yml (the SLO's
recording rules and burn-rate alerts).

    .venv/bin/python dashboards/generate.py          # write both files
    .venv/bin/python dashboards/generate.py --check  # exit 1 if either is not current
    .venv/bin/python dashboards/generate.py --slo-seconds 5 --slo-objective 0.995 \
        --output-dir deploy/                         # your own SLO, written elsewhere

The SLO is "calls answered within N s": a call is good when the server acknowledged its output
within ``--slo-seconds`` (a bucket boundary of rtguard_output_latency_seconds), bad when it was
later or never got one (rtguard_calls_without_output_total). Its alerts are the Google SRE
workbook's multi-window, multi-burn-rate pair: a fast burn pages, a slow burn opens a ticket.

Metric names come from rtguard.telemetry._names, so the dashboard cannot drift from what
rtguard exports. It follows grafana/dashboard-linter's conventions: one `datasource`
variable, `job` and `instance` variables (multi, allValue `.+`) matched by every selector,
a unit and a description on every panel, `$__rate_interval` in every rate(). The latency
panels query exemplars; the Prometheus datasource links their `trace_id` to Jaeger (see
dashboards/grafana/datasources.yml).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rtguard.telemetry import _names as n

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "rtguard.json"
SLO_OUTPUT = HERE / "slo.yml"
RUNBOOK = "https://github.com/rtguard/rtguard/blob/main/docs/operations.md#"

UID = "rtguard-overview"
SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TOOL_LABEL = "gen_ai_tool_name"
# RtguardCallAwaitingOutputTooLong's threshold in alerts.yml (a test checks they agree).
WAITING_THRESHOLD_SECONDS = 60

Json = dict[str, Any]


def sel(metric: str, *matchers: str, tool: bool = False) -> str:
    """A selector with the job and instance matchers every target carries."""
    parts = ['job=~"$job"', 'instance=~"$instance"']
    if tool:
        parts.append(f'{TOOL_LABEL}=~"$tool"')
    parts.extend(matchers)
    return f"{metric}{{{', '.join(parts)}}}"


def rate(selector: str) -> str:
    return f"rate({selector}[$__rate_interval])"


def target(expr: str, legend: str, ref: str, *, exemplar: bool = False) -> Json:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "exemplar": exemplar,
        "expr": expr,
        "legendFormat": legend,
        "range": True,
        "refId": ref,
    }


def panel(
    title: str,
    description: str,
    unit: str,
    targets: list[Json],
    grid: tuple[int, int, int, int],
    *,
    kind: str = "timeseries",
    thresholds: list[Json] | None = None,
    stack: bool = False,
) -> Json:
    x, y, w, h = grid
    defaults: Json = {"unit": unit, "min": 0}
    if thresholds is not None:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 10,
            "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if thresholds else "off"},
        }
        options: Json = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    }


def quantiles(histogram: str) -> list[Json]:
    """p50/p95/p99 by tool, with exemplars (each links to its trace)."""
    bucket = sel(f"{histogram}_bucket", tool=True)
    return [
        target(
            f"histogram_quantile({q}, sum by ({TOOL_LABEL}, le) ({rate(bucket)}))",
            f"{{{{{TOOL_LABEL}}}}} p{round(q * 100)}",
            ref,
            exemplar=True,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


@dataclass(frozen=True)
class Slo:
    """Calls answered within ``seconds``, for ``objective`` of the calls over ``period``."""

    seconds: float = 2.5
    objective: float = 0.99
    period: str = "30d"

    def __post_init__(self) -> None:
        if self.seconds not in n.OUTPUT_LATENCY_BUCKETS:
            raise ValueError(f"--slo-seconds must be one of {n.OUTPUT_LATENCY_BUCKETS}")
        if not 0 < self.objective < 1:
            raise ValueError("--slo-objective must be between 0 and 1")

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 10)

    @property
    def title(self) -> str:
        return f"calls answered within {self.seconds:g} s, {self.objective:.4g} over {self.period}"


# (alert, severity, for, [(long window, short window, burn rate)]): the workbook's table for
# a 30-day budget. 14.4x spends 2% of it in an hour, 6x 5% in six hours (page); 3x spends
# 10% in a day, 1x 10% in three days (ticket). The short window resets the alert soon after
# the burn stops.
BURN_ALERTS = (
    ("RtguardErrorBudgetFastBurn", "critical", "2m", [("1h", "5m", 14.4), ("6h", "30m", 6.0)]),
    ("RtguardErrorBudgetSlowBurn", "warning", "15m", [("1d", "2h", 3.0), ("3d", "6h", 1.0)]),
)


def error_ratio(window: str) -> str:
    return n.SLO_ERROR_RATIO.format(window=window)


def slo_rules(slo: Slo) -> Json:
    good = f'{n.METRIC_OUTPUT_LATENCY}_bucket{{le="{slo.seconds}"}}'
    answered = f"{n.METRIC_OUTPUT_LATENCY}_count"
    records = [
        {
            "record": error_ratio(window),
            # A job without the unanswered-calls series still gets a ratio (its absence has
            # an alert of its own): `or ... * 0` stands in a zero with the job's label.
            "expr": (
                f"1 - (\n  sum by (job) (rate({good}[{window}]))\n/\n"
                f"  (\n    sum by (job) (rate({answered}[{window}]))\n"
                f"    + (\n      sum by (job) (rate({n.METRIC_CALLS_WITHOUT_OUTPUT}[{window}]))\n"
                f"      or\n      sum by (job) (rate({answered}[{window}])) * 0\n    )\n  )\n)\n"
            ),
        }
        for window in n.SLO_WINDOWS
    ]
    alerts = [burn_alert(slo, *alert) for alert in BURN_ALERTS]
    return {
        "groups": [
            {"name": "rtguard-slo-records", "rules": records},
            {"name": "rtguard-slo", "rules": alerts},
        ]
    }


def burn_alert(
    slo: Slo, name: str, severity: str, hold: str, windows: list[tuple[str, str, float]]
) -> Json:
    clauses = [
        f"(\n  {error_ratio(long)} > ({rate:g} * {slo.budget:g})\nand\n"
        f"  {error_ratio(short)} > ({rate:g} * {slo.budget:g})\n)"
        for long, short, rate in windows
    ]
    pace = "fast" if severity == "critical" else "slowly"
    spans = " or ".join(f"{rate:g}x over {long} and {short}" for long, short, rate in windows)
    return {
        "alert": name,
        "expr": "\nor\n".join(clauses) + "\n",
        "for": hold,
        "labels": {"severity": severity},
        "annotations": {
            "summary": f"rtguard is burning its error budget {pace}.",
            "description": (
                f"Job {{{{ $labels.job }}}} is burning the error budget of its SLO ({slo.title}) "
                f"at {spans}: {{{{ $value | humanizePercentage }}}} of its calls were not "
                f"answered within {slo.seconds:g} s."
            ),
            "runbook_url": RUNBOOK + name.lower(),
        },
    }


class _Block(str):
    """A multi-line string YAML writes as a literal block."""


def _block(dumper: yaml.SafeDumper, text: _Block) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Block, _block)


def render_slo(slo: Slo) -> str:
    rules = slo_rules(slo)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = _Block(rule["expr"])
    header = (
        f"# GENERATED by dashboards/generate.py: do not edit; change the SLO with its flags.\n"
        f"# SLO: {slo.title}.\n"
        "# Recording rules per job, then the SRE workbook's multi-window, multi-burn-rate\n"
        "# alerts (a fast burn pages, a slow burn opens a ticket). Prometheus loads this file\n"
        "# beside alerts.yml; the runbooks are in docs/operations.md.\n"
    )
    body = yaml.dump(rules, Dumper=_Dumper, sort_keys=False, width=100)
    return header + body


def panels(slo: Slo) -> list[Json]:
    calls = sel(n.METRIC_TOOL_CALLS, tool=True)
    failures = sel(n.METRIC_TOOL_CALLS, 'outcome!="success"', tool=True)
    ok = {"color": "green", "value": None}
    out = [
        panel(
            "Calls without output",
            "Calls that ended without an output the model can see, over the dashboard's "
            "time range (any is an incident: RtguardCallWithoutOutput).",
            "short",
            [
                target(
                    f"sum(increase({sel(n.METRIC_CALLS_WITHOUT_OUTPUT)}[$__range]))",
                    "calls",
                    "A",
                )
            ],
            (0, 0, 6, 5),
            kind="stat",
            thresholds=[ok, {"color": "red", "value": 1}],
        ),
        panel(
            "Active sessions",
            "Realtime sessions currently connected.",
            "short",
            [target(f"sum({sel(n.METRIC_ACTIVE_SESSIONS)})", "sessions", "A")],
            (6, 0, 6, 5),
            kind="stat",
            thresholds=[ok],
        ),
        panel(
            "Calls awaiting output",
            "Calls whose output the server has not acknowledged yet.",
            "short",
            [target(f"sum({sel(n.METRIC_CALLS_WAITING)})", "calls", "A")],
            (12, 0, 6, 5),
            kind="stat",
            thresholds=[ok],
        ),
        panel(
            "Oldest call awaiting output",
            "Age of the oldest call still waiting for its output; it keeps growing while a "
            f"call is stuck (RtguardCallAwaitingOutputTooLong fires above "
            f"{WAITING_THRESHOLD_SECONDS} s).",
            "s",
            [target(f"max({sel(n.METRIC_OLDEST_WAITING_AGE)})", "age", "A")],
            (18, 0, 6, 5),
            kind="stat",
            thresholds=[ok, {"color": "red", "value": WAITING_THRESHOLD_SECONDS}],
        ),
        panel(
            "Call rate by outcome",
            "Tool calls per second by how the tool ended: success, error, timeout, "
            "rejected, unknown_tool, invalid_arguments, handoff_failed.",
            "reqps",
            [target(f"sum by (outcome) ({rate(calls)})", "{{outcome}}", "A")],
            (0, 5, 12, 8),
            stack=True,
        ),
        panel(
            "Failure ratio by tool",
            "Share of each tool's calls that did not succeed (any outcome but success; "
            "RtguardHighToolFailureRatio fires above 10% for 10 minutes).",
            "percentunit",
            [
                target(
                    f"sum by ({TOOL_LABEL}) ({rate(failures)})"
                    f" / sum by ({TOOL_LABEL}) ({rate(calls)})"
                    f" or sum by ({TOOL_LABEL}) ({rate(calls)}) * 0",
                    f"{{{{{TOOL_LABEL}}}}}",
                    "A",
                )
            ],
            (12, 5, 12, 8),
            thresholds=[ok, {"color": "red", "value": 0.1}],
        ),
        panel(
            "Tool call latency (p50/p95/p99)",
            "From the model's function call until the call is settled "
            f"({n.METRIC_TOOL_DURATION}, the GenAI gen_ai.execute_tool.duration). "
            "Exemplars link to the call's trace in Jaeger.",
            "s",
            quantiles(n.METRIC_TOOL_DURATION),
            (0, 13, 12, 9),
        ),
        panel(
            "Time to output (p50/p95/p99)",
            "From the model's function call until the server acknowledged the output: what a "
            "voice-agent user waits. Exemplars link to the call's trace in Jaeger.",
            "s",
            quantiles(n.METRIC_OUTPUT_LATENCY),
            (12, 13, 12, 9),
        ),
        panel(
            "Calls waiting and the oldest one's age",
            "Calls whose output is not acknowledged yet (left axis) and the age of the "
            "oldest (right axis).",
            "short",
            [
                target(f"sum({sel(n.METRIC_CALLS_WAITING)})", "calls waiting", "A"),
                target(f"max({sel(n.METRIC_OLDEST_WAITING_AGE)})", "oldest age", "B"),
            ],
            (0, 22, 12, 8),
        ),
        panel(
            "Calls that ended without output",
            "Calls that ended without a model-visible output, by reason.",
            "short",
            [
                target(
                    f"sum by (reason) (increase({sel(n.METRIC_CALLS_WITHOUT_OUTPUT)}"
                    "[$__rate_interval]))",
                    "{{reason}}",
                    "A",
                )
            ],
            (12, 22, 12, 8),
            stack=True,
        ),
        panel(
            "Output sends and retries",
            "function_call_output send attempts by result, and sends scheduled again from "
            "the cached output (RtguardOutputSendRetriesHigh: retries above 5% of sends).",
            "ops",
            [
                target(
                    f"sum by (result) ({rate(sel(n.METRIC_OUTPUT_SENDS))})",
                    "{{result}}",
                    "A",
                ),
                target(f"sum({rate(sel(n.METRIC_SEND_RETRIES))})", "retries", "B"),
            ],
            (0, 30, 12, 8),
        ),
        panel(
            "Swallowed errors",
            "Exceptions rtguard caught and did not re-raise, by place (RtguardSwallowedErrors).",
            "ops",
            [
                target(
                    f"sum by (place) ({rate(sel(n.METRIC_SWALLOWED_ERRORS))})",
                    "{{place}}",
                    "A",
                )
            ],
            (12, 30, 12, 8),
            stack=True,
        ),
        panel(
            "Protocol errors",
            "Server frames rtguard could not use, server error events, and responses whose "
            "response.done never came, by kind (RtguardProtocolErrors).",
            "ops",
            [
                target(
                    f"sum by (kind) ({rate(sel(n.METRIC_PROTOCOL_ERRORS))})",
                    "{{kind}}",
                    "A",
                )
            ],
            (0, 38, 12, 8),
            stack=True,
        ),
        panel(
            "Handoffs",
            "Handoffs between agents by result.",
            "ops",
            [
                target(
                    f"sum by (result) ({rate(sel(n.METRIC_HANDOFFS))})",
                    "{{result}}",
                    "A",
                )
            ],
            (12, 38, 12, 8),
            stack=True,
        ),
        panel(
            "Connections replaced",
            "Connections that ended and were replaced, by why (a rollover is rtguard's own, "
            "before the server's maximum duration) and whether a new one opened "
            "(RtguardReconnectStorm, RtguardSessionNotResumed).",
            "ops",
            [
                target(
                    f"sum by (reason, outcome) ({rate(sel(n.METRIC_RECONNECTS))})",
                    "{{reason}} {{outcome}}",
                    "A",
                )
            ],
            (0, 46, 12, 8),
            stack=True,
        ),
        panel(
            "Carried across connections",
            "Open calls carried to a new connection and conversation items replayed there "
            "(per second), and the time without a connection (seconds, right axis).",
            "ops",
            [
                target(f"sum({rate(sel(n.METRIC_CALLS_CARRIED))})", "calls carried", "A"),
                target(f"sum({rate(sel(n.METRIC_REPLAYED_ITEMS))})", "items replayed", "B"),
                target(
                    "histogram_quantile(0.99, sum by (le) "
                    f"({rate(sel(n.METRIC_DISCONNECTED + '_bucket'))}))",
                    "p99 time without a connection",
                    "C",
                ),
            ],
            (12, 46, 12, 8),
        ),
    ]
    out += slo_panels(slo, y=54)
    # Panels that plot seconds on a right axis beside their counts.
    for index, series in ((8, "oldest age"), (15, "p99 time without a connection")):
        out[index]["fieldConfig"]["overrides"] = [
            {
                "matcher": {"id": "byName", "options": series},
                "properties": [
                    {"id": "unit", "value": "s"},
                    {"id": "custom.axisPlacement", "value": "right"},
                ],
            }
        ]
    for number, item in enumerate(out, start=1):
        item["id"] = number
    return out


def slo_panels(slo: Slo, y: int) -> list[Json]:
    """A row for the SLO: what is left of the error budget and how fast it burns (each
    burn-rate alert's threshold is a line on the burn-rate panel)."""

    def ratio(window: str) -> str:
        return f'max({error_ratio(window)}{{job=~"$job"}})'

    budget = f"{slo.budget:g}"
    row = {
        "type": "row",
        "title": f"Error budget: {slo.title}",
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }
    burn_lines = sorted({rate for *_, windows in BURN_ALERTS for *_, rate in windows})
    return [
        row,
        panel(
            "Calls answered in time",
            f"Share of calls whose output the server acknowledged within {slo.seconds:g} s "
            f"over the last {slo.period} (the SLO's indicator; the objective is "
            f"{slo.objective:.4g}).",
            "percentunit",
            [target(f"1 - {ratio(slo.period)}", "answered in time", "A")],
            (0, y + 1, 6, 8),
            kind="stat",
            thresholds=[
                {"color": "red", "value": None},
                {"color": "green", "value": slo.objective},
            ],
        ),
        panel(
            "Error budget remaining",
            f"What is left of the {slo.period} error budget ({budget} of the calls may be late "
            "or unanswered); below 0 the SLO is missed.",
            "percentunit",
            [target(f"1 - {ratio(slo.period)} / {budget}", "budget left", "A")],
            (6, y + 1, 6, 8),
            kind="stat",
            thresholds=[
                {"color": "red", "value": None},
                {"color": "orange", "value": 0},
                {"color": "green", "value": 0.25},
            ],
        ),
        panel(
            "Error budget burn rate",
            "How many times faster than the budget allows calls are late or unanswered, per "
            "window (1 spends the budget exactly over the period). RtguardErrorBudgetFastBurn "
            "pages at 14.4x over 1 h and 5 m, or 6x over 6 h and 30 m; "
            "RtguardErrorBudgetSlowBurn opens a ticket at 3x over 1 d and 2 h, or 1x over "
            "3 d and 6 h.",
            "short",
            [
                target(f"{ratio(window)} / {budget}", window, chr(ord("A") + i))
                for i, window in enumerate(("5m", "1h", "6h", "1d", "3d"))
            ],
            (12, y + 1, 12, 8),
            thresholds=[{"color": "green", "value": None}]
            + [{"color": "red", "value": rate} for rate in burn_lines],
        ),
    ]


def query_variable(name: str, label: str, query: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,  # on time range change
        "multi": True,
        "includeAll": True,
        "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
        "regex": "",
    }


def dashboard(slo: Slo) -> Json:
    build_info = n.METRIC_BUILD_INFO
    return {
        "uid": UID,
        "title": "rtguard",
        "description": "rtguard realtime tool calls: outcomes, latency, calls waiting for or "
        "ending without output, retries, swallowed and protocol errors.",
        "tags": ["rtguard", "gen_ai", "realtime"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "",
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                query_variable("job", "Job", f"label_values({build_info}, job)"),
                query_variable(
                    "instance", "Instance", f'label_values({build_info}{{job=~"$job"}}, instance)'
                ),
                query_variable(
                    "tool",
                    "Tool",
                    f'label_values({n.METRIC_TOOL_CALLS}{{job=~"$job", instance=~"$instance"}}'
                    f", {TOOL_LABEL})",
                ),
            ]
        },
        "panels": panels(slo),
    }


def render(slo: Slo | None = None) -> str:
    return json.dumps(dashboard(slo or Slo()), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a file is not current")
    parser.add_argument("--slo-seconds", type=float, default=Slo.seconds)
    parser.add_argument("--slo-objective", type=float, default=Slo.objective)
    parser.add_argument("--output-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    try:
        slo = Slo(args.slo_seconds, args.slo_objective)
    except ValueError as exc:
        parser.error(str(exc))
    outputs = {
        args.output_dir / OUTPUT.name: render(slo),
        args.output_dir / SLO_OUTPUT.name: render_slo(slo),
    }
    if args.check:
        stale = [
            path for path, text in outputs.items() if not path.exists() or path.read_text() != text
        ]
        for path in stale:
            print(f"{path} is out of date: run python dashboards/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
