"""The session's lifecycle over real WebSockets, each case a way the promise once broke
(issue 9): calls bound to their agent, acknowledgements read while tools run, a tool that
hangs up, closing and losing the connection at once, bounds on what the app has not read."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conftest import Run, make_telemetry, run_scenario
from invariant import assert_invariant
from rtguard import (
    Agent,
    CallIncomplete,
    ConfigurationError,
    EventsDropped,
    IncompleteReason,
    OutputAcknowledged,
    OutputSent,
    RealtimeSession,
    ServerError,
    ServerEvent,
    SessionClosed,
    SessionConfig,
    SessionEvent,
    ToolCallReceived,
    ToolCallStarted,
    ToolSucceeded,
    Transport,
    function_tool,
)
from rtguard.simulator import CallSpec, Faults, Scenario
from scripted_websocket import Peer, ScriptedWebSocket

SESSIONS: list[RealtimeSession] = []  # the session a tool below belongs to


@function_tool
async def quick() -> str:
    return "q"


@function_tool
async def slow_work() -> str:
    await asyncio.sleep(0.3)
    return "s"


@function_tool
async def crawl() -> str:
    await asyncio.sleep(10)
    return "late"


@function_tool
async def hang_up() -> str:
    """A voice agent's hang-up tool: it closes its own session."""
    await SESSIONS[-1].close()
    return "bye"


billing = Agent(name="billing", instructions="Billing only.", tools=[crawl])
agent = Agent(name="support", tools=[quick, slow_work, crawl, hang_up], handoffs=[billing])


def closed(run: Run) -> bool:
    return any(isinstance(e, SessionClosed) for e in run.events)


def remember_session(run: Run, event: SessionEvent) -> None:
    if not SESSIONS or SESSIONS[-1] is not run.session:
        SESSIONS.append(run.session)


async def test_acknowledgements_are_read_while_tools_run_one_at_a_time() -> None:
    """#4: a tool slower than ack_timeout no longer starves an earlier output's ack."""
    config = SessionConfig(async_tool_calls=False, ack_timeout=0.1)
    scenario = Scenario(calls=(CallSpec("quick"), CallSpec("slow_work")), calls_per_response=2)
    run = await run_scenario(scenario, agent, config=config)
    run.sim.assert_invariant()
    assert_invariant(run)
    assert run.of_type(CallIncomplete) == []
    assert [e.call_id for e in run.of_type(ToolCallStarted)] == sorted(run.sim.calls)


class _SendReturnsLate:
    """The frame leaves at once, but send() returns only after the server's ack was read."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    @property
    def is_open(self) -> bool:
        return self._inner.is_open

    async def send(self, frame: str) -> None:
        await self._inner.send(frame)
        if "function_call_output" in frame:
            await asyncio.sleep(0.05)

    async def recv(self) -> str | bytes:
        return await self._inner.recv()

    async def close(self) -> None:
        await self._inner.close()


async def test_an_ack_read_before_the_send_returns_still_gets_a_response() -> None:
    """#5: the model answers (a response.create follows), and events stay in order."""
    run = await run_scenario(Scenario(calls=(CallSpec("quick"),)), agent, wrap=_SendReturnsLate)
    run.sim.assert_invariant()
    assert_invariant(run)
    kinds = [type(e) for e in run.events if isinstance(e, OutputSent | OutputAcknowledged)]
    assert kinds == [OutputSent, OutputAcknowledged]


@pytest.mark.parametrize("async_tool_calls", [True, False])
async def test_a_call_is_bound_to_the_agent_active_when_the_model_issued_it(
    async_tool_calls: bool,
) -> None:
    """#6: [transfer_to_billing, quick] in one response; billing has no quick."""
    scenario = Scenario(
        calls=(CallSpec("transfer_to_billing"), CallSpec("quick")), calls_per_response=2
    )
    config = SessionConfig(async_tool_calls=async_tool_calls)
    run = await run_scenario(scenario, agent, config=config)
    run.sim.assert_invariant()
    outputs = {c.name: c.outputs[0] for c in run.sim.calls.values()}
    assert outputs == {"transfer_to_billing": '{"assistant": "billing"}', "quick": "q"}
    assert run.session.agent is billing


