"""A conversation outlives its connection, on real WebSockets: each moment a connection can
be lost (a tool running, an output sent but not acknowledged, a response half streamed), the
server's maximum duration and rtguard's own rollover before it, and the losses that must not
be retried. Each test checks the simulator's record across connections (one output per call in
the conversation that continues, its function_call recreated first), how often each tool ran,
and that every original error reached the app once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conformance import assert_conforms
from conftest import Run, make_telemetry, run_scenario
from invariant import assert_invariant
from rtguard import (
    Agent,
    CallIncomplete,
    IncompleteReason,
    Loss,
    OutputAcknowledged,
    RealtimeSession,
    Reconnecting,
    ReconnectPolicy,
    SessionClosed,
    SessionConfig,
    SessionEvent,
    SessionResumed,
    ToolFailed,
    Transport,
    WebSocketTransport,
    function_tool,
)
from rtguard.simulator import CallSpec, Faults, FrameFault, Scenario, Simulator

RUNS: Counter[str] = Counter()
ERRORS: list[BaseException] = []


@function_tool
async def slow(n: int) -> str:
    """Outlasts the connection it was called on."""
    RUNS[f"slow {n}"] += 1
    await asyncio.sleep(0.3)
    return f"slow {n} done"


@function_tool
def quick(n: int) -> str:
    RUNS[f"quick {n}"] += 1
    return f"quick {n}"


class Boom(Exception):
    pass


@function_tool
async def boom() -> str:
    """Fails after the connection it was called on is gone."""
    RUNS["boom"] += 1
    await asyncio.sleep(0.3)
    error = Boom("the tool failed while the connection was being replaced")
    ERRORS.append(error)
    raise error


agent = Agent(name="continuity", tools=[slow, quick, boom])
FAST = ReconnectPolicy(initial_backoff=0.05, max_backoff=0.2)
CONFIG = SessionConfig(reconnect=FAST, ack_timeout=2.0)


def calls(*names: str) -> tuple[CallSpec, ...]:
    return tuple(
        CallSpec(name, "{}" if name == "boom" else f'{{"n": {i}}}') for i, name in enumerate(names)
    )


def closed(run: Run) -> bool:
    return any(isinstance(e, SessionClosed) for e in run.events)


def assert_carried(run: Run, runs: int) -> None:
    """The promise across connections: one output each in the conversation that continues,
    recreated calls never refused, every tool run once, nothing lost."""
    errors = list(ERRORS)
    assert_invariant(run, errors)
    run.sim.assert_invariant()
    for record in run.sim.calls.values():
        assert record.refused_outputs == 0, record
    assert sum(RUNS.values()) == runs, RUNS
    assert set(RUNS.values()) == {1}, RUNS
    assert run.of_type(CallIncomplete) == []
    assert run.sample("rtguard_swallowed_errors_total", place="dispatch") == 0
    assert_reported(run)


def assert_reported(run: Run) -> None:
    """Each resume in the metrics, and on every carried call's span."""
    resumed = run.of_type(SessionResumed)
    for reason in {e.reason for e in resumed}:
        count = sum(e.reason is reason for e in resumed)
        assert run.sample("rtguard_reconnects_total", reason=reason, outcome="resumed") == count
    assert run.sample("rtguard_calls_carried_total") == sum(len(e.carried) for e in resumed)
    assert run.sample("rtguard_replayed_items_total") == sum(e.replayed for e in resumed)
    assert run.sample("rtguard_disconnected_seconds_count") == len(resumed)
    assert run.sample("rtguard_disconnected_seconds_sum") == pytest.approx(
        sum(e.gap for e in resumed)
    )
    spans = {
        (s.attributes or {}).get("gen_ai.tool.call.id"): s for s in run.spans_named("execute_tool")
    }
    for event in resumed:
        for call_id in event.carried:
            carried = [e for e in spans[call_id].events if e.name == "rtguard.call.carried"]
            assert any(
                (e.attributes or {}).get("rtguard.reconnect.reason") == event.reason.value
                for e in carried
            ), call_id


async def carried_run(scenario: Scenario, **kwargs: Any) -> Run:
    RUNS.clear()
    ERRORS.clear()
    kwargs.setdefault("config", CONFIG)
    return await run_scenario(scenario, agent, **kwargs)


