"""The shipped alert rules end to end: rtguard's metrics endpoint, the real Prometheus loading
dashboards/alerts.yml and the SLO's dashboards/slo.yml through dashboards/prometheus.yml, the
real Alertmanager routing with dashboards/alertmanager.yml, and a webhook receiver in the test.
All on 127.0.0.1, with short intervals; every process is stopped on the way out."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from promstack import ALERTS, SLO_RULES, Stack, run_session, stack, wait_until
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
        loaded = [yaml.safe_load(path.read_text()) for path in (ALERTS, SLO_RULES)]
        assert len(rules) == sum(len(g["rules"]) for doc in loaded for g in doc["groups"])
        records = [rule for rule in rules if rule["type"] == "recording"]
        assert len(records) == 8
        # Every call was answered within 2.5 s: no window counts a bad call (a ratio is 0, or
        # NaN where the series were born with this run and rate() saw no increase yet).
        for record in records:
            (sample,) = s.query(record["name"])
            assert not float(sample["value"][1]) > 0, record["name"]
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

    with stack(tmp_path, rules=(fast_rules, SLO_RULES)) as s:
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


@function_tool
async def sluggish() -> str:
    """Answers, but later than a 25 ms objective."""
    await asyncio.sleep(0.06)
    return "late"


def test_late_calls_burn_the_error_budget_and_page(tmp_path: Path) -> None:
    """The SLO end to end: an objective of 25 ms (generated with the generator's own flags,
    a bucket of the latency histogram), calls that take 60 ms, the recorded error ratio in
    the real Prometheus, and the fast-burn page at the webhook. The only change to the
    generated rules is `for: 2m` -> `for: 0s`, so the test does not wait two minutes."""
    from test_dashboards import load_generator

    generated = tmp_path / "generated"
    generated.mkdir()
    generator = load_generator()
    assert generator.main(["--slo-seconds", "0.025", "--output-dir", str(generated)]) == 0
    text = (generated / "slo.yml").read_text()
    assert text.count("for: 2m") == 1
    fast_rules = tmp_path / "slo.yml"
    fast_rules.write_text(text.replace("for: 2m", "for: 0s"))

    with stack(tmp_path, rules=(ALERTS, fast_rules)) as s:
        s.wait_for_target_up()
        slow_agent = Agent(name="ops", instructions="Operate.", tools=[lookup, sluggish])
        # rate() needs each series scraped before the calls it counts: the first session
        # creates the agent's series, as a running process has them.
        asyncio.run(run_session(Scenario(calls=lookups(1)), slow_agent, s.telemetry))
        s.wait_for_scrapes(2)
        calls = (CallSpec("lookup", '{"key": "x"}'), *(CallSpec("sluggish") for _ in range(6)))
        asyncio.run(run_session(Scenario(calls=calls), slow_agent, s.telemetry))
        wait_until(
            lambda: bool(delivered(s, "RtguardErrorBudgetFastBurn")),
            20,
            "RtguardErrorBudgetFastBurn at the webhook",
        )
        (alert, *_) = delivered(s, "RtguardErrorBudgetFastBurn")
        assert alert["status"] == "firing"
        assert alert["labels"] == {
            "alertname": "RtguardErrorBudgetFastBurn",
            "severity": "critical",
            "job": "rtguard",
        }
        assert alert["annotations"]["runbook_url"] == RUNBOOK + "rtguarderrorbudgetfastburn"
        assert "not answered within 0.025 s" in alert["annotations"]["description"]
        (ratio,) = s.query("job:rtguard_calls_answered_slo_errors:ratio_rate5m")
        # Six of the seven calls of the second run were late, and the first run's one call was
        # on time; rate() extrapolates at the window's edges, so the ratio lies between.
        assert 6 / 8 - 0.05 < float(ratio["value"][1]) < 6 / 7 + 0.05