async def test_nothing_is_sent_or_counted_after_a_connection_is_lost() -> None:
    """#8: no response.create retries, no swallowed errors, no late timeouts."""
    scenario = Scenario(
        calls=(CallSpec("quick"), CallSpec("crawl")),
        calls_per_response=2,
        faults=Faults(drop_connection_after=frozenset({1})),
    )
    config = SessionConfig(response_timeout=0.1, reconnect=None)
    run = await run_scenario(scenario, agent, config=config, done=closed)
    await asyncio.sleep(0.3)  # past every deadline the session could have left behind
    assert run.events[-1] == run.of_type(SessionClosed)[0]
    assert run.sample("rtguard_swallowed_errors_total", place="response_create") == 0
    assert run.sample("rtguard_protocol_errors_total", kind="response_timeout") == 0
    assert run.session._timer is None


async def test_close_sends_no_response_create_and_counts_nothing_later() -> None:
    """#8: closing with an answered call beside a running one."""
    scenario = Scenario(calls=(CallSpec("quick"), CallSpec("crawl")), calls_per_response=2)
    config = SessionConfig(close_timeout=0.05, response_timeout=0.1)
    run = await run_scenario(
        scenario,
        agent,
        config=config,
        done=lambda r: len(r.of_type(OutputAcknowledged)) == 1,
    )
    await asyncio.sleep(0.3)
    assert run.sim.response_creates == 0
    (incomplete,) = run.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.SESSION_CLOSED
    assert run.sample("rtguard_protocol_errors_total", kind="response_timeout") == 0


async def test_a_tool_that_closes_its_own_session_gets_its_output_first() -> None:
    """#9: no deadlock for close_timeout; the hang-up call is answered."""
    config = SessionConfig(close_timeout=5.0)
    started = time.monotonic()
    run = await run_scenario(
        Scenario(calls=(CallSpec("hang_up"),)),
        agent,
        config=config,
        on_event=remember_session,
        done=closed,
    )
    assert time.monotonic() - started < 2.0
    (call,) = run.sim.calls.values()
    assert call.outputs == ["bye"]
    assert [e.call_id for e in run.of_type(OutputAcknowledged)] == [call.call_id]
    assert run.of_type(CallIncomplete) == []
    (end,) = run.of_type(SessionClosed)
    assert end.reason == "closed"


async def test_a_connection_lost_during_close_is_reported_as_lost() -> None:
    """#10."""

    async def close_then_cut(run: Run, event: SessionEvent) -> None:
        if isinstance(event, ToolCallStarted):
            closing = asyncio.ensure_future(run.session.close())
            await asyncio.sleep(0.05)
            assert run.proxy is not None
            run.proxy.cut()
            await closing

    run = await run_scenario(
        Scenario(calls=(CallSpec("crawl"),)),
        agent,
        config=SessionConfig(close_timeout=5.0, reconnect=None),
        frame_faults=[],
        on_event=close_then_cut,
        done=closed,
    )
    (incomplete,) = run.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.CONNECTION_LOST
    (end,) = run.of_type(SessionClosed)
    assert end.reason == "connection_lost"
    assert run.sample("rtguard_calls_without_output_total", reason="connection_lost") == 1


async def test_close_without_connect_and_a_second_connect_are_harmless() -> None:
    """#11: the gauge never goes negative; connect() twice is a clear error."""
    registry = CollectorRegistry()
    telemetry, _ = make_telemetry(registry)
    session = RealtimeSession(agent, url="ws://127.0.0.1:9/v1/realtime", telemetry=telemetry)
    await session.close()
    assert registry.get_sample_value("rtguard_active_sessions") == 0
    assert session.closed

    async def connect_again(run: Run, event: SessionEvent) -> None:
        if isinstance(event, ToolCallReceived):
            with pytest.raises(ConfigurationError, match="already called"):
                await run.session.connect()

    run = await run_scenario(Scenario(calls=(CallSpec("quick"),)), agent, on_event=connect_again)
    run.sim.assert_invariant()
    assert run.of_type(CallIncomplete) == []
    assert run.sample("rtguard_active_sessions") == 0


