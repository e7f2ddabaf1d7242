"""Telemetry after scripted runs: span trees, exact metric samples against the simulator's
ground truth, exemplars, OTLP export to a real receiver, log correlation, bounded labels."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from pathlib import Path

from opentelemetry import trace
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_text

from conftest import Run, run_scenario
from otlp_receiver import OtlpReceiver
from rtguard import Agent, OutputAcknowledged, RetryPolicy, SessionConfig, function_tool
from rtguard.simulator import CallSpec, Faults, Scenario
from rtguard.telemetry import RtguardMetrics, TraceContextFilter, start_metrics_server

SEEN_SPANS: list[int] = []
HISTOGRAMS = ("gen_ai_execute_tool_duration_seconds", "rtguard_output_latency_seconds")
LOG_RECORDS: list[logging.LogRecord] = []


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        LOG_RECORDS.append(record)


app_log = logging.getLogger("tests.app")
_handler = _Keep()
_handler.addFilter(TraceContextFilter())
app_log.addHandler(_handler)
app_log.setLevel(logging.INFO)


@function_tool
async def traced(n: int) -> str:
    """Records the span that is current inside the tool."""
    SEEN_SPANS.append(trace.get_current_span().get_span_context().span_id)
    app_log.info("working on %d", n)
    return str(n)


@function_tool(timeout=0.02)
async def sometimes(kind: str) -> str:
    if kind == "raise":
        raise KeyError(kind)
    if kind == "slow":
        await asyncio.sleep(1)
    return kind


agent = Agent(name="observed", tools=[traced, sometimes])


async def test_span_tree_per_response() -> None:
    SEEN_SPANS.clear()
    calls = tuple(CallSpec("traced", f'{{"n": {i}}}') for i in range(4))
    run = await run_scenario(Scenario(calls=calls, calls_per_response=2), agent)
    responses = {s.context.span_id: s for s in run.spans if s.name == "realtime_inference"}
    tools = run.spans_named("execute_tool")
    assert len(tools) == 4
    by_parent = Counter(s.parent.span_id for s in tools if s.parent)
    assert set(by_parent) <= set(responses)
    assert sorted(by_parent.values()) == [2, 2]  # two calls under each response span
    for response in responses.values():
        attributes = response.attributes or {}
        assert attributes["gen_ai.operation.name"] == "realtime_inference"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.realtime_session.id"] == "sess_sim1"
        assert response.kind is trace.SpanKind.CLIENT
    for span in tools:
        assert span.kind is trace.SpanKind.INTERNAL
        assert span.name == "execute_tool traced"
        assert (span.attributes or {})["gen_ai.realtime_session.id"] == "sess_sim1"
        assert str((span.attributes or {})["gen_ai.tool.description"]).startswith("Records")
        assert "gen_ai.tool.call.arguments" not in (span.attributes or {})
        assert "gen_ai.tool.call.result" not in (span.attributes or {})
    # The tool ran with its own execute_tool span current: its spans and logs nest under it.
    assert sorted(SEEN_SPANS) == sorted(s.context.span_id for s in tools)
    trace_ids = {format(s.context.trace_id, "032x") for s in tools}
    assert {r.trace_id for r in LOG_RECORDS[-4:]} <= trace_ids  # type: ignore[attr-defined]


async def test_content_capture_is_opt_in() -> None:
    from conftest import make_telemetry

    registry = CollectorRegistry()
    telemetry, exporter = make_telemetry(registry)
    telemetry.capture_content = True
    from rtguard import RealtimeSession
    from rtguard.simulator import Simulator

    scenario = Scenario(calls=(CallSpec("traced", '{"n": 7}'),))
    async with (
        Simulator(scenario) as sim,
        RealtimeSession(agent, url=sim.url, telemetry=telemetry) as session,
    ):
        async for event in session:
            if isinstance(event, OutputAcknowledged):
                break
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("execute_tool")]
    assert (span.attributes or {})["gen_ai.tool.call.arguments"] == '{"n": 7}'
    assert (span.attributes or {})["gen_ai.tool.call.result"] == "7"


async def test_metric_samples_equal_the_simulators_ground_truth() -> None:
    kinds = ["ok"] * 9 + ["raise"] * 4 + ["slow"] * 3
    calls = [CallSpec("sometimes", f'{{"kind": "{k}"}}') for k in kinds]
    calls += [CallSpec("invented_tool")] * 2 + [CallSpec("sometimes", "{bad")] * 2
    refused = frozenset({0, 5, 13})
    run = await run_scenario(
        Scenario(
            calls=tuple(calls),
            calls_per_response=2,
            faults=Faults(reject_output=refused, reject_type="server_error"),
        ),
        agent,
        config=SessionConfig(retry=RetryPolicy(initial_backoff=0.001)),
    )
    run.sim.assert_invariant()
    truth: Counter[str] = Counter()
    for record in run.sim.calls.values():
        text = record.outputs[0]
        if record.name == "invented_tool":
            truth["unknown_tool"] += 1
        elif "invalid arguments" in text or "not valid JSON" in text:
            truth["invalid_arguments"] += 1
        elif "timed out" in text:
            truth["timeout"] += 1
        elif "failed with KeyError" in text:
            truth["error"] += 1
        else:
            truth["success"] += 1
    assert truth == {
        "success": 9,
        "error": 4,
        "timeout": 3,
        "unknown_tool": 2,
        "invalid_arguments": 2,
    }
    for outcome, count in truth.items():
        label = "_unknown" if outcome == "unknown_tool" else "sometimes"
        assert (
            run.sample("rtguard_tool_calls_total", gen_ai_tool_name=label, outcome=outcome) == count
        )
    refusals = sum(r.refused_outputs for r in run.sim.calls.values())
    assert refusals == 3
    assert run.sample("rtguard_output_sends_total", result="sent") == len(calls) + refusals
    assert run.sample("rtguard_output_sends_total", result="failed") == 0
    assert run.sample("rtguard_output_send_retries_total") == refusals
    assert run.sample("rtguard_protocol_errors_total", kind="server_error") == refusals
    assert run.sample("rtguard_output_latency_seconds_count", gen_ai_tool_name="sometimes") == 18
    assert (
        run.sample(
            "gen_ai_execute_tool_duration_seconds_count",
            gen_ai_tool_name="sometimes",
            error_type="KeyError",
        )
        == 4
    )
    assert (
        run.sample(
            "gen_ai_execute_tool_duration_seconds_count",
            gen_ai_tool_name="sometimes",
            error_type="timeout",
        )
        == 3
    )
    assert run.sample("rtguard_calls_awaiting_output") == 0
    assert run.sample("rtguard_oldest_call_awaiting_output_age_seconds") == 0
    assert run.sample("rtguard_active_sessions") == 0
    assert run.sample("rtguard_build_info", version="0.1.0") == 1
    for reason in ("connection_lost", "session_closed", "retries_exhausted", "rejected_by_server"):
        assert (
            run.registry.get_sample_value("rtguard_calls_without_output_total", {"reason": reason})
            == 0
        )


async def test_waiting_gauges_grow_while_a_call_is_stuck() -> None:
    from conftest import make_telemetry
    from rtguard import RealtimeSession
    from rtguard.simulator import Simulator

    @function_tool
    async def stuck() -> str:
        await asyncio.sleep(30)
        return "x"

    registry = CollectorRegistry()
    telemetry, _ = make_telemetry(registry)
    async with Simulator(Scenario(calls=(CallSpec("stuck"),))) as sim:
        session = RealtimeSession(
            Agent(name="s", tools=[stuck]),
            url=sim.url,
            telemetry=telemetry,
            config=SessionConfig(close_timeout=0.01),
        )
        async with session:
            while not sim.calls:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            first = registry.get_sample_value("rtguard_oldest_call_awaiting_output_age_seconds")
            await asyncio.sleep(0.1)
            second = registry.get_sample_value("rtguard_oldest_call_awaiting_output_age_seconds")
            assert registry.get_sample_value("rtguard_calls_awaiting_output") == 1
            # the agent's tools have their series from the start, so rate() sees the first call
            zero = {"gen_ai_tool_name": "stuck", "outcome": "success"}
            assert registry.get_sample_value("rtguard_tool_calls_total", zero) == 0
            assert registry.get_sample_value("rtguard_active_sessions") == 1
    assert first is not None
    assert second is not None
    assert 0 < first < second
    assert (
        registry.get_sample_value(
            "rtguard_calls_without_output_total", {"reason": "session_closed"}
        )
        == 1
    )


async def test_histograms_carry_exemplars_in_openmetrics() -> None:
    run = await run_scenario(Scenario(calls=(CallSpec("traced", '{"n": 1}'),)), agent)
    server, thread = start_metrics_server(0, registry=run.registry)
    try:
        port = server.server_port
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        body = await asyncio.to_thread(_fetch, request)
    finally:
        server.shutdown()
        thread.join(5)
    (tool_span,) = run.spans_named("execute_tool")
    trace_id = format(tool_span.context.trace_id, "032x")
    exemplars = [
        sample.exemplar
        for family in text_string_to_metric_families(body)  # type: ignore[no-untyped-call]
        for sample in family.samples
        if sample.exemplar is not None
        and family.name
        in ("gen_ai_execute_tool_duration_seconds", "rtguard_output_latency_seconds")
    ]
    assert len(exemplars) == 2
    assert {e.labels["trace_id"] for e in exemplars} == {trace_id}


def _fetch(request: urllib.request.Request) -> str:
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def test_metrics_server_binds_loopback_by_default() -> None:
    registry = CollectorRegistry()
    RtguardMetrics(registry)
    server, thread = start_metrics_server(0, registry=registry)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        thread.join(5)


async def test_invented_tool_names_do_not_grow_the_series() -> None:
    def series(run: Run) -> int:
        return sum(len(family.samples) for family in run.registry.collect())

    one = await run_scenario(Scenario(calls=(CallSpec("made_up"),)), agent)
    calls = tuple(CallSpec(f"made_up_{i}") for i in range(10_000))
    many = await run_scenario(
        Scenario(calls=calls, calls_per_response=10, max_in_flight=200), agent, timeout=60
    )
    many.sim.assert_invariant()
    assert (
        many.sample("rtguard_tool_calls_total", gen_ai_tool_name="_unknown", outcome="unknown_tool")
        == 10_000
    )
    assert series(many) == series(one)
    names = {s.name for s in many.spans_named("execute_tool")}
    assert names == {"execute_tool"}


def test_configure_exports_over_otlp_grpc_from_the_environment() -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from opentelemetry import trace
        from rtguard import Agent, OutputAcknowledged, RealtimeSession, function_tool
        from rtguard.simulator import CallSpec, Scenario, Simulator
        from rtguard.telemetry import configure

        provider = configure()

        @function_tool
        async def child_span() -> str:
            with trace.get_tracer("app").start_as_current_span("db.query"):
                return "ok"

        async def main() -> None:
            async with Simulator(Scenario(calls=(CallSpec("child_span"),) * 2)) as sim:
                agent = Agent(name="a", tools=[child_span])
                async with RealtimeSession(agent, url=sim.url) as session:
                    acked = 0
                    async for event in session:
                        acked += isinstance(event, OutputAcknowledged)
                        if acked == 2:
                            break

        asyncio.run(main())
        provider.shutdown()
        """
    )
    with OtlpReceiver() as receiver:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{receiver.endpoint}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SERVICE_NAME": "rtguard-otlp-test",
        }
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
        deadline = time.monotonic() + 10
        while len(receiver.spans) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        spans = list(receiver.spans)
    by_id = {s.span_id: s for s in spans}
    assert {s.service_name for s in spans} == {"rtguard-otlp-test"}
    tools = [s for s in spans if s.name == "execute_tool child_span"]
    queries = [s for s in spans if s.name == "db.query"]
    sends = [s for s in spans if s.name == "rtguard.send_output"]
    assert len(tools) == len(queries) == len(sends) == 2
    for child in queries + sends:
        parent = by_id[child.parent_span_id]
        assert parent.name == "execute_tool child_span"
        assert parent.trace_id == child.trace_id
    for tool in tools:
        assert by_id[tool.parent_span_id].name == "realtime_inference"
        assert tool.attributes["gen_ai.tool.call.id"].startswith("call_sim")


