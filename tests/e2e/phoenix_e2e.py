"""rtguard's traces in a real trace UI: Arize Phoenix, read back through its REST API.

``make e2e`` runs this with rtguard's own venv; Phoenix runs from its own (``PHOENIX``, the
``phoenix`` program of .venv-e2e). Everything stays on 127.0.0.1: Phoenix's UI, REST API and
OTLP/HTTP receiver share one loopback port, and spans go there over HTTP (its gRPC port binds
every address whatever it is told, so nothing is sent to it). Every wait is bounded, and
Phoenix is stopped by its pid on the way out, whatever happened.

The scenario is the demo's mix of failures (tools that raise and time out, a failed handoff,
an invented tool, invalid JSON, outputs the server refuses once) plus a session whose
connection drops while a tool runs, so one call ends without an output. The checks: span
names, parent links, every child inside its parent's time, ERROR status on failed and
incomplete calls and on their turn (the trace's root), the conventions' attributes, and a
screenshot of a failed turn's trace taken with headless Chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

PROJECT = "rtguard-e2e"
STARTUP_TIMEOUT = 180.0  # Phoenix migrates its database on first start
READ_TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parents[2]

Span = dict[str, Any]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--phoenix", required=True, help="the phoenix program to run")
    parser.add_argument(
        "--screenshot", type=Path, default=ROOT / "docs" / "phoenix-failed-turn.png"
    )
    args = parser.parse_args()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="rtguard-phoenix-") as tmp,
        phoenix(args.phoenix, Path(tmp)) as url,
    ):
        print(f"phoenix up at {url} after {time.monotonic() - started:.1f} s", flush=True)
        expected = run_scenario(url)
        spans = read_spans(url, expected)
        failed_trace = check(spans)
        screenshot(f"{url}/redirects/traces/{failed_trace}", args.screenshot, Path(tmp))
    print(f"make e2e: all checks passed in {time.monotonic() - started:.1f} s", flush=True)
    return 0


# --- Phoenix ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def phoenix(program: str, workdir: Path) -> Iterator[str]:
    """``phoenix serve`` on loopback ports, its data in ``workdir``; stopped by its pid."""
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = (workdir / "phoenix.log").open("wb")
    process = subprocess.Popen(
        [os.path.abspath(program), "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: process.poll() is None and http_status(f"{url}/healthz") == 200,
            STARTUP_TIMEOUT,
            "phoenix to serve /healthz",
            give_up=lambda: process.poll() is not None,
        )
        yield url
    except BaseException:
        sys.stderr.write((workdir / "phoenix.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    give_up: Callable[[], bool] = lambda: False,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if give_up():
            raise AssertionError(f"gave up waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


# --- the scenario ----------------------------------------------------------------------------


def run_scenario(url: str) -> int:
    """Run the sessions with rtguard.telemetry.configure() exporting to Phoenix; returns the
    number of spans exported (the export report must say every one arrived)."""
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=url,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_LOGS_EXPORTER="none",  # Phoenix takes no OTLP logs (its /v1/logs answers 405)
        OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={PROJECT}",
    )
    from rtguard.telemetry import Telemetry, configure

    export = configure(service_name="rtguard-e2e")
    asyncio.run(sessions(Telemetry()))
    report = export.shutdown(timeout=20)
    print(f"export: {report}", flush=True)
    assert report.ok, report
    return report.exported


async def sessions(telemetry: Any) -> None:
    from rtguard import (
        Agent,
        CallIncomplete,
        OutputAcknowledged,
        RealtimeSession,
        SessionConfig,
        ToolApprovalRequested,
        function_tool,
    )
    from rtguard.demo import demo_agent, demo_scenario
    from rtguard.simulator import CallSpec, Faults, Scenario, Simulator

    async def run(
        agent: Agent, scenario: Scenario, until: int, config: SessionConfig | None = None
    ) -> None:
        async with (
            Simulator(scenario) as sim,
            RealtimeSession(agent, url=sim.url, telemetry=telemetry, config=config) as session,
        ):
            settled = 0
            async with asyncio.timeout(60):
                async for event in session:
                    if isinstance(event, ToolApprovalRequested):
                        decide(session, event)
                    settled += isinstance(event, OutputAcknowledged | CallIncomplete)
                    if settled >= until:
                        break

    def decide(session: RealtimeSession, request: ToolApprovalRequested) -> None:
        """The demo app's policy for refunds: small ones go through, large ones are refused."""
        if request.arguments.get("amount", 0) <= 100:
            session.approve(request.call_id)
        else:
            session.reject(request.call_id, "refunds over 100 need a person")

    calls = 200  # the demo's default mix: every failure kind occurs
    await run(demo_agent(), demo_scenario(calls=calls, rate=100.0), calls)

    @function_tool
    async def crawl_site(url: str) -> str:
        """Crawl a site (takes longer than the connection lasts)."""
        await asyncio.sleep(10)
        return "crawled"

    crawler = Agent(name="crawler", instructions="Crawl.", tools=[crawl_site])
    cut = Scenario(
        calls=(CallSpec("crawl_site", '{"url": "https://example.com"}'),),
        faults=Faults(drop_connection_after=frozenset({0})),
    )
    await run(crawler, cut, 1, SessionConfig(reconnect=None))  # the call is not carried


