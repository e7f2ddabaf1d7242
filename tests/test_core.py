"""The session core as a pure state machine: inputs in, events, frames, jobs and deadlines
out, no sockets and no event loop. Every rule of a call's life is checked here in
microseconds; the WebSocket tests prove the wiring."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core_harness import Core, billing, output_frames, support
from rtguard import (
    CallIncomplete,
    ErrorSwallowed,
    HandoffCompleted,
    IncompleteReason,
    Outcome,
    OutputAcknowledged,
    OutputSendFailed,
    OutputSent,
    ProtocolErrorEvent,
    RetryPolicy,
    ServerRejectedError,
    SessionClosed,
    SessionConfig,
    SessionStarted,
    ToolApprovalRequested,
    ToolCallReceived,
    ToolCallStarted,
    ToolFailed,
    ToolRejected,
    ToolResultError,
    ToolSucceeded,
)
from rtguard._core import (
    CoreState,
    Execute,
    Failed,
    Frame,
    Prepared,
    Resolved,
    ResolveHandoff,
    Returned,
    SessionCore,
)
from rtguard._events import RaiseToApp, ToolFailedRaised
from rtguard._ledger import CallState, InvalidTransition


def test_one_response_create_per_response_after_its_done_and_every_output() -> None:
    c = Core()
    c.server("response.created", response={"id": "resp_1"})
    c.call("a")
    c.call("b")
    c.run("a")
    c.write_all()
    c.response_done()
    assert c.take("response.create") == []  # "b" has no output yet
    c.run("b")
    c.write_all()
    (create,) = c.take("response.create")
    assert create["event_id"].startswith("evt_rtg_")
    c.ack("a")
    c.ack("b")
    assert [e.call_id for e in c.of_type(OutputAcknowledged)] == ["a", "b"]
    assert c.core.ledger.open_count == 0


def test_an_ack_before_the_write_returns_still_asks_for_a_response() -> None:
    """Issue 9 #5: the server confirmed the output before our send() returned."""
    c = Core()
    c.call("a", response=None)
    c.run("a")
    (frame,) = output_frames(c.frames)
    c.ack("a")  # the write has not reported back yet
    c.core.frame_written(frame, c.now)  # ...and now it does: stale, ignored
    c.drain()
    assert len(c.take("response.create")) == 1
    kinds = [type(e) for e in c.events if type(e) in (OutputSent, OutputAcknowledged)]
    assert kinds == [OutputSent, OutputAcknowledged]


def test_response_create_waits_for_an_idle_server_and_retries_a_busy_refusal() -> None:
    c = Core()
    c.server("response.created", response={"id": "resp_1"})
    c.call("a")
    c.run("a")
    c.write_all()
    c.response_done()
    (create,) = c.take("response.create")
    c.server(
        "error",
        error={
            "type": "invalid_request_error",
            "message": "busy",
            "code": "conversation_already_has_active_response",
            "event_id": create["event_id"],
        },
    )
    assert c.take("response.create") == []
    c.server("response.created", response={"id": "resp_2"})
    c.response_done("resp_2")
    (again,) = c.take("response.create")
    assert again["event_id"] != create["event_id"]


def test_a_repeated_call_id_runs_the_tool_once() -> None:
    c = Core(remember_settled_calls=2)
    c.call("a", response=None)
    c.call("a", response=None)
    assert len(c.of_type(ToolCallReceived)) == 1
    c.run("a")
    c.write_all()
    c.ack("a")
    c.call("a", response=None)
    assert len(c.of_type(ToolCallReceived)) == 1
    assert c.jobs == []


def test_a_response_repeating_a_settled_call_runs_it_once_however_small_the_window() -> None:
    """The ids of a response's calls are kept until its response.done (which lists them
    all again), not merely while they fit the window of settled ids."""
    c = Core(remember_settled_calls=0)
    c.server("response.created", response={"id": "resp_1"})
    for call_id in ("a", "b", "c"):
        c.call(call_id)
        c.run(call_id)
    c.write_all()
    for call_id in ("a", "b", "c"):
        c.ack(call_id)
    calls = [
        {"type": "function_call", "call_id": call_id, "name": "lookup", "arguments": "{}"}
        for call_id in ("a", "b", "c")
    ]
    c.server("response.done", response={"id": "resp_1", "status": "completed", "output": calls})
    assert len(c.of_type(ToolCallReceived)) == 3
    assert c.jobs == []


