"""Telemetry after scripted runs: span trees, exact metric samples against the simulator's
ground truth, exemplars, OTLP export to a real receiver, log correlation, bounded labels."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler, SamplingResult
from opentelemetry.trace import StatusCode
from opentelemetry.util.types import Attributes
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_text

from conftest import Run, run_scenario
from otlp_receiver import OtlpReceiver
from rtguard import (
    Agent,
    CallIncomplete,
    OutputAcknowledged,
    RealtimeSession,
    RetryPolicy,
    SessionClosed,
    SessionConfig,
    ToolCallReceived,
    function_tool,
)
from rtguard._protocol import ResponseDone
from rtguard.simulator import CallSpec, Faults, FrameFault, Scenario
from rtguard.telemetry import RtguardMetrics, Telemetry, TraceContextFilter, start_metrics_server
from scripted_websocket import Peer, ScriptedWebSocket

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


def trees(spans: list[ReadableSpan]) -> dict[int, list[ReadableSpan]]:
    """The children of each turn (root) span, by the root's span id."""
    roots = {s.context.span_id for s in spans if s.parent is None}
    children: dict[int, list[ReadableSpan]] = {root: [] for root in roots}
    for span in spans:
        if span.parent is not None and span.parent.span_id in roots:
            children[span.parent.span_id].append(span)
    return children


def by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans}


def assert_contained(spans: list[ReadableSpan]) -> None:
    """Every child starts and ends within its parent, whatever its depth."""
    index = by_id(spans)
    for span in spans:
        parent = index.get(span.parent.span_id) if span.parent is not None else None
        if parent is not None:
            assert span.start_time is not None
            assert parent.start_time is not None
            assert span.end_time is not None
            assert parent.end_time is not None
            assert parent.start_time <= span.start_time, (parent.name, span.name)
            assert span.end_time <= parent.end_time, (parent.name, span.name)


def turn_of(run: Run, call_id: str) -> ReadableSpan:
    (call,) = [
        s for s in run.spans_named("execute_tool") if attrs(s)["gen_ai.tool.call.id"] == call_id
    ]
    assert call.parent is not None
    return by_id(run.spans)[call.parent.span_id]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def session_until(url: str, telemetry: Telemetry, until: type) -> None:
    """A session against the server at ``url`` until the app sees an ``until`` event."""
    async with RealtimeSession(agent, url=url, telemetry=telemetry) as session:
        async for event in session:
            if isinstance(event, until):
                return


async def one_call(telemetry: Telemetry, *, until: type) -> None:
    """One call of ``traced`` against the simulator, until the app sees an ``until`` event."""
    from rtguard.simulator import Simulator

    async with Simulator(Scenario(calls=(CallSpec("traced", '{"n": 7}'),))) as sim:
        await session_until(sim.url, telemetry, until)


