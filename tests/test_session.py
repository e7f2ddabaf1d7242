"""Session behaviour over a real WebSocket against the simulator, beyond the per-path table."""

from __future__ import annotations

import asyncio
import pathlib
import random

import pytest

from conftest import Run, run_scenario
from faults import FailingSends
from rtguard import (
    Agent,
    CallIncomplete,
    IncompleteReason,
    OutputAcknowledged,
    ProtocolErrorEvent,
    RealtimeSession,
    RetryPolicy,
    ServerEvent,
    SessionClosed,
    SessionClosedError,
    SessionConfig,
    ToolApprovalRequested,
    ToolFailed,
    Transport,
    function_tool,
)
from rtguard.simulator import CallSpec, Faults, Scenario, Simulator

RUNS: list[str] = []


@function_tool
async def lookup(key: str) -> dict[str, str]:
    """Look a key up."""
    RUNS.append(key)
    return {"key": key, "value": key.upper()}


@function_tool(needs_approval=True)
async def delete_account(user: str) -> str:
    """Delete an account (needs approval)."""
    RUNS.append(f"delete {user}")
    return f"deleted {user}"


@function_tool
async def crawl() -> str:
    """Slower than the tests let it be."""
    await asyncio.sleep(10)
    return "done"


agent = Agent(name="ops", instructions="Operate.", tools=[lookup, delete_account, crawl])


def answered(count: int):  # type: ignore[no-untyped-def]
    return lambda run: (
        sum(isinstance(e, OutputAcknowledged | CallIncomplete) for e in run.events) >= count
    )


async def test_approval_approve_and_reject() -> None:
    scenario = Scenario(
        calls=(
            CallSpec("delete_account", '{"user": "ann"}'),
            CallSpec("delete_account", '{"user": "bob"}'),
        )
    )

    async def decide(run: Run, event: object) -> None:
        if isinstance(event, ToolApprovalRequested):
            if event.arguments["user"] == "ann":
                run.session.approve(event.call_id)
            else:
                run.session.reject(event.call_id, "Bob's account is protected.")

    RUNS.clear()
    run = await run_scenario(scenario, agent, on_event=decide)
    run.sim.assert_invariant()
    outputs = sorted(c.outputs[0] for c in run.sim.calls.values())
    assert outputs == ["Bob's account is protected.", "deleted ann"]
    assert RUNS == ["delete ann"]
    assert (
        run.sample(
            "rtguard_tool_calls_total", gen_ai_tool_name="delete_account", outcome="rejected"
        )
        == 1
    )
    (rejected,) = [
        s
        for s in run.spans_named("execute_tool")
        if s.attributes and s.attributes["rtguard.call.outcome"] == "rejected"
    ]
    assert rejected.attributes is not None
    assert rejected.attributes["error.type"] == "rejected"


async def test_unknown_approval_is_a_clear_error() -> None:
    async with Simulator() as sim, RealtimeSession(agent, url=sim.url) as session:
        with pytest.raises(KeyError, match="no call awaiting approval"):
            session.approve("call_nope")


async def test_same_call_id_twice_runs_the_tool_once() -> None:
    RUNS.clear()
    scenario = Scenario(
        calls=(CallSpec("lookup", '{"key": "a"}'),), faults=Faults(duplicate=frozenset({0}))
    )
    run = await run_scenario(scenario, agent)
    run.sim.assert_invariant()
    assert RUNS == ["a"]
    (call,) = run.sim.calls.values()
    assert call.outputs == ['{"key":"a","value":"A"}']


async def test_several_calls_in_one_response_get_one_response_create() -> None:
    calls = tuple(CallSpec("lookup", f'{{"key": "k{i}"}}') for i in range(12))
    scenario = Scenario(calls=calls, calls_per_response=4, max_in_flight=4)
    run = await run_scenario(scenario, agent)
    run.sim.assert_invariant()
    assert run.sim.response_creates == 3
    assert run.sim.refused_response_creates == 0


async def test_connection_lost_accounts_for_pending_calls() -> None:
    scenario = Scenario(
        calls=(CallSpec("crawl"), CallSpec("crawl")),
        calls_per_response=2,
        faults=Faults(drop_connection_after=frozenset({1})),
    )
    run = await run_scenario(
        scenario,
        agent,
        config=SessionConfig(reconnect=None),
        done=lambda r: any(isinstance(e, SessionClosed) for e in r.events),
    )
    incomplete = run.of_type(CallIncomplete)
    assert sorted(e.call_id for e in incomplete) == sorted(run.sim.calls)
    assert {e.reason for e in incomplete} == {IncompleteReason.CONNECTION_LOST}
    (closed,) = run.of_type(SessionClosed)
    assert closed.reason == "connection_lost"
    assert run.sample("rtguard_calls_without_output_total", reason="connection_lost") == 2
    assert all(
        s.attributes and s.attributes["error.type"] == "connection_lost"
        for s in run.spans_named("execute_tool")
    )