def test_the_ledger_forgets_settled_ids_once_their_response_ended() -> None:
    """Memory is bounded by the responses in progress, not by the session's length."""
    c = Core(remember_settled_calls=4)
    for i in range(50):
        response = f"resp_{i}"
        c.server("response.created", response={"id": response})
        c.call(f"call_{i}", response=response)
        c.run(f"call_{i}")
        c.write_all()
        c.ack(f"call_{i}")
        c.response_done(response)
        c.take("response.create")
    assert c.core.ledger.remembered_count == 4
    c.call("call_0", response="resp_again")  # long forgotten: taken as a new call
    assert len(c.of_type(ToolCallReceived)) == 51


def test_a_response_that_never_ends_holds_its_ids_only_so_long() -> None:
    c = Core(remember_settled_calls=0)
    for i in range(200):  # each call's response is lost: no response.done ever comes
        c.call(f"call_{i}", response=f"resp_{i}")
        c.run(f"call_{i}")
        c.write_all()
        c.ack(f"call_{i}")
    assert c.core.ledger.remembered_count == 64


def test_a_failed_write_is_retried_from_the_cached_output_then_given_up() -> None:
    c = Core()
    c.call("a", response=None)
    c.run("a", Failed(Outcome.ERROR, ValueError("boom")))
    for _attempt in (1, 2, 3):
        (frame,) = output_frames(c.frames)
        c.frames.clear()
        c.core.frame_failed(frame, OSError("write"), True, c.now)
        c.drain()
        c.advance(1.0)
    assert [e.will_retry for e in c.of_type(OutputSendFailed)] == [True, True, False]
    (incomplete,) = c.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.RETRIES_EXHAUSTED
    assert c.jobs == []  # the tool ran once


def test_an_ack_for_a_write_that_raised_settles_the_call_and_drops_the_retry() -> None:
    c = Core()
    c.call("a", response=None)
    c.run("a")
    (frame,) = output_frames(c.frames)
    c.frames.clear()
    c.core.frame_failed(frame, OSError("raised after the frame left"), True, c.now)
    c.drain()
    c.ack("a")
    c.advance(5.0)
    assert output_frames(c.frames) == []
    assert len(c.of_type(OutputAcknowledged)) == 1


def refuse(c: Core, frame: Frame, error_type: str) -> None:
    error = {"type": error_type, "code": "x", "message": "no", "event_id": frame.event_id}
    c.server("error", error=error)


def test_only_a_server_error_refusal_is_retried() -> None:
    """Issue 9 #16: an invalid_request_error will never succeed."""
    c = Core()
    c.call("a", response=None)
    c.call("b", response=None)
    c.run("a")
    c.run("b")
    frame_a, frame_b = output_frames(c.frames)
    c.write_all()
    refuse(c, frame_a, "invalid_request_error")
    refuse(c, frame_b, "server_error")
    (incomplete,) = c.of_type(CallIncomplete)
    assert (incomplete.call_id, incomplete.reason) == ("a", IncompleteReason.REJECTED_BY_SERVER)
    assert isinstance(incomplete.last_error, ServerRejectedError)
    assert incomplete.last_error.error_type == "invalid_request_error"
    c.advance(1.0)
    (resent,) = output_frames(c.frames)
    assert resent.call is not None
    assert resent.call.call_id == "b"


def test_a_refusal_before_the_write_returns_is_not_lost() -> None:
    c = Core()
    c.call("a", response=None)
    c.run("a")
    (frame,) = output_frames(c.frames)
    c.frames.clear()
    refuse(c, frame, "server_error")
    c.core.frame_written(frame, c.now)  # stale: the refusal already decided
    c.drain()
    c.advance(1.0)
    assert len(output_frames(c.frames)) == 1


def test_an_output_never_confirmed_is_incomplete_not_resent() -> None:
    c = Core(ack_timeout=10.0)
    c.call("a", response=None)
    c.run("a")
    c.write_all()
    c.advance(10.0)
    (incomplete,) = c.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.UNACKNOWLEDGED
    assert output_frames(c.frames) == []
    c.ack("a")  # late: changes nothing
    assert c.of_type(OutputAcknowledged) == []


