"""Property tests: arbitrary server frames never crash the parser or the session, never lose
a call, and every rejected frame is counted; the tools fail in every hostile way there is."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from conftest import make_telemetry
from memory_transport import ScriptedServer
from rtguard import (
    Agent,
    CallIncomplete,
    OutputAcknowledged,
    OutputSendFailed,
    ProtocolError,
    RealtimeSession,
    ServerRejectedError,
    SessionConfig,
    ToolFailed,
    function_tool,
)
from rtguard._protocol import FunctionCallReady, ResponseDone, parse_server_event

RAISED: list[BaseException] = []


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error raises")


def hostile(n: int) -> BaseException:
    """What a tool raises for ``n``: the kinds that once escaped rtguard among them."""
    kinds = [
        ArithmeticError(f"odd {n}"),
        asyncio.CancelledError("awaited work someone else cancelled"),
        Unprintable(),
        StopIteration(n),
        StopAsyncIteration(n),
    ]
    return kinds[abs(n) % len(kinds)]


@function_tool
async def parity(n: int) -> str:
    if n % 2:
        error = hostile(n)
        RAISED.append(error)
        raise error
    return "even" if n else "x" * 2_000_000  # 0: a result over max_output_bytes


@function_tool
def sync_parity(n: int) -> str:
    """The same in a worker thread, where StopIteration once hung the call."""
    if n % 2:
        error = hostile(n)
        RAISED.append(error)
        raise error
    return "even"


@function_tool
def other(text: str = "") -> str:
    return text[:10]


AGENT = Agent(name="fuzzed", tools=[parity, sync_parity, other])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
call_ids = st.sampled_from(["call_a", "call_b", "call_c", "call_d"]) | st.text(max_size=12)
names = st.sampled_from(["parity", "sync_parity", "other", "nope", ""]) | st.text(max_size=12)
arguments = (
    st.integers(-5, 5).map(lambda n: json.dumps({"n": n}))
    | st.text(max_size=30)
    | st.just('{"text": "' + "x" * 5000 + '"}')
    | json_values
)
response_ids = st.sampled_from(["resp_1", "resp_2", None])


def function_call(call_id: str, name: str, args: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": args}


valid_events = st.one_of(
    st.builds(
        lambda c, n, a, r: {
            "type": "response.function_call_arguments.done",
            "call_id": c,
            "name": n,
            "arguments": a,
            "response_id": r,
        },
        call_ids,
        names,
        arguments,
        response_ids,
    ),
    st.builds(
        lambda c, n, a, r: {
            "type": "response.output_item.done",
            "response_id": r,
            "item": function_call(c, n, a),
        },
        call_ids,
        names,
        arguments,
        response_ids,
    ),
    st.builds(lambda r: {"type": "response.created", "response": {"id": r}}, response_ids),
    st.builds(
        lambda r, calls: {"type": "response.done", "response": {"id": r, "output": calls}},
        response_ids,
        st.lists(st.builds(function_call, call_ids, names, arguments), max_size=3),
    ),
    st.builds(
        lambda e, code: {"type": "error", "error": {"code": code, "message": "no", "event_id": e}},
        st.sampled_from([f"evt_rtg_{n}" for n in range(1, 12)]) | st.none(),
        st.sampled_from(["invalid_value", "conversation_already_has_active_response", None]),
    ),
    st.builds(lambda t, d: {"type": t, "data": d}, st.text(max_size=30), json_values),
    st.builds(lambda d: {"type": "conversation.item.added", "item": d}, json_values),
)
frames = st.one_of(
    valid_events.map(json.dumps),
    st.text(max_size=50),
    st.binary(max_size=50),
    json_values.map(json.dumps),
    st.just("x" * 200_000),
)


@given(st.lists(frames, max_size=12))
@settings(max_examples=300, deadline=None)
def test_the_parser_only_raises_protocol_errors(batch: list[str | bytes]) -> None:
    reasons = []
    for frame in batch:
        try:
            parse_server_event(frame)
        except ProtocolError as error:
            reasons.append(error.reason)
    known = {"invalid_json", "invalid_utf8", "not_an_object", "missing_type", "invalid_field"}
    assert set(reasons) <= known


def calls_in(frame: str | bytes) -> tuple[list[str], int]:
    """The call ids a frame carries, and how many problems it has (the whole frame rejected,
    or unusable call items in a response.done whose other calls still count)."""
    try:
        event = parse_server_event(frame)
    except ProtocolError:
        return [], 1
    if isinstance(event, FunctionCallReady):
        return [event.call.call_id], 0
    if isinstance(event, ResponseDone):
        return [c.call_id for c in event.calls], len(event.unusable)
    return [], 0


async def drive(
    batch: list[str | bytes],
) -> tuple[list[Any], list[BaseException], CollectorRegistry, ScriptedServer]:
    registry = CollectorRegistry()
    telemetry, _ = make_telemetry(registry)
    server = ScriptedServer(batch)
    config = SessionConfig(close_timeout=1.0, response_timeout=0.05, reconnect=None)

    async def connector() -> ScriptedServer:
        return server

    session = RealtimeSession(
        AGENT, connector=connector, telemetry=telemetry, config=config, url="ws://unused"
    )
    events: list[Any] = []
    first = len(RAISED)
    async with session:
        async with asyncio.timeout(5):
            while not server.drained or session.ledger.open_count:
                await asyncio.sleep(0.001)
    async for event in session:
        events.append(event)
    return events, RAISED[first:], registry, server


@given(st.lists(frames, max_size=12))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_session_survives_any_frames_and_loses_no_call(batch: list[str | bytes]) -> None:
    events, raised, registry, server = asyncio.run(drive(batch))
    seen: set[str] = set()
    rejected = 0
    for frame in batch:
        ids, bad = calls_in(frame)
        seen.update(ids)
        rejected += bad
    acknowledged = [e.call_id for e in events if isinstance(e, OutputAcknowledged)]
    incomplete = [e.call_id for e in events if isinstance(e, CallIncomplete)]
    # every call seen is settled exactly once: delivered, or accounted for as incomplete
    assert sorted(acknowledged + incomplete) == sorted(seen)
    # exactly one output per acknowledged call, beyond the attempts a fuzzed error refused
    sent_ids = [call_id for call_id, _ in server.outputs]
    for call_id in acknowledged:
        refused = sum(
            isinstance(e, OutputSendFailed)
            and e.call_id == call_id
            and isinstance(e.error, ServerRejectedError)
            for e in events
        )
        assert sent_ids.count(call_id) == 1 + refused, call_id
    # every exception a tool raised reached the app exactly once, as itself
    delivered = [e.error for e in events if isinstance(e, ToolFailed) and e.error in raised]
    assert sorted(map(id, delivered)) == sorted(map(id, raised))
    # every rejected frame is counted; nothing inside rtguard failed
    counted = sum(
        registry.get_sample_value("rtguard_protocol_errors_total", {"kind": kind}) or 0.0
        for kind in (
            "invalid_json",
            "invalid_utf8",
            "not_an_object",
            "missing_type",
            "invalid_field",
        )
    )
    assert counted == rejected
    assert registry.get_sample_value("rtguard_swallowed_errors_total", {"place": "dispatch"}) == 0