# --- each moment of loss --------------------------------------------------------------------


async def test_a_call_whose_tool_is_running_is_carried_to_the_new_connection() -> None:
    scenario = Scenario(
        calls=calls("slow", "quick"), faults=Faults(drop_connection_after=frozenset({0}))
    )
    run = await carried_run(scenario)
    assert_carried(run, runs=2)
    first = run.sim.calls["call_sim1_0"]
    assert first.connections == [1, 2]
    assert first.function_call_recreated == 1
    assert first.outputs_by_connection == {2: ["slow 0 done"]}  # delivered where it continues
    (reconnecting,) = run.of_type(Reconnecting)
    assert reconnecting.reason is Loss.CONNECTION_LOST
    (resumed,) = run.of_type(SessionResumed)
    assert resumed.carried == ("call_sim1_0",)
    assert resumed.attempts == 1


async def test_an_output_sent_but_not_acknowledged_is_delivered_once_where_it_continues() -> None:
    """The old server may hold it; the new conversation certainly does not."""
    scenario = Scenario(
        calls=calls("quick", "quick"), faults=Faults(drop_after_output=frozenset({0}))
    )
    run = await carried_run(scenario)
    assert_carried(run, runs=2)
    record = run.sim.calls["call_sim1_0"]
    assert record.outputs_by_connection == {1: ["quick 0"], 2: ["quick 0"]}
    assert record.outputs == ["quick 0"]
    acknowledged = [e.call_id for e in run.of_type(OutputAcknowledged)]
    assert acknowledged.count("call_sim1_0") == 1
    items = [(i["type"], i.get("call_id")) for i in run.sim.client_items[2]]
    assert items.index(("function_call", "call_sim1_0")) < items.index(
        ("function_call_output", "call_sim1_0")
    )


async def test_a_response_cut_off_mid_stream_keeps_its_issued_calls_and_loses_no_other() -> None:
    scenario = Scenario(
        calls=calls("quick", "quick"),
        calls_per_response=2,
        faults=Faults(drop_during_response=frozenset({1})),
    )
    run = await carried_run(scenario)
    assert_carried(run, runs=2)
    assert run.sim.calls["call_sim1_0"].connections == [1, 2]  # issued, then carried
    assert run.sim.calls["call_sim2_1"].connections == [2]  # never issued: asked again


async def test_a_tool_failing_during_the_outage_reaches_the_app_once_and_the_model_once() -> None:
    scenario = Scenario(calls=calls("boom"), faults=Faults(drop_connection_after=frozenset({0})))
    run = await carried_run(scenario)
    assert_carried(run, runs=1)
    (failed,) = run.of_type(ToolFailed)
    assert failed.error is ERRORS[0]
    (record,) = run.sim.calls.values()
    assert record.outputs_by_connection.keys() == {2}
    assert "Boom" in record.outputs[0]


async def test_a_cut_while_an_output_is_written_is_carried() -> None:
    """The relay cuts the connection at the output frame itself."""
    cut = FrameFault("to_server", "conversation.item.create:function_call_output", "cut")
    run = await carried_run(Scenario(calls=calls("quick", "slow")), frame_faults=[cut])
    assert_carried(run, runs=2)
    assert len(run.of_type(SessionResumed)) == 1


# --- the server's maximum duration, and moving on before it ---------------------------------


@pytest.mark.parametrize("expiry_error", [True, False])
async def test_an_expired_session_is_resumed(expiry_error: bool) -> None:
    """With the ``session_expired`` error earlier servers sent first, or told from the close
    reason alone."""
    scenario = Scenario(
        calls=calls(*["quick"] * 6),
        rate=6,
        faults=Faults(max_session_seconds=0.5, expiry_error=expiry_error),
    )
    config = SessionConfig(reconnect=ReconnectPolicy(initial_backoff=0.05, rollover_after=None))
    run = await carried_run(scenario, config=config)
    assert_carried(run, runs=6)
    reasons = {e.reason for e in run.of_type(Reconnecting)}
    assert reasons == {Loss.SESSION_EXPIRED}


