"""Every way a call can end, side by side: the model got its output, the app got the original
error exactly once, and the metric and span say what happened.

Each case is data run through the same three tests, mirroring how the library treats a
failure: one completion path, with a different ToolOutput or IncompleteReason flowing through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from opentelemetry.trace import StatusCode

from conftest import Run, run_scenario
from faults import FailingSends, InjectedSendError, fail_every_output, fail_first_output
from rtguard import (
    Agent,
    CallIncomplete,
    ErrorSwallowed,
    HandoffCompleted,
    HandoffError,
    IncompleteReason,
    InvalidArgumentsError,
    Outcome,
    RetryPolicy,
    ServerRejectedError,
    SessionClosed,
    SessionConfig,
    ToolFailed,
    ToolFailure,
    ToolResultError,
    ToolTimeoutError,
    Transport,
    UnknownToolError,
    function_tool,
    handoff,
)
from rtguard.simulator import CallSpec, Faults, Scenario

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.005)
RAISED: list[BaseException] = []  # every exception a tool (or handoff) raised, in order


@function_tool
async def echo(text: str) -> str:
    """Repeat the text."""
    return text


@function_tool
async def boom() -> str:
    """Always fails."""
    error = ValueError(f"boom #{len(RAISED)}")
    RAISED.append(error)
    raise error


@function_tool
def sync_boom() -> str:
    """Always fails, in a worker thread."""
    error = RuntimeError(f"sync boom #{len(RAISED)}")
    RAISED.append(error)
    raise error


@function_tool(timeout=0.05)
async def slow() -> str:
    await asyncio.sleep(5)
    return "never"


@function_tool(timeout=0.05, timeout_behavior="raise_exception")
async def slow_strict() -> str:
    await asyncio.sleep(5)
    return "never"


@function_tool
async def cancelled() -> str:
    """Awaited work someone else cancelled."""
    error = asyncio.CancelledError("upstream request cancelled")
    RAISED.append(error)
    raise error


class Unprintable(Exception):
    """An exception whose str() and repr() raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@function_tool
async def unprintable() -> str:
    error = Unprintable()
    RAISED.append(error)
    raise error


@function_tool
def sync_stop() -> str:
    """StopIteration from a worker thread (asyncio cannot put it into a Future)."""
    error = StopIteration("sync")
    RAISED.append(error)
    raise error


@function_tool
async def async_stop() -> str:
    """Python turns this into a RuntimeError (PEP 479); the app gets the StopIteration."""
    error = StopIteration("async")
    RAISED.append(error)
    raise error


@function_tool
async def stop_async() -> str:
    error = StopAsyncIteration("would end the app's async for")
    RAISED.append(error)
    raise error


@function_tool
async def huge() -> str:
    return "x" * 2_000_000  # over the default max_output_bytes


def broken_formatter(failure: ToolFailure) -> str:
    raise LookupError("formatter bug")


def not_a_string(failure: ToolFailure) -> str:
    return {"error": "json object"}  # type: ignore[return-value]


@function_tool
async def sleepy() -> str:
    """Outlives the session's close_timeout."""
    await asyncio.sleep(5)
    return "late"


billing = Agent(name="billing", instructions="You handle billing.", tools=[echo])


def broken_billing() -> Agent:
    error = LookupError("billing directory unavailable")
    RAISED.append(error)
    raise error


def not_an_agent() -> Agent:
    return "billing"  # type: ignore[return-value]


support = Agent(
    name="support",
    instructions="You help.",
    tools=[
        echo,
        boom,
        sync_boom,
        slow,
        slow_strict,
        sleepy,
        cancelled,
        unprintable,
        sync_stop,
        async_stop,
        stop_async,
        huge,
    ],
    handoffs=[
        billing,
        handoff(broken_billing, tool_name="transfer_to_broken"),
        handoff(not_an_agent, tool_name="transfer_to_nobody"),
    ],
)