def test_multiprocess_mode_aggregates_worker_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    worker = [sys.executable, str(Path(__file__).with_name("mp_worker.py"))]
    subprocess.run([*worker, "done"], env=env, check=True, timeout=60)
    subprocess.run([*worker, "done"], env=env, check=True, timeout=60)
    stuck = subprocess.Popen(
        [*worker, "stuck"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert stuck.stdout is not None
        assert stuck.stdout.readline().strip() == b"ready"
        scrape = textwrap.dedent(
            """
            import urllib.request
            from rtguard.telemetry import start_metrics_server
            server, thread = start_metrics_server(0)
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            print(urllib.request.urlopen(url, timeout=5).read().decode())
            """
        )
        body = subprocess.run(
            [sys.executable, "-c", scrape],
            env=env,
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        assert stuck.stdin is not None
        stuck.stdin.close()
        stuck.wait(30)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in prometheus_text(body)
        for s in family.samples
    }
    calls = ("rtguard_tool_calls_total", (("gen_ai_tool_name", "quick"), ("outcome", "success")))
    assert samples[calls] == 6  # three from each finished worker
    assert samples[("rtguard_calls_awaiting_output", ())] == 1  # the stuck worker's call
    assert samples[("rtguard_oldest_call_awaiting_output_age_seconds", ())] > 0
