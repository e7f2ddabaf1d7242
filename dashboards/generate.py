"""Generate dashboards/rtguard.json, the Grafana dashboard for rtguard.

    .venv/bin/python dashboards/generate.py          # write rtguard.json
    .venv/bin/python dashboards/generate.py --check  # exit 1 if rtguard.json is not current

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
from pathlib import Path
from typing import Any

from rtguard.telemetry import _names as n

OUTPUT = Path(__file__).resolve().parent / "rtguard.json"

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


def panels() -> list[Json]:
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
    ]
    # The waiting panel plots seconds on the right axis.
    waiting = out[8]
    waiting["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byName", "options": "oldest age"},
            "properties": [
                {"id": "unit", "value": "s"},
                {"id": "custom.axisPlacement", "value": "right"},
            ],
        }
    ]
    for number, item in enumerate(out, start=1):
        item["id"] = number
    return out


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


def dashboard() -> Json:
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
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the file is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python dashboards/generate.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