async def test_an_app_that_stops_reading_loses_only_plain_server_events() -> None:
    """#12: the queue stays bounded, the app is told what was dropped, calls lose nothing."""
    deltas = 2000

    async def flood(peer: Peer) -> None:
        await peer.until("session.update")
        for n in range(deltas):
            await peer.send(
                "response.output_audio.delta",
                response_id="resp_1",
                item_id="item_1",
                output_index=0,
                content_index=0,
                delta=f"{n:08d}",
            )
        await peer.issue_call("call_1", "quick", "item_2", output_index=1)
        await peer.acknowledge_outputs()

    registry = CollectorRegistry()
    telemetry, _ = make_telemetry(registry)
    config = SessionConfig(max_queued_events=100)
    async with ScriptedWebSocket(flood) as server:
        session = RealtimeSession(agent, url=server.url, config=config, telemetry=telemetry)
        async with session:
            async with asyncio.timeout(10):
                while not session.ledger.remembered_count or session.ledger.open_count:
                    await asyncio.sleep(0.01)
            assert len(session._events) <= 100 + 20  # rtguard's own events are never dropped
        events = [e async for e in session]
    kept = [e for e in events if type(e) is ServerEvent and e.type.endswith("audio.delta")]
    dropped = sum(e.count for e in events if isinstance(e, EventsDropped))
    assert dropped > 0
    assert len(kept) + dropped == deltas
    assert [type(e) for e in events if isinstance(e, ToolSucceeded | OutputAcknowledged)] == [
        ToolSucceeded,
        OutputAcknowledged,
    ]
    assert registry.get_sample_value("rtguard_events_dropped_total") == dropped


async def test_an_unusable_item_does_not_hold_back_the_other_calls() -> None:
    """#14: response.create follows at once, not after response_timeout."""
    good = {"type": "function_call", "call_id": "call_ok", "name": "quick", "arguments": "{}"}
    bad = {"type": "function_call", "name": "quick", "arguments": "{}"}  # no call_id
    created: list[dict[str, Any]] = []

    async def script(peer: Peer) -> None:
        await peer.until("session.update")
        await peer.send("response.created", response={"id": "resp_1", "status": "in_progress"})
        response = {"id": "resp_1", "status": "completed", "output": [bad, good]}
        await peer.send("response.done", response=response)
        output = await peer.until("conversation.item.create")
        await peer.send("conversation.item.added", previous_item_id=None, item=output["item"])
        created.append(await peer.until("response.create"))
        await peer.drain()

    config = SessionConfig(response_timeout=30.0)
    async with (
        ScriptedWebSocket(script) as server,
        RealtimeSession(agent, url=server.url, config=config) as session,
    ):
        async with asyncio.timeout(2):  # response.create follows the send, not the ack
            while not created or session.ledger.open_count:
                await asyncio.sleep(0.01)
    output = json.dumps(server.peers[0].received)
    assert '"call_id": "call_ok"' in output


async def test_interrupting_a_response_answers_its_issued_calls_without_a_new_response() -> None:
    """#17: the cut-off call was never issued; the issued one is answered; the app (or the
    user who barged in) takes the next turn, so rtguard asks for no response."""

    async def interrupt(run: Run, event: SessionEvent) -> None:
        if isinstance(event, ToolCallReceived):
            await run.session.interrupt()

    scenario = Scenario(
        calls=(CallSpec("quick"), CallSpec("quick")), calls_per_response=2, stream_delay=0.02
    )
    run = await run_scenario(
        scenario,
        agent,
        on_event=interrupt,
        done=lambda r: (
            bool(r.of_type(OutputAcknowledged))
            and any(
                isinstance(e, ServerEvent)
                and e.type == "response.done"
                and e.data["response"]["status"] == "cancelled"
                for e in r.events
            )
        ),
    )
    await asyncio.sleep(0.1)
    (call,) = run.sim.calls.values()
    assert call.outputs == ["q"]
    assert run.sim.response_creates == 0
    assert run.of_type(CallIncomplete) == []
    errors = [e for e in run.of_type(ServerError) if e.code == "response_cancel_not_active"]
    assert errors == []