async def test_close_waits_then_accounts_for_running_calls() -> None:
    config = SessionConfig(close_timeout=0.05)
    scenario = Scenario(
        calls=(CallSpec("crawl"), CallSpec("lookup", '{"key": "z"}')), calls_per_response=2
    )
    run = await run_scenario(
        scenario,
        agent,
        config=config,
        done=lambda r: any(isinstance(e, OutputAcknowledged) for e in r.events),
    )
    (incomplete,) = run.of_type(CallIncomplete)
    assert incomplete.tool_name == "crawl"
    assert incomplete.reason is IncompleteReason.SESSION_CLOSED
    assert run.sample("rtguard_calls_without_output_total", reason="session_closed") == 1
    assert run.sample("rtguard_calls_awaiting_output") == 0


async def test_malformed_frames_are_counted_and_calls_still_answered() -> None:
    calls = tuple(CallSpec("lookup", f'{{"key": "m{i}"}}') for i in range(4))
    scenario = Scenario(calls=calls, faults=Faults(malformed_before=frozenset({0, 2})))
    run = await run_scenario(scenario, agent)
    run.sim.assert_invariant()
    assert [e.reason for e in run.of_type(ProtocolErrorEvent)] == ["invalid_json", "invalid_json"]
    assert run.sample("rtguard_protocol_errors_total", kind="invalid_json") == 2


async def test_every_server_event_reaches_the_app() -> None:
    run = await run_scenario(Scenario(calls=(CallSpec("lookup", '{"key": "e"}'),)), agent)
    types = {e.type for e in run.of_type(ServerEvent)}
    assert {
        "session.created",
        "session.updated",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    } <= types


async def test_session_update_carries_instructions_and_tool_schemas() -> None:
    async with Simulator() as sim:
        async with RealtimeSession(
            agent,
            url=sim.url,
            config=SessionConfig(session_options={"audio": {"output": {"voice": "marin"}}}),
        ):
            while not sim.session_updates:
                await asyncio.sleep(0.005)
        (_, session), *_ = sim.session_updates
    assert session["type"] == "realtime"
    assert session["instructions"] == "Operate."
    assert session["audio"]["output"]["voice"] == "marin"
    lookup_schema = next(t for t in session["tools"] if t["name"] == "lookup")
    assert lookup_schema == {
        "type": "function",
        "name": "lookup",
        "description": "Look a key up.",
        "parameters": {
            "type": "object",
            "properties": {"key": {"type": "string"}},
            "required": ["key"],
            "additionalProperties": False,
        },
    }


async def test_user_text_and_audio_reach_the_server() -> None:
    async with Simulator() as sim:
        async with RealtimeSession(agent, url=sim.url) as session:
            await session.send_message("hello there")
            await session.send_audio(b"\x00\x01" * 160, commit=True)
            await session.interrupt()
            async with asyncio.timeout(5):
                while sim.response_creates < 1:
                    await asyncio.sleep(0.005)
        with pytest.raises(SessionClosedError):
            await session.send_message("too late")
    assert sim.user_messages == ["hello there"]