@dataclass
class Case:
    tool: str
    arguments: str = "{}"
    outcome: Outcome | None = Outcome.SUCCESS  # None: the model gets no output
    output: str = ""  # a substring of the model-visible output
    error: type[BaseException] | None = None  # what the app must receive, exactly once
    tool_raised: bool = False  # the error is the very object the tool raised
    raised_from_iterator: bool = False
    error_type: str | None = None  # span error.type and the duration metric's label
    incomplete: IncompleteReason | None = None
    config: SessionConfig = field(default_factory=SessionConfig)
    faults: Faults = field(default_factory=Faults)
    wrap: Callable[[Transport], Transport] | None = None
    send_attempts: int = 1


def failing(policy: Callable[[dict[str, object], int], bool]) -> Callable[[Transport], Transport]:
    return lambda inner: FailingSends(inner, policy)


CASES: dict[str, Case] = {
    "success": Case("echo", '{"text": "hi"}', output="hi"),
    "tool_raises": Case(
        "boom",
        outcome=Outcome.ERROR,
        output="ValueError: boom",
        error=ValueError,
        tool_raised=True,
        error_type="ValueError",
    ),
    "sync_tool_raises": Case(
        "sync_boom",
        outcome=Outcome.ERROR,
        output="RuntimeError",
        error=RuntimeError,
        tool_raised=True,
        error_type="RuntimeError",
    ),
    "timeout_error_as_result": Case(
        "slow",
        outcome=Outcome.TIMEOUT,
        output="timed out",
        error=ToolTimeoutError,
        error_type="timeout",
    ),
    "timeout_raise_exception": Case(
        "slow_strict",
        outcome=Outcome.TIMEOUT,
        output="timed out",
        error=ToolTimeoutError,
        raised_from_iterator=True,
        error_type="timeout",
    ),
    "unknown_tool": Case(
        "no_such_tool",
        outcome=Outcome.UNKNOWN_TOOL,
        output="no tool named",
        error=UnknownToolError,
        error_type="unknown_tool",
    ),
    "invalid_json": Case(
        "echo",
        "{not json",
        outcome=Outcome.INVALID_ARGUMENTS,
        output="not valid JSON",
        error=InvalidArgumentsError,
        error_type="invalid_arguments",
    ),
    "schema_mismatch": Case(
        "echo",
        '{"text": 5, "extra": 1}',
        outcome=Outcome.INVALID_ARGUMENTS,
        output="invalid arguments",
        error=InvalidArgumentsError,
        error_type="invalid_arguments",
    ),
    "handoff": Case("transfer_to_billing", output='"assistant": "billing"'),
    "handoff_raises": Case(
        "transfer_to_broken",
        outcome=Outcome.HANDOFF_FAILED,
        output="remain the active agent",
        error=LookupError,
        tool_raised=True,
        error_type="handoff_failed",
    ),
    "handoff_not_an_agent": Case(
        "transfer_to_nobody",
        outcome=Outcome.HANDOFF_FAILED,
        output="not an Agent",
        error=HandoffError,
        error_type="handoff_failed",
    ),
    "send_fails_once": Case(
        "boom",
        outcome=Outcome.ERROR,
        output="boom",
        error=ValueError,
        tool_raised=True,
        error_type="ValueError",
        wrap=failing(fail_first_output),
        send_attempts=2,
        config=SessionConfig(retry=FAST_RETRY),
    ),
    "send_fails_once_sync_path": Case(
        "boom",
        outcome=Outcome.ERROR,
        output="boom",
        error=ValueError,
        tool_raised=True,
        error_type="ValueError",
        wrap=failing(fail_first_output),
        send_attempts=2,
        config=SessionConfig(retry=FAST_RETRY, async_tool_calls=False),
    ),
    "send_retries_spent": Case(
        "boom",
        outcome=None,
        error=ValueError,
        tool_raised=True,
        error_type="ValueError",
        incomplete=IncompleteReason.RETRIES_EXHAUSTED,
        wrap=failing(fail_every_output),
        send_attempts=3,
        config=SessionConfig(retry=FAST_RETRY),
    ),
    "send_retries_spent_sync_path": Case(
        "boom",
        outcome=None,
        error=ValueError,
        tool_raised=True,
        error_type="ValueError",
        incomplete=IncompleteReason.RETRIES_EXHAUSTED,
        wrap=failing(fail_every_output),
        send_attempts=3,
        config=SessionConfig(retry=FAST_RETRY, async_tool_calls=False),
    ),
    "send_fails_on_success": Case(
        "echo",
        '{"text": "x"}',
        output="x",
        wrap=failing(fail_first_output),
        send_attempts=2,
        config=SessionConfig(retry=FAST_RETRY),
    ),
    "retries_spent_on_success": Case(
        "echo",
        '{"text": "x"}',
        outcome=None,
        incomplete=IncompleteReason.RETRIES_EXHAUSTED,
        error_type="output_send_failed",
        wrap=failing(fail_every_output),
        send_attempts=3,
        config=SessionConfig(retry=FAST_RETRY),
    ),
    "server_refuses_once": Case(
        "echo",
        '{"text": "y"}',
        output="y",
        faults=Faults(reject_output=frozenset({0}), reject_type="server_error"),
        send_attempts=2,
        config=SessionConfig(retry=FAST_RETRY),
    ),
    "server_refuses_for_good": Case(  # an invalid_request_error is never retried
        "echo",
        '{"text": "y"}',
        outcome=None,
        incomplete=IncompleteReason.REJECTED_BY_SERVER,
        error_type="output_send_failed",
        faults=Faults(reject_output=frozenset({0})),
    ),
    "server_error_refusals_spent": Case(
        "echo",
        '{"text": "y"}',
        outcome=None,
        incomplete=IncompleteReason.REJECTED_BY_SERVER,
        error_type="output_send_failed",
        faults=Faults(reject_output=frozenset({0}), reject_type="server_error"),
        config=SessionConfig(retry=RetryPolicy(max_attempts=1)),
    ),
    "tool_raises_cancelled": Case(
        "cancelled",
        outcome=Outcome.ERROR,
        output="CancelledError",
        error=asyncio.CancelledError,
        tool_raised=True,
        error_type="CancelledError",
    ),
    "tool_raises_cancelled_sync_path": Case(
        "cancelled",
        outcome=Outcome.ERROR,
        output="CancelledError",
        error=asyncio.CancelledError,
        tool_raised=True,
        error_type="CancelledError",
        config=SessionConfig(async_tool_calls=False),
    ),
    "error_str_raises": Case(
        "unprintable",
        outcome=Outcome.ERROR,
        output="Unprintable",
        error=Unprintable,
        tool_raised=True,
        error_type="Unprintable",
    ),
    "sync_tool_raises_stop_iteration": Case(
        "sync_stop",
        outcome=Outcome.ERROR,
        output="StopIteration: sync",
        error=StopIteration,
        tool_raised=True,
        error_type="StopIteration",
    ),
    "async_tool_raises_stop_iteration": Case(
        "async_stop",
        outcome=Outcome.ERROR,
        output="StopIteration: async",
        error=StopIteration,
        tool_raised=True,
        error_type="StopIteration",
    ),
    "stop_async_iteration_under_raise": Case(  # an event: raising it would end the loop
        "stop_async",
        outcome=Outcome.ERROR,
        output="StopAsyncIteration",
        error=StopAsyncIteration,
        tool_raised=True,
        error_type="StopAsyncIteration",
        config=SessionConfig(on_tool_error="raise"),
    ),
    "result_too_large": Case(
        "huge",
        outcome=Outcome.ERROR,
        output="the limit is 1000000",
        error=ToolResultError,
        error_type="ToolResultError",
    ),
    "failure_output_raises": Case(
        "boom",
        outcome=Outcome.ERROR,
        output="ValueError: boom",
        error=ValueError,
        tool_raised=True,
        error_type="ValueError",
        config=SessionConfig(failure_output=broken_formatter),
    ),
    "failure_output_not_a_string": Case(
        "boom",
        outcome=Outcome.ERROR,
        output="ValueError: boom",
        error=ValueError,
        tool_raised=True,
        error_type="ValueError",
        config=SessionConfig(failure_output=not_a_string),
    ),
    "handoff_refused_by_server": Case(
        "transfer_to_billing",
        outcome=Outcome.HANDOFF_FAILED,
        output="remain the active agent",
        error=ServerRejectedError,
        error_type="handoff_failed",
        faults=Faults(reject_session_update=frozenset({1})),  # 0 is the session's own
    ),
    "on_tool_error_close": Case(
        "boom",
        outcome=Outcome.ERROR,
        output="boom",
        error=ValueError,
        tool_raised=True,
        raised_from_iterator=True,
        error_type="ValueError",
        config=SessionConfig(on_tool_error="close"),
    ),
    "on_tool_error_raise_sync_path": Case(
        "sync_boom",
        outcome=Outcome.ERROR,
        output="sync boom",
        error=RuntimeError,
        tool_raised=True,
        raised_from_iterator=True,
        error_type="RuntimeError",
        config=SessionConfig(on_tool_error="raise", async_tool_calls=False),
    ),
}

