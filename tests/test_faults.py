"""Hostile conditions on real sockets: a fault-injecting relay between the session and the
simulator, plus simulator faults. Every test ends with the same invariant check."""

from __future__ import annotations

import asyncio
import dataclasses

from opentelemetry.trace import StatusCode

from conftest import Run, run_scenario
from invariant import assert_invariant
from rtguard import (
    Agent,
    CallIncomplete,
    IncompleteReason,
    OutputAcknowledged,
    SessionClosed,
    SessionConfig,
    function_tool,
)
from rtguard.simulator import CallSpec, Faults, FrameFault, Scenario

RUNS: list[str] = []
ERRORS: list[BaseException] = []


@function_tool
async def work(n: int) -> str:
    RUNS.append(str(n))
    if n % 3 == 0:
        error = ValueError(f"n={n} is a multiple of three")
        ERRORS.append(error)
        raise error
    await asyncio.sleep(0.01)
    return f"done {n}"


@function_tool
async def linger() -> str:
    await asyncio.sleep(0.3)
    return "finally"


agent = Agent(name="hardy", tools=[work, linger])
QUICK = SessionConfig(ack_timeout=0.3, response_timeout=0.3, close_timeout=1.0)


def calls(count: int) -> tuple[CallSpec, ...]:
    return tuple(CallSpec("work", f'{{"n": {i}}}') for i in range(1, count + 1))


def settled(count: int):  # type: ignore[no-untyped-def]
    return lambda run: (
        sum(isinstance(e, OutputAcknowledged | CallIncomplete) for e in run.events) >= count
    )


async def run_with(
    faults: list[FrameFault], scenario: Scenario, **kwargs: object
) -> tuple[Run, list[BaseException]]:
    first = len(ERRORS)
    kwargs.setdefault("config", QUICK)
    run = await run_scenario(scenario, agent, frame_faults=faults, **kwargs)  # type: ignore[arg-type]
    return run, ERRORS[first:]


async def test_cut_in_the_middle_of_a_call() -> None:
    scenario = Scenario(
        calls=(CallSpec("linger"), CallSpec("work", '{"n": 1}')), calls_per_response=2
    )
    cut = FrameFault("to_server", "conversation.item.create:function_call_output", "cut")
    run, errors = await run_with(
        [cut],
        scenario,
        config=dataclasses.replace(QUICK, reconnect=None),
        done=lambda r: any(isinstance(e, SessionClosed) for e in r.events),
    )
    assert_invariant(run, errors)
    reasons = {e.reason for e in run.of_type(CallIncomplete)}
    assert reasons == {IncompleteReason.CONNECTION_LOST}
    assert len(run.of_type(CallIncomplete)) == 2
    assert run.sample("rtguard_calls_without_output_total", reason="connection_lost") == 2


async def test_duplicated_call_frames_run_each_tool_once() -> None:
    RUNS.clear()
    faults = [
        FrameFault("to_client", "response.function_call_arguments.done", "duplicate", times=None),
        FrameFault("to_client", "response.output_item.done", "duplicate", times=None),
        FrameFault("to_client", "response.done", "duplicate", times=3),
    ]
    run, errors = await run_with(faults, Scenario(calls=calls(9), calls_per_response=3))
    run.sim.assert_invariant()
    assert_invariant(run, errors)
    assert sorted(RUNS, key=int) == [str(n) for n in range(1, 10)]


async def test_late_and_reordered_frames() -> None:
    """A server that sends events out of order and confirms late (our own frames stay in order:
    one TCP stream cannot reorder them)."""
    faults = [
        FrameFault(
            "to_client", "response.function_call_arguments.done", "delay", delay=0.05, times=None
        ),
        FrameFault(
            "to_client", "conversation.item.added:function_call_output", "delay", delay=0.1, times=5
        ),
    ]
    run, errors = await run_with(faults, Scenario(calls=calls(12), calls_per_response=2))
    run.sim.assert_invariant()
    assert_invariant(run, errors)
    assert len(errors) == 4


async def test_a_lost_acknowledgement_is_reported_not_resent() -> None:
    faults = [
        FrameFault("to_client", "conversation.item.added:function_call_output", "drop"),
        FrameFault("to_client", "conversation.item.done:function_call_output", "drop"),
    ]
    run, errors = await run_with(faults, Scenario(calls=calls(2)), done=settled(2))
    assert_invariant(run, errors)
    (incomplete,) = run.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.UNACKNOWLEDGED
    assert len(run.sim.calls[incomplete.call_id].outputs) == 1  # the server had it: never resent


async def test_a_lost_output_frame_is_reported() -> None:
    faults = [FrameFault("to_server", "conversation.item.create:function_call_output", "drop")]
    run, errors = await run_with(faults, Scenario(calls=calls(2)), done=settled(2))
    assert_invariant(run, errors)
    (incomplete,) = run.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.UNACKNOWLEDGED
    assert run.sim.calls[incomplete.call_id].outputs == []


async def test_missing_response_done_does_not_silence_the_model() -> None:
    faults = [FrameFault("to_client", "response.done", "drop", times=2)]
    run, errors = await run_with(faults, Scenario(calls=calls(4), calls_per_response=2))
    run.sim.assert_invariant()  # every output was followed by response.create
    assert_invariant(run, errors)
    assert run.sample("rtguard_protocol_errors_total", kind="response_timeout") >= 1
    given_up = [
        dict(s.attributes or {})
        for s in run.spans_named("realtime_inference")
        if s.status.status_code is StatusCode.ERROR
    ]
    assert len(given_up) == 2  # each response whose response.done was lost: given up on
    for generation in given_up:
        assert generation["error.type"] == "response_timeout"
        assert generation["gen_ai.response.finish_reasons"] == ("error",)


async def test_a_stalled_network_delays_but_loses_nothing() -> None:
    async def stall_once(run: Run, event: object) -> None:
        if (
            isinstance(event, OutputAcknowledged)
            and run.proxy is not None
            and not getattr(run, "stalled", False)
        ):
            run.stalled = True  # type: ignore[attr-defined]
            asyncio.get_running_loop().create_task(run.proxy.stall(0.2))

    run, errors = await run_with([], Scenario(calls=calls(10), rate=50), on_event=stall_once)
    run.sim.assert_invariant()
    assert_invariant(run, errors)


async def test_server_faults_refusals_and_late_acks() -> None:
    scenario = Scenario(
        calls=calls(10),
        faults=Faults(reject_output=frozenset({1, 4}), reject_type="server_error", ack_delay=0.05),
    )
    run, errors = await run_with([], scenario)
    run.sim.assert_invariant()
    assert_invariant(run, errors)
    assert sum(c.refused_outputs for c in run.sim.calls.values()) == 2