def test_a_lost_response_done_does_not_block_response_create_forever() -> None:
    c = Core(response_timeout=60.0)
    c.server("response.created", response={"id": "resp_1"})
    c.call("a")
    c.run("a")
    c.write_all()
    assert c.take("response.create") == []
    c.advance(60.0)
    assert [e.reason for e in c.of_type(ProtocolErrorEvent)] == ["response_timeout"]
    assert len(c.take("response.create")) == 1


def test_deadlines_do_not_pile_up_over_many_responses() -> None:
    c = Core()
    before = len(c.core._deadlines)  # the connection's rollover deadlines
    for n in range(1000):
        c.server("response.created", response={"id": f"r{n}"})
        c.response_done(f"r{n}")
    assert len(c.core._deadlines) == before
    assert len(c.core._deadlines._heap) < 200


def test_a_call_is_bound_to_the_agent_active_when_issued() -> None:
    """Issue 9 #6: [transfer_to_billing, strict] in one response; strict is support's."""
    c = Core()
    c.call("h", name="transfer_to_billing")
    c.call("s", name="strict")
    (resolve,) = [j for j in c.jobs if isinstance(j, ResolveHandoff)]
    c.finish_job("h", Resolved(billing))
    (update,) = c.take("session.update")
    assert update["session"]["instructions"] == "Billing."
    c.server("session.updated", session={"type": "realtime", "id": "sess_1"})
    assert c.core.agent is billing
    c.run("s")
    assert [e.tool_name for e in c.of_type(ToolSucceeded)] == ["transfer_to_billing", "strict"]
    del resolve


def test_a_handoff_is_confirmed_before_its_output_and_a_refusal_keeps_the_agent() -> None:
    """Issue 9 #7."""
    c = Core()
    c.call("h", name="transfer_to_billing", response=None)
    c.finish_job("h", Resolved(billing))
    assert output_frames(c.frames) == []  # no output before the server confirms
    frame = next(f for f in c.frames if json.loads(f.text)["type"] == "session.update")
    c.write_all()
    error = {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "no",
        "event_id": frame.event_id,
    }
    c.server("error", error=error)
    assert c.core.agent is support
    (failed,) = c.of_type(ToolFailed)
    assert failed.outcome is Outcome.HANDOFF_FAILED
    assert isinstance(failed.error, ServerRejectedError)
    assert c.of_type(HandoffCompleted) == []
    assert "remain the active agent" in failed.output


def test_an_unconfirmed_handoff_fails_after_the_ack_timeout() -> None:
    c = Core(ack_timeout=5.0)
    c.call("h", name="transfer_to_billing", response=None)
    c.finish_job("h", Resolved(billing))
    c.write_all()
    c.advance(5.0)
    (failed,) = c.of_type(ToolFailed)
    assert failed.outcome is Outcome.HANDOFF_FAILED
    assert c.core.agent is support
    c.server("session.updated", session={"type": "realtime"})  # late: changes nothing
    assert c.core.agent is support


def test_one_call_at_a_time_without_async_tool_calls() -> None:
    """Issue 9 #4: the core keeps reading (acks) while the one running tool works."""
    c = Core(async_tool_calls=False, ack_timeout=1.0)
    c.call("a", response=None)
    c.call("b", response=None)
    assert [j.call.call_id for j in c.jobs] == ["a"]
    c.run("a")
    c.write_all()
    assert [j.call.call_id for j in c.jobs] == ["b"]  # "b" starts once "a" has its output
    c.finish_job("b")  # prepared; its tool now runs for long
    c.ack("a")  # read while "b" runs
    c.advance(5.0)
    assert [e.call_id for e in c.of_type(OutputAcknowledged)] == ["a"]
    assert c.of_type(CallIncomplete) == []


def test_a_response_done_item_without_call_id_leaves_the_others_registered() -> None:
    """Issue 9 #14."""
    c = Core()
    c.server("response.created", response={"id": "resp_1"})
    good = {"type": "function_call", "call_id": "ok", "name": "lookup", "arguments": "{}"}
    bad = {"type": "function_call", "name": "lookup", "arguments": "{}"}
    c.server(
        "response.done", response={"id": "resp_1", "status": "completed", "output": [bad, good]}
    )
    assert [e.reason for e in c.of_type(ProtocolErrorEvent)] == ["invalid_field"]
    assert [e.call_id for e in c.of_type(ToolCallReceived)] == ["ok"]
    c.run("ok", Returned("x"))
    c.write_all()
    assert len(c.take("response.create")) == 1  # at once, not after response_timeout