async def test_one_trace_per_turn_with_its_generations_and_calls() -> None:
    """A turn (invoke_agent, the root) holds the response that issued its calls, the calls,
    and the model's answer to their outputs, all within its time."""
    SEEN_SPANS.clear()
    calls = tuple(CallSpec("traced", f'{{"n": {i}}}') for i in range(4))
    # Paced so that each turn is answered before the model starts the next one; closed once
    # the second answer is done (two responses with calls, two answers).
    run = await run_scenario(
        Scenario(calls=calls, calls_per_response=2, rate=10),
        agent,
        done=lambda r: len(r.of_type(ResponseDone)) >= 4,
    )
    assert_contained(run.spans)
    turns = {root: kids for root, kids in trees(run.spans).items() if kids}
    assert len(turns) == 2
    index = by_id(run.spans)
    for root, children in turns.items():
        turn = index[root]
        assert turn.name == "invoke_agent observed"
        assert turn.kind is trace.SpanKind.INTERNAL
        assert turn.status.status_code is StatusCode.UNSET
        assert attrs(turn) == {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": "openai",
            "gen_ai.agent.name": "observed",
            "gen_ai.realtime_session.id": "sess_sim1",
            "gen_ai.agent.invocation.end_reason": "completed",
        }
        tools = [s for s in children if s.name == "execute_tool traced"]
        generations = [s for s in children if s.name == "realtime_inference"]
        assert len(tools) == 2
        # the response that issued the two calls, then the answer to their outputs
        reasons = [attrs(g)["gen_ai.response.finish_reasons"] for g in generations]
        assert reasons == [("tool_call",), ("stop",)]
        for generation in generations:
            assert generation.kind is trace.SpanKind.CLIENT
            assert attrs(generation)["gen_ai.operation.name"] == "realtime_inference"
            assert attrs(generation)["gen_ai.provider.name"] == "openai"
            assert attrs(generation)["gen_ai.response.id"].startswith("resp_")
            assert attrs(generation)["gen_ai.usage.output_tokens"] > 0
        assert all(t.start_time >= generations[0].start_time for t in tools)  # type: ignore[operator]
        assert generations[1].start_time > min(t.end_time for t in tools) - 1  # type: ignore[operator,type-var]
        # The turn lasts from its first response until its last child ended.
        assert turn.start_time == generations[0].start_time
        assert turn.end_time == max(s.end_time for s in children)  # type: ignore[type-var]
    for span in run.spans_named("execute_tool"):
        assert span.kind is trace.SpanKind.INTERNAL
        assert attrs(span)["gen_ai.realtime_session.id"] == "sess_sim1"
        assert str(attrs(span)["gen_ai.tool.description"]).startswith("Records")
        assert attrs(span)["rtguard.call.outcome"] == "success"
        assert "gen_ai.tool.call.arguments" not in attrs(span)
        assert "gen_ai.tool.call.result" not in attrs(span)
    # The tool ran with its own execute_tool span current: its spans and logs nest under it.
    tools = run.spans_named("execute_tool")
    assert sorted(SEEN_SPANS) == sorted(s.context.span_id for s in tools)
    trace_ids = {format(s.context.trace_id, "032x") for s in tools}
    assert {r.trace_id for r in LOG_RECORDS[-4:]} <= trace_ids  # type: ignore[attr-defined]


async def test_a_failed_call_makes_its_turn_an_error_and_leaves_others_alone() -> None:
    calls = (
        CallSpec("sometimes", '{"kind": "ok"}'),
        CallSpec("sometimes", '{"kind": "raise"}'),
        CallSpec("sometimes", '{"kind": "ok"}'),
        CallSpec("sometimes", '{"kind": "ok"}'),
    )
    run = await run_scenario(Scenario(calls=calls, calls_per_response=2, rate=10), agent)
    assert_contained(run.spans)
    ids = sorted(run.sim.calls)
    failed_turn = turn_of(run, ids[0])
    assert turn_of(run, ids[1]) is failed_turn
    assert failed_turn.status.status_code is StatusCode.ERROR
    assert failed_turn.status.description == "1 of 2 tool calls failed"
    assert attrs(failed_turn)["error.type"] == "KeyError"
    healthy_turn = turn_of(run, ids[2])
    assert healthy_turn is not failed_turn
    assert healthy_turn.status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs(healthy_turn)


async def test_a_refused_output_is_an_error_attempt_with_the_servers_code() -> None:
    run = await run_scenario(
        Scenario(
            calls=(CallSpec("traced", '{"n": 1}'),),
            faults=Faults(
                reject_output=frozenset({0}), reject_type="server_error", reject_code="overloaded"
            ),
        ),
        agent,
        config=SessionConfig(retry=RetryPolicy(initial_backoff=0.001)),
    )
    (call,) = run.spans_named("execute_tool")
    refused, resent = sorted(
        run.spans_named("rtguard.send_output"), key=lambda s: attrs(s)["rtguard.send.attempt"]
    )
    assert attrs(refused)["rtguard.send.result"] == "refused"
    assert attrs(refused)["rtguard.send.will_retry"] is True
    assert attrs(refused)["error.type"] == "overloaded"
    assert refused.status.status_code is StatusCode.ERROR
    assert [e.name for e in refused.events] == ["exception"]
    assert refused.events[0].attributes["exception.type"] == "ServerRejectedError"  # type: ignore[index]
    assert attrs(resent)["rtguard.send.result"] == "sent"
    assert resent.status.status_code is StatusCode.UNSET
    assert [e.name for e in call.events] == ["rtguard.send_retry_scheduled"]
    assert call.status.status_code is StatusCode.UNSET  # the retry delivered it
    assert turn_of(run, attrs(call)["gen_ai.tool.call.id"]).status.status_code is StatusCode.UNSET