_RUNS: dict[str, tuple[Run, list[BaseException]]] = {}


async def run_case(name: str) -> tuple[Run, list[BaseException]]:
    """Run a case once (the three tests share it); returns the run and what its tools raised."""
    if name not in _RUNS:
        case = CASES[name]
        first = len(RAISED)
        scenario = Scenario(calls=(CallSpec(case.tool, case.arguments),), faults=case.faults)

        def settled(run: Run) -> bool:
            return any(
                type(e).__name__ in ("OutputAcknowledged", "CallIncomplete") for e in run.events
            ) and (not case.raised_from_iterator or bool(run.raised))

        run = await run_scenario(
            scenario, support, config=case.config, wrap=case.wrap, done=settled
        )
        _RUNS[name] = (run, RAISED[first:])
    return _RUNS[name]


@pytest.mark.parametrize("name", CASES)
async def test_model_got_its_output(name: str) -> None:
    case = CASES[name]
    run, _ = await run_case(name)
    (call,) = run.sim.calls.values()
    if case.outcome is None:
        assert call.outputs == []
        (incomplete,) = run.of_type(CallIncomplete)
        assert incomplete.reason is case.incomplete
        assert incomplete.call_id == call.call_id
    else:
        assert len(call.outputs) == 1, call.outputs
        assert case.output in call.outputs[0]
        assert "Traceback" not in call.outputs[0]
        assert run.sim.asked_to_answer(call)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.error is not None])