async def test_interrupting_with_no_response_in_progress_is_harmless() -> None:
    async with (
        ScriptedWebSocket(_answer_cancel) as server,
        RealtimeSession(agent, url=server.url) as session,
    ):
        await session.interrupt()
        async with asyncio.timeout(2):
            async for event in session:
                if isinstance(event, ServerError):
                    assert event.code == "response_cancel_not_active"
                    break
        assert not session.closed


async def _answer_cancel(peer: Peer) -> None:
    cancel = await peer.until("response.cancel")
    error = {
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found",
        "param": None,
        "event_id": cancel["event_id"],
    }
    await peer.send("error", error=error)
    await peer.drain()


@function_tool
async def stubborn() -> str:
    """Takes a while to give up when cancelled."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(0.3)
        raise
    return "late"


async def test_close_is_prompt_while_the_server_keeps_streaming() -> None:
    """Once the session stops reading, frames back up; past websockets' queue limit it stops
    reading the socket, and without discarding them its close waited close_timeout (10 s)
    for an answer it could not read."""

    async def call_then_stream(peer: Peer) -> None:
        await peer.until("session.update")
        await peer.issue_call("c1", "stubborn", "i1", response_id="r1")
        while True:  # the model speaks on; nothing makes it stop
            await peer.send("response.output_audio.delta", response_id="r1", delta="AAAA")
            await asyncio.sleep(0.001)

    streaming = Agent(name="streaming", tools=[stubborn])
    config = SessionConfig(close_timeout=0.1, reconnect=None)
    async with ScriptedWebSocket(call_then_stream) as server:
        session = RealtimeSession(streaming, url=server.url, config=config)
        await session.connect()
        async for event in session:
            if isinstance(event, ToolCallStarted):
                break
        started = time.monotonic()
        await session.close()
        assert time.monotonic() - started < 3.0


async def test_a_call_issued_as_the_session_closes_is_reported_incomplete_before_it_ends() -> None:
    """The server sends a call right behind the acknowledgement that lets the closing session
    end: it arrives after rtguard decided to close, and no output can follow its close frame.
    The call is reported incomplete (session_closed), counted and traced, before
    SessionClosed; nothing is sent for it."""

    async def script(peer: Peer) -> None:
        await peer.until("session.update")
        await peer.send("session.updated", session={"type": "realtime", "id": "sess_scripted"})
        await peer.issue_call("call_first", "slow_work", "item_1")
        output = await peer.until("conversation.item.create")
        await peer.send("conversation.item.added", previous_item_id=None, item=output["item"])
        await peer.issue_call("call_late", "quick", "item_2")
        await peer.drain()

    registry = CollectorRegistry()
    telemetry, spans = make_telemetry(registry)
    agent = Agent(name="a", tools=[quick, slow_work])
    async with ScriptedWebSocket(script) as server:
        session = RealtimeSession(agent, url=server.url, telemetry=telemetry)
        await session.connect()
        events: list[SessionEvent] = []
        async with asyncio.timeout(10):
            async for event in session:
                events.append(event)
                if isinstance(event, ToolCallStarted):
                    await session.close()  # the running call is answered, then it ends
    late = [e for e in events if getattr(e, "call_id", None) == "call_late"]
    assert [type(e) for e in late] == [ToolCallReceived, CallIncomplete]
    incomplete = late[1]
    assert isinstance(incomplete, CallIncomplete)
    assert incomplete.reason is IncompleteReason.SESSION_CLOSED
    assert isinstance(events[-1], SessionClosed)
    assert events[-1].reason == "closed"
    sent = [e.get("item", {}).get("call_id") for e in server.peers[0].received]
    assert "call_late" not in sent
    assert "call_first" in sent
    reason = {"reason": "session_closed"}
    assert registry.get_sample_value("rtguard_calls_without_output_total", reason) == 1
    (span,) = [
        s
        for s in spans.get_finished_spans()
        if (s.attributes or {}).get("gen_ai.tool.call.id") == "call_late"
    ]
    assert span.status.status_code.name == "ERROR"