def test_an_oversized_result_is_a_failure_output_for_that_call_alone() -> None:
    """Issue 9 #13."""
    c = Core(max_output_bytes=1000)
    c.call("big", response=None)
    c.call("small", response=None)
    c.run("big", Returned("é" * 600))  # 600 characters, 1,200 bytes
    c.run("small", Returned("fine"))
    (failed,) = c.of_type(ToolFailed)
    assert isinstance(failed.error, ToolResultError)
    assert "1200 bytes; the limit is 1000" in str(failed.error)
    assert [e.call_id for e in c.of_type(ToolSucceeded)] == ["small"]
    assert all(len(f.text) < 2000 for f in output_frames(c.frames))


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


def broken_formatter(failure: object) -> str:
    raise LookupError("formatter bug")


def not_a_string(failure: object) -> str:
    return {"json": "object"}  # type: ignore[return-value]


@pytest.mark.parametrize("formatter", [broken_formatter, not_a_string])
def test_a_broken_failure_formatter_still_gives_the_model_an_output(formatter: Any) -> None:
    """Issue 9 #2 and #15: the default text, without trusting str() of the error."""
    c = Core(failure_output=formatter)
    c.call("a", response=None)
    error = Unprintable()
    c.run("a", Failed(Outcome.ERROR, error))
    (failed,) = c.of_type(ToolFailed)
    assert failed.error is error
    assert "Unprintable" in failed.output
    (frame,) = output_frames(c.frames)
    assert json.loads(frame.text)["item"]["output"] == failed.output
    (swallowed,) = c.of_type(ErrorSwallowed)
    assert swallowed.place == "failure_output"


def test_a_cancelled_response_gets_its_outputs_but_asks_for_no_response() -> None:
    """Issue 9 #17: whoever interrupted takes the turn."""
    c = Core()
    c.server("response.created", response={"id": "resp_1"})
    c.call("a")
    c.response_done(status="cancelled")
    c.run("a")
    c.write_all()
    c.ack("a")
    assert len(c.of_type(OutputAcknowledged)) == 1
    assert c.take("response.create") == []
    incomplete = {
        "type": "function_call",
        "call_id": "cut",
        "name": "lookup",
        "arguments": '{"ke',
        "status": "incomplete",
    }
    c.server(
        "response.done", response={"id": "resp_2", "status": "cancelled", "output": [incomplete]}
    )
    assert [e.call_id for e in c.of_type(ToolCallReceived)] == ["a"]  # cut off: never issued


def test_approval_then_execution_or_rejection() -> None:
    c = Core()
    c.call("a", response=None)
    c.call("b", response=None)
    c.finish_job("a", Prepared({"key": "k"}, needs_approval=True))
    c.finish_job("b", Prepared({"key": "k"}, needs_approval=True))
    assert [e.call_id for e in c.of_type(ToolApprovalRequested)] == ["a", "b"]
    c.core.approve("a", c.now)
    c.core.reject("b", "No.", c.now)
    c.drain()
    assert [e.call_id for e in c.of_type(ToolCallStarted)] == ["a"]
    assert [(e.call_id, e.output) for e in c.of_type(ToolRejected)] == [("b", "No.")]
    assert [type(j) for j in c.jobs] == [Execute]
    with pytest.raises(KeyError, match="no call awaiting approval"):
        c.core.approve("b", c.now)


def test_raise_policies_raise_after_the_settle_and_never_a_stop_iteration() -> None:
    c = Core(on_tool_error="raise")
    c.call("a", response=None)
    c.call("b", response=None)
    value_error, stop = ValueError("v"), StopAsyncIteration()
    c.run("a", Failed(Outcome.ERROR, value_error))
    c.run("b", Failed(Outcome.ERROR, stop))
    c.write_all()
    c.ack("a")
    c.ack("b")
    kinds = [
        type(e)
        for e in c.events
        if type(e) in (ToolFailedRaised, ToolFailed, OutputAcknowledged, RaiseToApp)
    ]
    assert kinds == [
        ToolFailedRaised,
        ToolFailed,
        OutputAcknowledged,
        RaiseToApp,
        OutputAcknowledged,
    ]
    (raised,) = c.of_type(RaiseToApp)
    assert raised.error is value_error