async def test_rollover_moves_on_before_the_server_cuts_the_session() -> None:
    scenario = Scenario(calls=calls(*["quick"] * 8), rate=8, faults=Faults(max_session_seconds=0.6))
    policy = ReconnectPolicy(rollover_after=0.3, rollover_deadline=0.5)
    run = await carried_run(scenario, config=SessionConfig(reconnect=policy))
    assert_carried(run, runs=8)
    reasons = [e.reason for e in run.of_type(Reconnecting)]
    assert reasons
    assert set(reasons) == {Loss.ROLLOVER}
    assert all(e.delay == 0.0 for e in run.of_type(Reconnecting))


# --- the ends that are not retried ----------------------------------------------------------


async def test_a_normal_close_by_the_server_is_not_a_loss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not reconnected, and not a warning: 400 sessions ending normally once logged 400."""
    scenario = Scenario(calls=calls("quick", "quick"), faults=Faults(end_after=0))
    with caplog.at_level(logging.INFO, logger="rtguard"):
        run = await carried_run(scenario, done=closed)
    ended = [r for r in caplog.records if "realtime connection ended" in r.getMessage()]
    assert [r.levelno for r in ended] == [logging.INFO]
    assert run.of_type(Reconnecting) == []
    (end,) = run.of_type(SessionClosed)
    assert end.reason == "server_closed"
    assert run.sim.connections == 1
    assert run.sample("rtguard_calls_without_output_total", reason="connection_lost") == 0
    assert run.sample("rtguard_sessions_closed_total", reason="server_closed") == 1
    assert (
        sum(
            run.sample("rtguard_reconnects_total", reason=r, outcome=o)
            for r in ("connection_lost", "going_away", "session_expired", "rollover")
            for o in ("resumed", "failed")
        )
        == 0
    )


async def session_against(
    sim: Simulator, connector: Callable[[], Any], config: SessionConfig
) -> tuple[list[SessionEvent], CollectorRegistry]:
    """Run a session until it closes by itself; its events and metrics."""
    registry = CollectorRegistry()
    telemetry, _ = make_telemetry(registry)
    session = RealtimeSession(agent, connector=connector, config=config, telemetry=telemetry)
    events: list[SessionEvent] = []
    async with session:
        async with asyncio.timeout(10):
            async for event in session:
                events.append(event)
    return events, registry


async def test_a_key_refused_on_reconnect_is_not_retried() -> None:
    """The key was revoked while the session ran: the server refuses the new connection."""
    RUNS.clear()
    scenario = Scenario(calls=calls("slow"), faults=Faults(drop_connection_after=frozenset({0})))
    keys = iter(["sk-right", "sk-revoked", "sk-revoked"])
    async with Simulator(scenario, api_key="sk-right", record_frames=True) as sim:

        async def connector() -> Transport:
            headers = {"Authorization": f"Bearer {next(keys)}"}
            return await WebSocketTransport.connect(sim.url, headers)

        events, registry = await session_against(sim, connector, CONFIG)
        assert_conforms(sim)
    assert [type(e) for e in events if isinstance(e, Reconnecting)] == [Reconnecting]
    (incomplete,) = [e for e in events if isinstance(e, CallIncomplete)]
    assert incomplete.reason is IncompleteReason.RECONNECT_FAILED
    end = events[-1]
    assert isinstance(end, SessionClosed)
    assert end.reason == "reconnect_failed"
    assert end.error is not None
    assert end.error.close_code == 3000  # type: ignore[attr-defined]
    assert sim.connections == 2  # refused once, never tried again
    sample = registry.get_sample_value(
        "rtguard_calls_without_output_total", {"reason": "reconnect_failed"}
    )
    assert sample == 1
    # The new connection opened, then the server refused it: not retried, the session ended.
    opened = {"reason": "connection_lost", "outcome": "resumed"}
    assert registry.get_sample_value("rtguard_reconnects_total", opened) == 1
    closed = {"reason": "reconnect_failed"}
    assert registry.get_sample_value("rtguard_sessions_closed_total", closed) == 1


async def test_reconnecting_gives_up_when_the_attempts_are_spent() -> None:
    RUNS.clear()
    scenario = Scenario(calls=calls("slow"), faults=Faults(drop_connection_after=frozenset({0})))
    async with Simulator(scenario, record_frames=True) as sim:
        # A port with nothing listening: every later attempt is refused by the network.
        with contextlib.closing(__import__("socket").socket()) as unused:
            unused.bind(("127.0.0.1", 0))
            dead = f"ws://127.0.0.1:{unused.getsockname()[1]}/v1/realtime"
        urls = iter([sim.url])

        async def connector() -> Transport:
            return await WebSocketTransport.connect(next(urls, dead), {})

        policy = ReconnectPolicy(max_attempts=3, initial_backoff=0.02, max_backoff=0.05)
        events, registry = await session_against(sim, connector, SessionConfig(reconnect=policy))
        assert_conforms(sim)
    attempts = [e.attempt for e in events if isinstance(e, Reconnecting)]
    assert attempts == [1, 2, 3]
    (incomplete,) = [e for e in events if isinstance(e, CallIncomplete)]
    assert incomplete.reason is IncompleteReason.RECONNECT_FAILED
    end = events[-1]
    assert isinstance(end, SessionClosed)
    assert end.reason == "reconnect_failed"
    assert RUNS["slow 0"] == 1
    failed = {"reason": "connection_lost", "outcome": "failed"}
    assert registry.get_sample_value("rtguard_reconnects_total", failed) == 1


# --- the conversation a new connection gets -------------------------------------------------


async def test_the_new_conversation_is_the_old_one_replayed_with_the_open_call_last() -> None:
    async def talk_then_drop(run: Run, event: SessionEvent) -> None:
        if isinstance(event, OutputAcknowledged) and event.call_id == "call_sim1_0":
            await run.session.send_message("and tomorrow?")

    scenario = Scenario(
        calls=calls("quick", "slow"),
        rate=4,
        faults=Faults(drop_connection_after=frozenset({1})),
    )
    run = await carried_run(scenario, on_event=talk_then_drop)
    assert_carried(run, runs=2)
    old = [summary(item) for item in run.sim.conversations[1].items]
    new = [summary(item) for item in run.sim.conversations[2].items]
    assert ("message", "user", "and tomorrow?") in old
    assert old[-1] == ("function_call", "call_sim1_1", '{"n": 1}')  # open when it dropped
    assert new[: len(old)] == old  # the same conversation, the open call recreated last
    assert new[len(old)] == ("function_call_output", "call_sim1_1", "slow 1 done")
    (resumed,) = run.of_type(SessionResumed)
    assert resumed.replayed == len(old) - 1
    assert run.sim.user_messages.count("and tomorrow?") == 2  # said once, replayed once


def summary(item: dict[str, Any]) -> tuple[str, str, str]:
    """An item as the model reads it: kind, who (or which call), what."""
    if item["type"] == "message":
        text = "".join(p.get("text") or p.get("transcript") or "" for p in item["content"])
        return "message", item["role"], text
    value = item["arguments"] if item["type"] == "function_call" else item["output"]
    return item["type"], item["call_id"], value


async def test_a_connector_raising_cancelled_error_is_a_failed_attempt() -> None:
    """The connector is the app's code: even a CancelledError of its own (it awaited work
    someone else cancelled) is a failed attempt, not the end of reconnecting."""
    RUNS.clear()
    scenario = Scenario(calls=calls("slow"), faults=Faults(drop_connection_after=frozenset({0})))
    async with Simulator(scenario, record_frames=True) as sim:
        opened = 0

        async def connector() -> Transport:
            nonlocal opened
            opened += 1
            if opened > 1:
                raise asyncio.CancelledError
            return await WebSocketTransport.connect(sim.url, {})

        policy = ReconnectPolicy(max_attempts=2, initial_backoff=0.02, max_backoff=0.05)
        events, _ = await session_against(sim, connector, SessionConfig(reconnect=policy))
    assert [e.attempt for e in events if isinstance(e, Reconnecting)] == [1, 2]
    end = events[-1]
    assert isinstance(end, SessionClosed)
    assert end.reason == "reconnect_failed"
    assert "CancelledError" in str(end.error)