@function_tool
async def crawl() -> str:
    """Runs longer than the connection lasts."""
    await asyncio.sleep(5)
    return "crawled"


async def test_a_call_cut_off_by_a_lost_connection_has_an_outcome_and_the_exception() -> None:
    run = await run_scenario(
        Scenario(calls=(CallSpec("crawl"),), faults=Faults(drop_connection_after=frozenset({0}))),
        Agent(name="crawler", tools=[crawl]),
        config=SessionConfig(reconnect=None),  # the call is not carried to a new connection
        done=lambda r: any(isinstance(e, SessionClosed) for e in r.events),
    )
    assert_contained(run.spans)
    (call,) = run.spans_named("execute_tool")
    assert attrs(call)["rtguard.call.outcome"] == "cancelled"  # the tool never finished
    assert attrs(call)["rtguard.call.incomplete_reason"] == "connection_lost"
    assert attrs(call)["error.type"] == "connection_lost"
    assert call.status.status_code is StatusCode.ERROR
    (exception,) = call.events
    assert exception.name == "exception"
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "ConnectionLostError"
    assert exception.timestamp == call.end_time  # when the call was cut off
    turn = turn_of(run, attrs(call)["gen_ai.tool.call.id"])
    assert turn.status.status_code is StatusCode.ERROR
    assert attrs(turn)["gen_ai.agent.invocation.end_reason"] == "session_closed"
    assert run.sample("rtguard_calls_without_output_total", reason="connection_lost") == 1


async def test_a_handoff_names_its_source_and_target_on_the_call() -> None:
    billing = Agent(name="billing", tools=[traced])
    front = Agent(name="front", tools=[traced], handoffs=[billing])
    run = await run_scenario(Scenario(calls=(CallSpec("transfer_to_billing"),)), front)
    (call,) = run.spans_named("execute_tool")
    assert call.name == "execute_tool transfer_to_billing"
    assert attrs(call)["gen_ai.agent.handoff.source.name"] == "front"
    assert attrs(call)["gen_ai.agent.handoff.target.name"] == "billing"
    assert attrs(call)["gen_ai.agent.name"] == "front"  # the agent that issued the call
    assert not any(s.name.startswith("rtguard.handoff") for s in run.spans)
    assert run.sample("rtguard_handoffs_total", result="completed") == 1


async def test_session_start_and_end_are_events_with_the_session_id() -> None:
    from rtguard import RealtimeSession
    from rtguard.simulator import Simulator

    records = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    loggers = LoggerProvider()
    loggers.add_log_record_processor(SimpleLogRecordProcessor(records))
    telemetry = Telemetry(tracer_provider=TracerProvider(), logger_provider=loggers)
    config = SessionConfig(session_options={"model": "gpt-realtime"})
    async with Simulator(Scenario(calls=(CallSpec("traced", '{"n": 1}'),))) as sim:
        session = RealtimeSession(agent, url=sim.url, telemetry=telemetry, config=config)
        async with session:
            async for event in session:
                if isinstance(event, OutputAcknowledged):
                    break
    started, ended = (r.log_record for r in records.get_finished_logs())
    common = {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-realtime",
        "gen_ai.realtime_session.id": "sess_sim1",
    }
    assert started.event_name == "gen_ai.client.realtime_session.started"
    assert dict(started.attributes or {}) == common
    assert ended.event_name == "gen_ai.client.realtime_session.ended"
    assert dict(ended.attributes or {}) == common | {"rtguard.session.close_reason": "closed"}


async def test_content_capture_is_opt_in() -> None:
    from conftest import make_telemetry

    registry = CollectorRegistry()
    telemetry, exporter = make_telemetry(registry)
    telemetry.capture_content = True
    await one_call(telemetry, until=OutputAcknowledged)
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("execute_tool")]
    assert (span.attributes or {})["gen_ai.tool.call.arguments"] == '{"n": 7}'
    assert (span.attributes or {})["gen_ai.tool.call.result"] == "7"


