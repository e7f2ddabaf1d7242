"""The shipped alert rules end to end: rtguard's metrics endpoint, the real Prometheus loading
dashboards/alerts.yml through dashboards/prometheus.yml, the real Alertmanager routing with
dashboards/alertmanager.yml, and a webhook receiver in the test. All on 127.0.0.1, with
short intervals; every process is stopped on the way out."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from promstack import ALERTS, Stack, run_session, stack, wait_until
from rtguard import (
    Agent,
    CallIncomplete,
    IncompleteReason,
    RetryPolicy,
    SessionConfig,
    function_tool,
)
from rtguard.simulator import CallSpec, Faults, Scenario

RUNBOOK = "https://github.com/rtguard/rtguard/blob/main/docs/operations.md#"


@function_tool
async def lookup(key: str) -> dict[str, str]:
    """Look a key up."""
    return {"key": key, "value": key.upper()}


RELEASE: list[asyncio.Event] = []


@function_tool
async def hang() -> str:
    """Runs until the test releases it."""
    await asyncio.wait_for(RELEASE[-1].wait(), 30)
    return "released"


agent = Agent(name="ops", instructions="Operate.", tools=[lookup, hang])


def lookups(count: int) -> tuple[CallSpec, ...]:
    return tuple(CallSpec("lookup", f'{{"key": "k{i}"}}') for i in range(count))


def timestamp(rfc3339: str) -> float:
    """Prometheus' RFC 3339 times carry nanoseconds; datetime takes microseconds."""
    trimmed = re.sub(r"(\.\d{6})\d*", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


def delivered(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    return [a for a in stack.webhook.alerts() if a["labels"]["alertname"] == alertname]


def test_call_without_output_alert_reaches_the_webhook(tmp_path: Path) -> None:
    with stack(tmp_path) as s:
        s.wait_for_target_up()
        scenario = Scenario(
            calls=lookups(3),
            faults=Faults(reject_output=frozenset({1}), reject_type="server_error"),
        )
        config = SessionConfig(retry=RetryPolicy(max_attempts=1))
        run = asyncio.run(run_session(scenario, agent, s.telemetry, config=config))
        (incomplete,) = [e for e in run.events if isinstance(e, CallIncomplete)]
        assert incomplete.reason is IncompleteReason.REJECTED_BY_SERVER

        wait_until(
            lambda: bool(delivered(s, "RtguardCallWithoutOutput")),
            15,
            "RtguardCallWithoutOutput at the webhook",
        )
        (alert, *_) = delivered(s, "RtguardCallWithoutOutput")
        assert alert["status"] == "firing"
        assert alert["labels"] == {
            "alertname": "RtguardCallWithoutOutput",
            "severity": "critical",
            "job": "rtguard",
            "instance": f"127.0.0.1:{s.metrics_port}",
            "reason": "rejected_by_server",
        }
        annotations = alert["annotations"]
        assert annotations["summary"] == "A tool call ended without an output the model can see."
        assert "reason rejected_by_server" in annotations["description"]
        assert annotations["runbook_url"] == RUNBOOK + "rtguardcallwithoutoutput"
        # Only that call: the other reasons stay silent, and info alerts are not paged.
        reasons = {a["labels"]["reason"] for a in delivered(s, "RtguardCallWithoutOutput")}
        assert reasons == {"rejected_by_server"}
        assert all(a["labels"]["severity"] != "info" for a in s.webhook.alerts())


def test_healthy_run_raises_no_alert(tmp_path: Path) -> None:
    with stack(tmp_path) as s:
        s.wait_for_target_up()
        asyncio.run(run_session(Scenario(calls=lookups(20)), agent, s.telemetry))
        finished = time.time()
        s.wait_for_scrapes(4)

        def evaluated_since_run() -> bool:
            groups = s.rules()
            return all(
                timestamp(rule["lastEvaluation"]) > finished for g in groups for rule in g["rules"]
            )

        wait_until(evaluated_since_run, 10, "every rule evaluated after the run")
        rules = [rule for g in s.rules() for rule in g["rules"]]
        assert len(rules) == 10
        assert all(rule["health"] == "ok" for rule in rules), rules
        assert s.query('sum(rtguard_tool_calls_total{outcome="success"})')[0]["value"][1] == "20"
        assert s.prometheus_alerts() == []
        assert s.webhook.alerts() == []


def test_a_stuck_call_fires_the_waiting_alert(tmp_path: Path) -> None:
    """The scrape-time age gauge grows while a call hangs; with the threshold lowered from
    60 s to 1 s (the only change to the shipped rule) the alert reaches the webhook."""
    rules = yaml.safe_load(ALERTS.read_text())
    (rule,) = [
        r
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("alert") == "RtguardCallAwaitingOutputTooLong"
    ]
    assert "> 60" in rule["expr"]
    rule["expr"] = rule["expr"].replace("> 60", "> 1")
    fast_rules = tmp_path / "alerts.yml"
    fast_rules.write_text(yaml.safe_dump(rules))

    async def scenario(s: Stack) -> None:
        RELEASE.append(asyncio.Event())
        task = asyncio.create_task(
            run_session(Scenario(calls=(CallSpec("hang"),)), agent, s.telemetry, timeout=30)
        )
        try:
            async with asyncio.timeout(20):
                while not delivered(s, "RtguardCallAwaitingOutputTooLong"):
                    await asyncio.sleep(0.1)
            # The call is still open while the alert fires.
            assert s.query("rtguard_calls_awaiting_output")[0]["value"][1] == "1"
        finally:
            RELEASE[-1].set()
            await task

    with stack(tmp_path, rules=fast_rules) as s:
        s.wait_for_target_up()
        asyncio.run(scenario(s))
        (alert, *_) = delivered(s, "RtguardCallAwaitingOutputTooLong")
        assert alert["labels"] == {
            "alertname": "RtguardCallAwaitingOutputTooLong",
            "severity": "critical",
            "job": "rtguard",
            "instance": f"127.0.0.1:{s.metrics_port}",
        }
        assert alert["annotations"]["runbook_url"] == RUNBOOK + "rtguardcallawaitingoutputtoolong"