def test_a_timeout_with_raise_exception_is_raised_whatever_the_policy() -> None:
    c = Core()
    c.call("a", name="strict", response=None)
    c.run("a", Failed(Outcome.TIMEOUT, TimeoutError()))
    c.write_all()
    c.ack("a")
    assert len(c.of_type(RaiseToApp)) == 1


def test_close_answers_waiting_calls_gives_running_ones_time_then_ends() -> None:
    c = Core(async_tool_calls=False, close_timeout=5.0)
    c.call("running", response=None)
    c.call("waiting", response=None)
    c.core.close(c.now)
    c.drain()
    (failed,) = c.of_type(ToolFailed)
    assert failed.call_id == "waiting"
    assert "closing" in failed.output
    c.write_all()
    c.ack("waiting")
    assert c.core.state is CoreState.CLOSING
    c.advance(5.0)
    (incomplete,) = c.of_type(CallIncomplete)
    assert (incomplete.call_id, incomplete.reason) == ("running", IncompleteReason.SESSION_CLOSED)
    assert isinstance(c.events[-1], SessionClosed)
    assert c.events[-1].reason == "closed"


def test_nothing_is_sent_scheduled_or_counted_after_session_closed() -> None:
    """Issue 9 #8."""
    c = Core()
    c.server("response.created", response={"id": "resp_1"})
    c.call("a")
    c.run("a")
    c.write_all()
    c.core.close(c.now)
    c.response_done()
    c.drain()
    assert c.take("response.create") == []  # closing: nobody is left to listen
    c.advance(60.0)
    assert isinstance(c.events[-1], SessionClosed)
    closed_at = len(c.events)
    c.server("error", error={"type": "server_error", "code": "x", "message": "late"})
    c.server("response.created", response={"id": "resp_2"})
    c.advance(120.0)
    assert c.core.next_deadline() is None
    assert c.frames == []
    assert len(c.events) == closed_at


def test_a_call_that_arrives_as_the_connection_closes_is_reported_incomplete() -> None:
    # The server issued it before it saw our close frame; no output can follow that frame,
    # so the call is accounted for (the asyncio layer passes SessionClosed on after it).
    c = Core()
    c.core.close(c.now)
    c.drain()
    assert isinstance(c.events[-1], SessionClosed)
    closed_at = len(c.events)
    c.call("late")
    items = [
        {"type": "function_call", "call_id": call_id, "name": "lookup", "arguments": "{}"}
        for call_id in ("late", "later")  # "late" once more: it is accounted for once
    ]
    c.server("response.done", response={"id": "resp_1", "status": "completed", "output": items})
    events = c.events[closed_at:]
    assert [(type(e), e.call_id) for e in events] == [
        (ToolCallReceived, "late"),
        (CallIncomplete, "late"),
        (ToolCallReceived, "later"),
        (CallIncomplete, "later"),
    ]
    assert {e.reason for e in c.of_type(CallIncomplete)} == {IncompleteReason.SESSION_CLOSED}
    assert c.core.ledger.open_count == 0
    assert c.frames == []
    assert c.jobs == []
    assert c.core.next_deadline() is None


def test_a_connection_lost_while_closing_is_reported_as_lost() -> None:
    """Issue 9 #10."""
    from rtguard import ConnectionLostError

    c = Core(reconnect=None)
    c.call("a", response=None)
    c.core.close(c.now)
    c.core.connection_lost(ConnectionLostError("gone"), c.now)
    c.drain()
    (incomplete,) = c.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.CONNECTION_LOST
    closed = c.events[-1]
    assert isinstance(closed, SessionClosed)
    assert closed.reason == "connection_lost"


def test_close_before_connect_ends_quietly() -> None:
    core = SessionCore(support, SessionConfig())
    core.close(0.0)
    assert core.state is CoreState.CLOSED
    assert core.next_event() is None


def test_the_session_starts_with_the_agents_session_update() -> None:
    core = SessionCore(support, SessionConfig())
    core.connected(0.0)
    assert isinstance(core.next_event(), SessionStarted)
    frame = core.next_frame()
    assert frame is not None
    assert json.loads(frame.text)["type"] == "session.update"


def test_impossible_transitions_are_bugs() -> None:
    c = Core()
    c.call("a", response=None)
    call = c.core.ledger.get("a")
    assert call is not None
    with pytest.raises(InvalidTransition):
        c.core.ledger.move(call, CallState.ACKNOWLEDGED)


def test_retry_policy_backoff_is_bounded() -> None:
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.3, multiplier=2)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