class _SeenWhenMade(Sampler):
    """Samples everything; keeps the name and attributes each span had when it was made."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        self.seen.append((name, dict(attributes or {})))
        return ALWAYS_ON.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "seen when made"


async def test_a_sampler_sees_how_a_generation_ended() -> None:
    """A generation's span is made whole when the response ends (nothing nests under it, and
    no span is held while the model speaks), so an attribute-based sampler can keep
    generations by finish reason or token usage."""
    sampler = _SeenWhenMade()
    await one_call(Telemetry(tracer_provider=TracerProvider(sampler=sampler)), until=ResponseDone)
    (generation,) = [a for name, a in sampler.seen if name == "realtime_inference"]
    assert generation["gen_ai.response.finish_reasons"] == ["tool_call"]
    assert generation["gen_ai.usage.output_tokens"] > 0
    assert generation["gen_ai.response.id"].startswith("resp_")


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        ({"type": "server_error", "code": "model_overloaded"}, "model_overloaded"),
        ({"type": "server_error"}, "server_error"),
        ({}, "_OTHER"),
    ],
)
async def test_a_failed_response_is_an_error_generation_with_the_servers_code(
    error: dict[str, str], error_type: str
) -> None:
    """The simulator never fails a response, so a scripted server does: ``response.done``
    with status ``failed`` and the server's error in its ``status_details``."""

    async def script(peer: Peer) -> None:
        await peer.until("session.update")
        await peer.send("response.created", response={"id": "resp_1", "status": "in_progress"})
        details = {"type": "failed", "error": error}
        response = {"id": "resp_1", "status": "failed", "status_details": details, "output": []}
        await peer.send("response.done", response=response)
        await peer.drain()

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with ScriptedWebSocket(script) as server:
        await session_until(server.url, Telemetry(tracer_provider=provider), ResponseDone)
    spans = exporter.get_finished_spans()
    (generation,) = [span for span in spans if span.name == "realtime_inference"]
    assert generation.status.status_code is StatusCode.ERROR
    assert attrs(generation)["error.type"] == error_type
    assert attrs(generation)["gen_ai.response.finish_reasons"] == ("error",)
    assert attrs(generation)["gen_ai.response.id"] == "resp_1"


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
    # Every error the simulator sent: the refusals, and any response.create that raced a
    # response the server started on its own (refused as the real server does, then asked again).
    server_errors = refusals + run.sim.refused_response_creates
    assert run.sample("rtguard_protocol_errors_total", kind="server_error") == server_errors
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