# --- reading the traces back -------------------------------------------------------------------


def read_spans(url: str, expected: int) -> list[Span]:
    """Every span of the project through Phoenix's REST API (paged), once all have arrived."""
    spans: list[Span] = []

    def all_arrived() -> bool:
        spans[:] = list(pages(url))
        return len(spans) >= expected

    wait_until(all_arrived, READ_TIMEOUT, f"{expected} spans in Phoenix")
    print(f"read {len(spans)} spans back from Phoenix's REST API", flush=True)
    return spans


def pages(url: str) -> Iterator[Span]:
    cursor: str | None = None
    while True:
        query = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        try:
            page = get_json(f"{url}/v1/projects/{PROJECT}/spans?{urllib.parse.urlencode(query)}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # the project appears with its first ingested span
                return
            raise
        yield from page["data"]
        cursor = page.get("next_cursor")
        if not cursor:
            return


def check(spans: list[Span]) -> str:
    """Assert the trace shape; returns the id of a failed turn's trace (for the screenshot)."""
    by_id = {s["context"]["span_id"]: s for s in spans}
    names = Counter(name_kind(s["name"]) for s in spans)
    print(f"span names: {dict(names)}", flush=True)
    assert set(names) == {
        "invoke_agent",
        "realtime_inference",
        "execute_tool",
        "rtguard.send_output",
    }
    roots = [s for s in spans if s["parent_id"] is None]
    assert all(r["name"].startswith("invoke_agent ") for r in roots), "every root is a turn"
    for span in spans:
        attributes = span["attributes"]
        parent = by_id.get(span["parent_id"]) if span["parent_id"] else None
        if span["parent_id"] is not None:
            assert parent is not None, f"{span['name']}: its parent never arrived"
            assert parent["context"]["trace_id"] == span["context"]["trace_id"]
            assert when(parent["start_time"]) <= when(span["start_time"]), span["name"]
            assert when(span["end_time"]) <= when(parent["end_time"]), span["name"]
        kind = name_kind(span["name"])
        if kind == "rtguard.send_output":
            assert parent is not None
            assert parent["name"].startswith("execute_tool")
        elif kind != "invoke_agent":
            assert parent is not None
            assert parent["name"].startswith("invoke_agent")
        if kind != "rtguard.send_output":
            assert attributes["gen_ai.operation.name"] == kind, span["name"]
            assert attributes["gen_ai.realtime_session.id"].startswith("sess_")
        if "error.type" in attributes:
            assert span["status_code"] == "ERROR", span["name"]
    calls = [s for s in spans if name_kind(s["name"]) == "execute_tool"]
    failed = [c for c in calls if "error.type" in c["attributes"]]
    assert failed, "the demo's failures"
    for call in calls:
        attributes = call["attributes"]
        assert attributes["gen_ai.tool.call.id"].startswith("call_sim")
        assert attributes["rtguard.call.outcome"]
        turn = by_id[call["parent_id"]]
        if call in failed:
            assert turn["status_code"] == "ERROR", "a failed call makes its turn an error"
            assert turn["attributes"]["error.type"]
    error_types = Counter(c["attributes"]["error.type"] for c in failed)
    print(f"failed calls by error.type: {dict(error_types)}", flush=True)
    assert {"timeout", "unknown_tool", "invalid_arguments", "handoff_failed", "rejected"} <= set(
        error_types
    )
    (cut_off,) = [c for c in calls if c["attributes"].get("rtguard.call.incomplete_reason")]
    assert cut_off["attributes"]["error.type"] == "connection_lost"
    assert cut_off["attributes"]["rtguard.call.outcome"] == "cancelled"
    assert cut_off["attributes"]["rtguard.call.output_delivered"] is False
    (exception,) = cut_off["events"]
    assert exception["name"] == "exception"
    assert exception["attributes"]["exception.type"] == "ConnectionLostError"
    cut_turn = by_id[cut_off["parent_id"]]
    assert cut_turn["status_code"] == "ERROR"
    assert cut_turn["attributes"]["gen_ai.agent.invocation.end_reason"] == "session_closed"
    refused = [
        s
        for s in spans
        if name_kind(s["name"]) == "rtguard.send_output"
        and s["attributes"]["rtguard.send.result"] == "refused"
    ]
    assert refused, "the demo's refused outputs"
    for attempt in refused:
        assert attempt["status_code"] == "ERROR"
        assert attempt["attributes"]["error.type"] == "invalid_value"  # the server's code
    handoffs = [c for c in calls if "gen_ai.agent.handoff.source.name" in c["attributes"]]
    assert any("gen_ai.agent.handoff.target.name" in c["attributes"] for c in handoffs)
    healthy = [r for r in roots if r["status_code"] != "ERROR"]
    assert healthy, "turns without failures stay unset"
    print(
        f"{len(roots)} turns, {len(roots) - len(healthy)} failed; {len(calls)} calls, "
        f"{len(failed)} failed, 1 cut off; {len(refused)} refused attempts",
        flush=True,
    )
    # The screenshot shows a failed turn with more than one kind of child.
    return str(turn_to_show(roots, calls)["context"]["trace_id"])


def turn_to_show(roots: list[Span], calls: list[Span]) -> Span:
    failed_turns = {c["parent_id"] for c in calls if "error.type" in c["attributes"]}
    candidates = [
        r
        for r in roots
        if r["context"]["span_id"] in failed_turns
        and r["attributes"].get("gen_ai.agent.invocation.end_reason") == "completed"
        and sum(c["parent_id"] == r["context"]["span_id"] for c in calls) >= 2
    ]
    return candidates[0] if candidates else next(r for r in roots if r["status_code"] == "ERROR")


def name_kind(name: str) -> str:
    return name.split(" ", 1)[0]


def when(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


# --- the screenshot ----------------------------------------------------------------------------


def screenshot(url: str, output: Path, tmp: Path) -> None:
    """Phoenix's page for the trace, by headless Chromium with a fresh profile."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (make e2e installs it with apt-get)"
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1600,1000",
        "--virtual-time-budget=15000",  # let the single-page app load the trace
        f"--screenshot={output}",
        url,
    ]
    subprocess.run(command, check=True, timeout=90, capture_output=True)
    size = output.stat().st_size
    assert size > 20_000, f"{output} is only {size} bytes: a blank page?"
    print(f"screenshot of {url}: {output} ({size} bytes)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