async def test_api_key_is_sent_as_bearer_and_never_in_repr() -> None:
    seen: list[str | None] = []
    async with Simulator() as sim:
        from websockets.asyncio.server import serve

        async def capture(ws):  # type: ignore[no-untyped-def]
            seen.append(ws.request.headers.get("Authorization"))
            await ws.recv()  # the session.update
            await ws.close()

        async with serve(capture, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            session = RealtimeSession(
                agent, url=f"ws://127.0.0.1:{port}/v1/realtime", api_key="sk-test-secret-123456"
            )
            assert "sk-test" not in repr(session)
            async with session:
                async for _ in session:
                    pass
        del sim
    assert seen == ["Bearer sk-test-secret-123456"]


async def test_thousand_calls_random_mix_lose_nothing() -> None:
    """1,000 calls, random outcomes, random injected send failures: every call answered once,
    every tool error delivered once."""
    rng = random.Random(1234)
    raised: list[BaseException] = []

    @function_tool(timeout=0.02)
    async def mixed(kind: str) -> str:
        if kind == "raise":
            error = ValueError(f"mixed failure {len(raised)}")
            raised.append(error)
            raise error
        if kind == "slow":
            await asyncio.sleep(1)
        return kind

    kinds = ["ok", "ok", "ok", "raise", "slow"]
    calls = []
    for _ in range(1000):
        roll = rng.random()
        if roll < 0.05:
            calls.append(CallSpec("ghost_tool"))
        elif roll < 0.1:
            calls.append(CallSpec("mixed", "{broken"))
        else:
            calls.append(CallSpec("mixed", f'{{"kind": "{rng.choice(kinds)}"}}'))
    fail_rng = random.Random(99)
    config = SessionConfig(
        retry=RetryPolicy(max_attempts=10, initial_backoff=0.001, max_backoff=0.002)
    )
    run = await run_scenario(
        Scenario(calls=tuple(calls), calls_per_response=3, max_in_flight=64),
        Agent(name="mix", tools=[mixed]),
        config=config,
        wrap=lambda t: FailingSends(t, lambda event, attempt: fail_rng.random() < 0.1),
        timeout=60,
    )
    run.sim.assert_invariant()
    assert run.of_type(CallIncomplete) == []
    delivered = [e.error for e in run.of_type(ToolFailed) if isinstance(e.error, ValueError)]
    assert len(delivered) == len(raised) > 0
    assert {id(e) for e in delivered} == {id(e) for e in raised}
    assert run.sample("rtguard_output_send_retries_total") > 0
    assert (
        run.sample("rtguard_tool_calls_total", gen_ai_tool_name="_unknown", outcome="unknown_tool")
        > 0
    )
    assert run.session.ledger.open_count == 0


async def test_oversized_arguments_get_a_clear_failure_output() -> None:
    huge = '{"key": "' + "k" * 5000 + '"}'
    config = SessionConfig(max_argument_bytes=1000)
    run = await run_scenario(Scenario(calls=(CallSpec("lookup", huge),)), agent, config=config)
    run.sim.assert_invariant()
    (call,) = run.sim.calls.values()
    assert "arguments are 5011 bytes; the limit is 1000" in call.outputs[0]


async def test_a_frame_over_the_limit_closes_the_connection_and_is_accounted_for() -> None:
    huge = '{"key": "' + "k" * 50_000 + '"}'
    scenario = Scenario(calls=(CallSpec("crawl"), CallSpec("lookup", huge)), rate=20)
    config = SessionConfig(max_frame_bytes=10_000, reconnect=None)
    run = await run_scenario(
        scenario,
        agent,
        config=config,
        done=lambda r: any(isinstance(e, SessionClosed) for e in r.events),
    )
    (closed,) = run.of_type(SessionClosed)
    assert closed.reason == "connection_lost"
    (incomplete,) = run.of_type(CallIncomplete)
    assert incomplete.tool_name == "crawl"
    assert incomplete.reason is IncompleteReason.CONNECTION_LOST


def test_scenarios_load_from_yaml_and_json(tmp_path: pathlib.Path) -> None:
    text = """
rate: 50
calls_per_response: 2
repeat: 3
calls:
  - {name: lookup, arguments: {key: a}}
  - {name: lookup, arguments: "{not json"}
faults:
  reject_output: [1]
  drop_connection_after: [4]
  ack_delay: 0.01
  malformed_before: [2]
  duplicate: [0]
"""
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    scenario = Scenario.load(path)
    assert len(scenario.calls) == 6
    assert scenario.calls[0] == CallSpec("lookup", '{"key": "a"}')
    assert scenario.calls[1].arguments == "{not json"
    assert (scenario.rate, scenario.calls_per_response) == (50, 2)
    assert scenario.faults == Faults(
        reject_output=frozenset({1}),
        drop_connection_after=frozenset({4}),
        ack_delay=0.01,
        malformed_before=frozenset({2}),
        duplicate=frozenset({0}),
    )
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a mapping"):
        Scenario.load(tmp_path / "list.json")


class _RecvBreaks:
    """A transport whose receive side fails with its own exception type once a call came."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self._broken = False

    @property
    def is_open(self) -> bool:
        return self._inner.is_open

    async def send(self, frame: str) -> None:
        await self._inner.send(frame)

    async def recv(self) -> str | bytes:
        if self._broken:
            raise RuntimeError("decoder exploded")
        frame = await self._inner.recv()
        self._broken = "function_call_arguments.done" in str(frame)
        return frame

    async def close(self) -> None:
        await self._inner.close()


async def test_a_transport_failing_its_own_way_ends_the_session_cleanly() -> None:
    scenario = Scenario(calls=(CallSpec("crawl"),))
    run = await run_scenario(
        scenario,
        agent,
        config=SessionConfig(reconnect=None),
        wrap=_RecvBreaks,
        done=lambda r: any(isinstance(e, SessionClosed) for e in r.events),
    )
    (closed,) = run.of_type(SessionClosed)
    assert closed.reason == "connection_lost"
    assert "decoder exploded" in str(closed.error)
    assert [e.reason for e in run.of_type(CallIncomplete)] == [IncompleteReason.CONNECTION_LOST]