async def test_app_got_the_original_error_once(name: str) -> None:
    case = CASES[name]
    run, tool_raised = await run_case(name)
    delivered = [e.error for e in run.of_type(ToolFailed)] + run.raised
    assert len(delivered) == 1, delivered
    (error,) = delivered
    assert type(error) is case.error
    if case.tool_raised:
        assert len(tool_raised) == 1
        assert error is tool_raised[0]
    if case.raised_from_iterator:
        assert run.raised == [error]
        assert run.of_type(ToolFailed) == []
    if isinstance(error, InvalidArgumentsError):
        assert error.__cause__ is not None  # the JSON or schema error behind it


@pytest.mark.parametrize("name", CASES)
async def test_metric_and_span(name: str) -> None:
    case = CASES[name]
    run, _ = await run_case(name)
    (span,) = run.spans_named("execute_tool")
    attributes = span.attributes or {}
    (call,) = run.sim.calls.values()
    assert attributes["gen_ai.tool.call.id"] == call.call_id
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["rtguard.call.send_attempts"] == case.send_attempts
    assert attributes["rtguard.call.output_delivered"] is (case.outcome is not None)
    sends = [s for s in run.spans if s.name == "rtguard.send_output"]
    assert len(sends) == case.send_attempts
    assert all(s.parent is not None and s.parent.span_id == span.context.span_id for s in sends)
    assert [s.attributes["rtguard.send.attempt"] for s in sends if s.attributes] == list(
        range(1, case.send_attempts + 1)
    )
    label = call.name if name != "unknown_tool" else "_unknown"
    if case.error_type is None:
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in attributes
    else:
        assert span.status.status_code is StatusCode.ERROR
        assert attributes["error.type"] == case.error_type
    duration_labels = {"gen_ai_tool_name": label, "error_type": case.error_type or ""}
    assert run.sample("gen_ai_execute_tool_duration_seconds_count", **duration_labels) == 1
    if case.outcome is not None:
        assert (
            run.sample("rtguard_tool_calls_total", gen_ai_tool_name=label, outcome=case.outcome)
            == 1
        )
        assert run.sample("rtguard_output_latency_seconds_count", gen_ai_tool_name=label) == 1
    for reason in IncompleteReason:
        expected = 1.0 if reason is case.incomplete else 0.0
        assert run.sample("rtguard_calls_without_output_total", reason=reason) == expected
    assert run.sample("rtguard_output_send_retries_total") == case.send_attempts - 1