SESSION_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from opentelemetry import trace
    from rtguard import Agent, OutputAcknowledged, RealtimeSession, function_tool
    from rtguard.simulator import CallSpec, Scenario, Simulator
    from rtguard.telemetry import configure

    export = configure(service_name="from-the-argument")

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
    report = export.shutdown(float(sys.argv[1]))
    print(report.exported, report.failed, report.timed_out, report.ok)
    print(report)
    """
)


def run_configured_session(
    endpoint: str, shutdown_timeout: float = 5.0, **env: str
) -> tuple[list[str], float]:
    """Run SESSION_SCRIPT in a fresh interpreter; its report lines and how long it took."""
    environment = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        **env,
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SESSION_SCRIPT, str(shutdown_timeout)],
        env=environment,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    return result.stdout.splitlines(), time.monotonic() - started


def test_configure_exports_spans_and_session_events_over_otlp_grpc() -> None:
    with OtlpReceiver() as receiver:
        lines, _ = run_configured_session(
            f"http://{receiver.endpoint}", OTEL_SERVICE_NAME="rtguard-otlp-test"
        )
        spans = list(receiver.spans)
        events = list(receiver.events)
    by_id = {s.span_id: s for s in spans}
    # OTEL_SERVICE_NAME wins over configure(service_name=...), as in the SDK's detection.
    assert {s.service_name for s in spans} == {"rtguard-otlp-test"}
    tools = [s for s in spans if s.name == "execute_tool child_span"]
    queries = [s for s in spans if s.name == "db.query"]
    sends = [s for s in spans if s.name == "rtguard.send_output"]
    assert len(tools) == len(queries) == len(sends) == 2
    for child in queries + sends:
        parent = by_id[child.parent_span_id]
        assert parent.name == "execute_tool child_span"
        assert parent.trace_id == child.trace_id
        assert parent.start_ns <= child.start_ns <= child.end_ns <= parent.end_ns
    for tool in tools:
        turn = by_id[tool.parent_span_id]
        assert turn.name == "invoke_agent a"
        assert turn.parent_span_id == ""  # the trace's root
        assert turn.start_ns <= tool.start_ns <= tool.end_ns <= turn.end_ns
        assert tool.attributes["gen_ai.tool.call.id"].startswith("call_sim")
    assert [e.event_name for e in events] == [
        "gen_ai.client.realtime_session.started",
        "gen_ai.client.realtime_session.ended",
    ]
    assert {e.attributes["gen_ai.realtime_session.id"] for e in events} == {"sess_sim1"}
    assert {e.service_name for e in events} == {"rtguard-otlp-test"}
    exported = len(spans) + len(events)
    assert lines == [f"{exported} 0 False True", f"{exported} spans and events exported"]


def test_resource_attributes_from_the_environment_win_over_the_argument() -> None:
    with OtlpReceiver() as receiver:
        run_configured_session(
            f"http://{receiver.endpoint}",
            OTEL_RESOURCE_ATTRIBUTES="service.name=from-resource-attributes,team=voice",
        )
        spans = list(receiver.spans)
    assert spans
    assert {s.service_name for s in spans} == {"from-resource-attributes"}


def test_configure_keeps_the_argument_when_the_environment_names_no_service() -> None:
    with OtlpReceiver() as receiver:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        with_env = {**environment, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{receiver.endpoint}"}
        subprocess.run(
            [sys.executable, "-c", SESSION_SCRIPT, "5"],
            env={**with_env, "OTEL_EXPORTER_OTLP_INSECURE": "true"},
            check=True,
            timeout=60,
            capture_output=True,
        )
        spans = list(receiver.spans)
    assert spans
    assert {s.service_name for s in spans} == {"from-the-argument"}


def test_an_unreachable_endpoint_is_reported_and_the_process_exits_promptly() -> None:
    with socket.socket() as closed:  # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    lines, elapsed = run_configured_session(f"http://127.0.0.1:{port}", shutdown_timeout=1.0)
    exported, failed, timed_out, ok = lines[0].split()
    assert exported == "0"
    assert int(failed) > 10  # every span and event of the session
    assert ok == "False"
    assert lines[1].startswith(f"export failed: {failed} of {failed} spans and events")
    assert timed_out in ("True", "False")  # either way, within the bound below
    assert elapsed < 8, elapsed  # the session itself takes well under a second


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


@function_tool
async def brief_crawl() -> str:
    """Outlasts the connection, not the session."""
    await asyncio.sleep(0.3)
    return "crawled"


async def test_a_reconnect_ends_one_realtime_session_and_announces_the_next() -> None:
    from rtguard import RealtimeSession
    from rtguard.simulator import Simulator

    records = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    loggers = LoggerProvider()
    loggers.add_log_record_processor(SimpleLogRecordProcessor(records))
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(tracer_provider=tracers, logger_provider=loggers)
    scenario = Scenario(
        calls=(CallSpec("brief_crawl"),), faults=Faults(drop_connection_after=frozenset({0}))
    )
    crawler = Agent(name="crawler", tools=[brief_crawl])
    async with (
        Simulator(scenario) as sim,
        RealtimeSession(crawler, url=sim.url, telemetry=telemetry) as session,
        asyncio.timeout(10),
    ):
        async for event in session:
            if isinstance(event, OutputAcknowledged):
                break
    lifecycle = [
        (r.log_record.event_name, dict(r.log_record.attributes or {}))
        for r in records.get_finished_logs()
    ]
    names = [name for name, _ in lifecycle]
    assert names == [
        "gen_ai.client.realtime_session.started",
        "gen_ai.client.realtime_session.ended",
        "gen_ai.client.realtime_session.started",
        "gen_ai.client.realtime_session.ended",
    ]
    first, lost, second, closed = (attributes for _, attributes in lifecycle)
    assert lost["rtguard.session.close_reason"] == "connection_lost"
    assert lost["error.type"] == "connection_lost"
    assert first["gen_ai.realtime_session.id"] == lost["gen_ai.realtime_session.id"]
    assert second["gen_ai.realtime_session.id"] != first["gen_ai.realtime_session.id"]
    assert closed["rtguard.session.close_reason"] == "closed"
    finished = list(spans.get_finished_spans())
    assert_contained(finished)
    (call,) = [s for s in finished if s.name == "execute_tool brief_crawl"]
    assert attrs(call)["rtguard.call.output_delivered"] is True  # carried, then answered
    assert call.status.status_code is StatusCode.UNSET


async def test_a_generation_cut_off_by_a_lost_connection_is_an_error() -> None:
    """Its response.done never comes: the span ends when the connection did, as an ERROR with
    the loss as its error.type and the finish reason the conventions ask for, ``error``."""
    scenario = Scenario(
        calls=(CallSpec("traced", '{"n": 1}'),), faults=Faults(drop_during_response=frozenset({0}))
    )
    run = await run_scenario(scenario, agent)
    generations = run.spans_named("realtime_inference")
    (cut,) = [s for s in generations if attrs(s)["gen_ai.realtime_session.id"] == "sess_sim1"]
    assert attrs(cut)["gen_ai.response.finish_reasons"] == ("error",)
    assert attrs(cut)["error.type"] == "connection_lost"
    assert cut.status.status_code is StatusCode.ERROR
    later = [attrs(s)["gen_ai.response.finish_reasons"] for s in generations if s is not cut]
    assert ("tool_call",) in later  # the call, issued again on the new connection
    assert all(s.status.status_code is StatusCode.UNSET for s in generations if s is not cut)


async def test_an_interrupted_turn_ends_interrupted_without_waiting_for_an_answer() -> None:
    """The response is cancelled after issuing one call: its output is not answered (whoever
    interrupted takes the turn), so the turn ends once the call settles, `interrupted`."""

    async def interrupt(run: Run, event: object) -> None:
        if isinstance(event, ToolCallReceived):
            await run.session.interrupt()

    def cancelled_and_answered(run: Run) -> bool:
        done = [e for e in run.events if isinstance(e, ResponseDone)]
        return bool(run.of_type(OutputAcknowledged)) and any(e.status == "cancelled" for e in done)

    scenario = Scenario(
        calls=(CallSpec("traced", '{"n": 1}'), CallSpec("traced", '{"n": 2}')),
        calls_per_response=2,
        stream_delay=0.02,
    )
    run = await run_scenario(scenario, agent, on_event=interrupt, done=cancelled_and_answered)
    assert_contained(run.spans)
    first_call = min(run.sim.calls.values(), key=lambda c: c.index)
    (call,) = [
        s
        for s in run.spans_named("execute_tool")
        if attrs(s)["gen_ai.tool.call.id"] == first_call.call_id
    ]
    turn = turn_of(run, first_call.call_id)
    assert attrs(turn)["gen_ai.agent.invocation.end_reason"] == "interrupted"
    assert turn.status.status_code is StatusCode.UNSET
    (generation,) = [
        s
        for s in run.spans
        if s.name == "realtime_inference" and s.parent and s.parent.span_id == turn.context.span_id
    ]
    assert attrs(generation)["gen_ai.response.finish_reasons"] != ("stop",)
    # No answer was waited for: the turn ended with its last child.
    assert turn.end_time == max(call.end_time, generation.end_time)  # type: ignore[type-var]


@function_tool
async def pause() -> str:
    """Still running when its response ends."""
    await asyncio.sleep(0.3)
    return "paused"


async def test_a_call_first_named_by_its_response_done_joins_the_open_turn() -> None:
    """The second call's own frames are lost, so only its response's response.done names
    it; the turn is still open (the first call runs on), and the call is traced in it."""
    lost = [
        FrameFault("to_client", kind, "drop", skip=1)
        for kind in ("response.function_call_arguments.done", "response.output_item.done")
    ]
    run = await run_scenario(
        Scenario(calls=(CallSpec("pause"), CallSpec("traced", '{"n": 1}')), calls_per_response=2),
        Agent(name="observed", tools=[pause, traced]),
        frame_faults=lost,
        done=lambda r: len(r.of_type(ResponseDone)) == 2 == len(r.of_type(OutputAcknowledged)),
    )
    assert all(fault.hits == 1 for fault in lost)
    (turn,) = [kids for kids in trees(run.spans).values() if kids]
    names = sorted(s.name for s in turn)
    assert names == ["execute_tool pause", "execute_tool traced", *["realtime_inference"] * 2]


def test_disabled_telemetry_does_not_even_look_at_the_events() -> None:
    session = RealtimeSession(agent, url="ws://127.0.0.1:9/v1/realtime")
    kinds = (ToolCallReceived, OutputAcknowledged, CallIncomplete, SessionClosed, ResponseDone)
    assert all(Telemetry().session(session).observes(kind) for kind in kinds)
    assert not any(Telemetry.disabled().session(session).observes(kind) for kind in kinds)