async def test_handoff_switches_agent_before_the_output() -> None:
    run, _ = await run_case("handoff")
    (call,) = run.sim.calls.values()
    assert run.session.agent is billing
    seq, session = run.sim.session_updates[-1]
    assert session["instructions"] == "You handle billing."
    assert [t["name"] for t in session["tools"]] == ["echo"]
    assert call.output_seq is not None
    assert seq < call.output_seq
    (handoff_call,) = run.spans_named("execute_tool")
    attributes = dict(handoff_call.attributes or {})
    assert attributes["gen_ai.agent.handoff.source.name"] == "support"
    assert attributes["gen_ai.agent.handoff.target.name"] == "billing"
    assert attributes["gen_ai.agent.name"] == "support"  # the agent that issued the call


@pytest.mark.parametrize(
    "name", ["handoff_raises", "handoff_not_an_agent", "handoff_refused_by_server"]
)
async def test_failed_handoff_keeps_the_agent(name: str) -> None:
    run, _ = await run_case(name)
    assert run.session.agent is support
    assert len(run.sim.session_updates) == 1  # only the session's own was applied
    assert run.of_type(HandoffCompleted) == []


@pytest.mark.parametrize("name", ["failure_output_raises", "failure_output_not_a_string"])
async def test_a_broken_failure_formatter_is_reported_and_replaced(name: str) -> None:
    run, _ = await run_case(name)
    (swallowed,) = run.of_type(ErrorSwallowed)
    assert swallowed.place == "failure_output"
    assert run.sample("rtguard_swallowed_errors_total", place="failure_output") == 1


async def test_stop_async_iteration_does_not_end_the_apps_loop() -> None:
    run, _ = await run_case("stop_async_iteration_under_raise")
    assert run.raised == []
    assert isinstance(run.events[-1], SessionClosed)  # the app kept iterating to the end


async def test_send_failure_never_reruns_the_tool() -> None:
    for name in ("send_fails_once", "send_fails_once_sync_path", "send_retries_spent"):
        _, tool_raised = await run_case(name)
        assert len(tool_raised) == 1, name


async def test_incomplete_call_carries_the_send_error() -> None:
    run, _ = await run_case("send_retries_spent")
    (incomplete,) = run.of_type(CallIncomplete)
    assert isinstance(incomplete.last_error, InjectedSendError)
    run, _ = await run_case("server_refuses_for_good")
    (incomplete,) = run.of_type(CallIncomplete)
    assert isinstance(incomplete.last_error, ServerRejectedError)


async def test_on_tool_error_close_sends_the_output_then_closes() -> None:
    run, _ = await run_case("on_tool_error_close")
    assert run.session.closed
    (call,) = run.sim.calls.values()
    assert len(call.outputs) == 1


def test_cases_cover_every_outcome_and_reason() -> None:
    assert {c.outcome for c in CASES.values()} >= set(Outcome) - {Outcome.REJECTED}
    reasons = {c.incomplete for c in CASES.values()}
    assert reasons >= {IncompleteReason.RETRIES_EXHAUSTED, IncompleteReason.REJECTED_BY_SERVER}
