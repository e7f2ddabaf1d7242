"""Continuity in the session core, without sockets: which losses are retried, how a new
connection is opened, what it is given (the agent, the history, the open calls), and what
holds while there is none. The WebSocket tests (test_continuity.py) prove the wiring."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core_harness import Core, billing
from rtguard import (
    CallIncomplete,
    ConnectionLostError,
    ErrorSwallowed,
    HandoffCompleted,
    IncompleteReason,
    Loss,
    OutputAcknowledged,
    OutputSendFailed,
    Reconnecting,
    ReconnectPolicy,
    SessionClosed,
    SessionResumed,
    replay_last,
)
from rtguard._core import Connect, CoreState, Disconnect, Prepared, Resolved
from rtguard._events import AppFrameDone
from rtguard._reconnect import classify

EXPIRY = "Your session hit the maximum duration of 60 minutes."


def output_items(c: Core) -> list[dict[str, Any]]:
    """The items of the conversation.item.create frames not written yet, in order."""
    return [
        json.loads(f.text)["item"]
        for f in c.frames
        if json.loads(f.text)["type"] == "conversation.item.create"
    ]


def item_done(c: Core, item: dict[str, Any]) -> None:
    c.server("conversation.item.done", previous_item_id=None, item=item)


# --- which losses are retried ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "server_error", "expected"),
    [
        (None, "", None, Loss.CONNECTION_LOST),
        (1006, "", None, Loss.CONNECTION_LOST),
        (1011, "internal error", None, Loss.CONNECTION_LOST),
        (1001, "", None, Loss.GOING_AWAY),
        (1001, EXPIRY, None, Loss.SESSION_EXPIRED),
        (None, "", "session_expired", Loss.SESSION_EXPIRED),
        (1000, "", None, Loss.SERVER_CLOSED),
        (3000, "invalid_request_error.invalid_api_key", None, Loss.REFUSED),
        (1008, "", None, Loss.REFUSED),
        (1000, "", "insufficient_quota", Loss.REFUSED),
    ],
)
def test_losses_are_told_apart(
    code: int | None, reason: str, server_error: str | None, expected: Loss
) -> None:
    error = ConnectionLostError("x", close_code=code, close_reason=reason)
    assert classify(error, server_error) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, Loss.REFUSED),
        (403, Loss.REFUSED),
        (429, Loss.CONNECTION_LOST),
        (503, Loss.CONNECTION_LOST),
    ],
)
def test_a_refused_handshake_is_retried_only_if_it_can_succeed(status: int, expected: Loss) -> None:
    assert classify(ConnectionLostError("x", http_status=status)) is expected


def test_a_normal_close_by_the_server_ends_the_session_without_a_reconnect() -> None:
    c = Core()
    c.call("a", response=None)
    c.lose(1000)
    assert c.of_type(Reconnecting) == []
    (incomplete,) = c.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.SERVER_CLOSED
    (closed,) = c.of_type(SessionClosed)
    assert closed.reason == "server_closed"
    assert closed.error.close_code == 1000


@pytest.mark.parametrize("how", ["close_3000", "quota_error"])
def test_a_refusal_is_not_retried(how: str) -> None:
    c = Core()
    c.call("a", response=None)
    if how == "quota_error":
        c.server("error", error={"type": "insufficient_quota", "code": "insufficient_quota"})
        c.lose(1000)
    else:
        c.lose(3000, "invalid_request_error.invalid_api_key")
    assert c.of_type(Reconnecting) == []
    (incomplete,) = c.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.RECONNECT_FAILED
    assert c.of_type(SessionClosed)[0].reason == "reconnect_failed"


def test_without_a_reconnect_policy_a_loss_ends_the_session() -> None:
    c = Core(reconnect=None)
    c.call("a", response=None)
    c.lose()
    assert c.of_type(CallIncomplete)[0].reason is IncompleteReason.CONNECTION_LOST
    assert c.of_type(SessionClosed)[0].reason == "connection_lost"


# --- opening the next connection ------------------------------------------------------------


def test_attempts_back_off_with_jitter_and_give_up_when_spent() -> None:
    policy = ReconnectPolicy(max_attempts=4, initial_backoff=0.2, max_backoff=0.5)
    c = Core(reconnect=policy, jitter=0.5)
    c.call("a", response=None)
    c.lose()
    assert c.disconnects() == 1
    for attempt in range(1, 5):
        connect = c.advance_to_connect()
        assert connect == Connect(attempt)
        c.core.connect_failed(ConnectionLostError("refused", http_status=503), c.now)
        c.drain()
    delays = [e.delay for e in c.of_type(Reconnecting)]
    assert delays == [0.1, 0.2, 0.25, 0.25]  # half of min(0.5, 0.2 * 2 ** (n - 1))
    (incomplete,) = c.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.RECONNECT_FAILED
    (closed,) = c.of_type(SessionClosed)
    assert closed.reason == "reconnect_failed"
    assert "refused" in str(closed.error)


def test_a_handshake_refusal_while_reconnecting_gives_up_at_once() -> None:
    c = Core()
    c.lose()
    c.advance_to_connect()
    c.core.connect_failed(ConnectionLostError("no", http_status=401), c.now)
    c.drain()
    assert len(c.of_type(Reconnecting)) == 1
    assert c.of_type(SessionClosed)[0].reason == "reconnect_failed"


def test_a_connection_that_drops_before_the_server_took_it_keeps_counting_attempts() -> None:
    """A server that accepts and drops at once cannot make rtguard reconnect forever."""
    c = Core(reconnect=ReconnectPolicy(max_attempts=3))
    for _ in range(3):
        c.lose()
        c.reconnect()
    c.lose()
    assert [e.attempt for e in c.of_type(Reconnecting)] == [1, 2, 3]
    assert c.of_type(SessionClosed)[0].reason == "reconnect_failed"


def test_a_confirmed_connection_starts_the_count_again() -> None:
    c = Core(reconnect=ReconnectPolicy(max_attempts=2))
    for _ in range(4):
        c.lose()
        c.reconnect()
        c.server("session.updated", session={"type": "realtime", "id": "sess_2"})
    assert [e.attempt for e in c.of_type(Reconnecting)] == [1, 1, 1, 1]
    assert c.of_type(SessionClosed) == []


def test_the_new_connection_gets_the_agent_then_the_open_calls_then_their_outputs() -> None:
    c = Core()
    c.call("running")
    c.call("sent")
    c.run("sent")
    c.write_all()  # written, not acknowledged
    c.call("ready")
    c.run("ready")  # output queued, not written
    c.lose()
    c.reconnect()
    (resumed,) = c.of_type(SessionResumed)
    assert resumed.reason is Loss.CONNECTION_LOST
    assert resumed.attempts == 1
    assert resumed.carried == ("running", "sent", "ready")
    assert resumed.gap == pytest.approx(0.1)  # the first attempt's jittered delay
    assert c.types()[0] == "session.update"
    items = output_items(c)
    assert [(i["type"], i["call_id"]) for i in items] == [
        ("function_call", "running"),
        ("function_call", "sent"),
        ("function_call", "ready"),
        ("function_call_output", "sent"),  # the new conversation certainly lacks it
        ("function_call_output", "ready"),
    ]
    assert items[0] == {
        "type": "function_call",
        "call_id": "running",
        "name": "lookup",
        "arguments": '{"key": "k"}',
    }
    c.finish_job("running")  # the tool kept running: its output follows its call
    c.finish_job("running")
    assert [i["call_id"] for i in output_items(c)][-1] == "running"
    assert len(c.jobs) == 0  # no tool ran twice


def test_each_call_gets_exactly_one_output_on_the_connection_that_continues() -> None:
    c = Core()
    c.call("a")
    c.run("a")
    c.write_all()
    c.lose()
    c.reconnect()
    c.write_all()
    c.ack("a")
    c.response_done()
    sends = [f for f in c.produced if f.call is not None]
    assert [json.loads(f.text)["event_id"] for f in sends][-1] == sends[-1].event_id
    assert [e.call_id for e in c.of_type(OutputAcknowledged)] == ["a"]
    assert c.of_type(CallIncomplete) == []
    assert c.take("response.create")  # the model is asked to answer on the new connection


def test_an_output_failing_because_the_connection_broke_is_carried_not_given_up() -> None:
    c = Core()
    c.call("a", response=None)
    c.run("a")
    frame = c.frames.pop()
    c.core.frame_failed(frame, ConnectionLostError("broken pipe"), False, c.now)
    c.drain()
    (failed,) = c.of_type(OutputSendFailed)
    assert failed.will_retry
    c.reconnect()
    assert [i["type"] for i in output_items(c)] == ["function_call", "function_call_output"]


def test_retries_count_again_on_a_new_connection() -> None:
    c = Core()
    c.call("a", response=None)
    c.run("a")
    for _ in range(2):  # max_attempts=3: two transient failures leave one
        frame = c.frames.pop()
        c.core.frame_failed(frame, OSError("busy"), True, c.now)
        c.drain()
        c.advance(1.0)
    c.lose()
    c.reconnect()
    frame = next(f for f in c.frames if f.call is not None)
    c.frames.remove(frame)
    c.core.frame_failed(frame, OSError("busy"), True, c.now)
    c.drain()
    assert c.of_type(OutputSendFailed)[-1].will_retry


def test_a_refused_recreation_makes_the_call_carry_failed() -> None:
    c = Core()
    c.call("a", response=None)
    c.lose()
    c.reconnect()
    carry = next(json.loads(f.text) for f in c.frames if '"function_call"' in f.text)
    c.server(
        "error",
        error={
            "type": "invalid_request_error",
            "code": "invalid_value",
            "event_id": carry["event_id"],
        },
    )
    (incomplete,) = c.of_type(CallIncomplete)
    assert incomplete.reason is IncompleteReason.CARRY_FAILED
    c.finish_job("a")
    assert c.jobs == []  # settled: the tool is not started


def test_a_handoff_waiting_for_confirmation_is_sent_again() -> None:
    c = Core()
    c.call("h", name="transfer_to_billing", response=None)
    c.finish_job("h", Resolved(billing))
    c.take("session.update")
    c.lose()
    c.reconnect()
    updates = c.take("session.update")
    assert [u["session"].get("instructions") for u in updates] == ["", "Billing."]
    c.write_all()
    c.server("session.updated", session={"type": "realtime", "id": "s2"})
    assert c.of_type(HandoffCompleted) == []  # the first update was the old agent's
    c.server("session.updated", session={"type": "realtime", "id": "s2"})
    (completed,) = c.of_type(HandoffCompleted)
    assert completed.to_agent == "billing"


# --- what holds while there is no connection ------------------------------------------------


def test_app_frames_are_held_and_sent_after_the_conversation_is_back() -> None:
    c = Core()
    c.call("a", response=None)
    c.lose()
    message = c.core.send_user_message("still there?", c.now)
    c.drain()
    assert c.core.next_frame() is None
    c.reconnect()
    kinds = [
        (t, i.get("type"))
        for t, i in zip(
            c.types(), [json.loads(f.text).get("item", {}) for f in c.frames], strict=True
        )
    ]
    assert kinds == [
        ("session.update", None),
        ("conversation.item.create", "function_call"),
        ("conversation.item.create", "message"),
        ("response.create", None),
    ]
    frame = next(f for f in c.frames if f.event_id == message)
    c.core.frame_written(frame, c.now)
    c.drain()
    assert AppFrameDone(message, None) in c.events


def test_an_app_frame_being_written_when_the_connection_broke_is_sent_again() -> None:
    c = Core()
    c.core.append_audio("AAAA")
    c.drain()
    frame = c.frames.pop()  # handed to the writer
    assert frame.app
    c.core.frame_failed(frame, ConnectionLostError("broken"), False, c.now)
    c.drain()
    c.reconnect()
    assert "input_audio_buffer.append" in c.types()
    assert not any(isinstance(e, AppFrameDone) for e in c.events)


def test_held_frames_are_bounded() -> None:
    c = Core(reconnect=ReconnectPolicy(max_held_frames=2))
    c.lose()
    c.core.append_audio("AAAA")
    c.core.append_audio("AAAA")
    with pytest.raises(ConnectionLostError, match="2 frames already wait"):
        c.core.append_audio("AAAA")


def test_a_response_the_loss_cut_short_is_asked_for_again() -> None:
    c = Core()
    c.server("response.created", response={"id": "resp_1"})
    c.lose()
    c.reconnect()
    assert c.types() == ["session.update", "response.create"]


def test_interrupting_while_reconnecting_drops_the_request_again() -> None:
    c = Core()
    c.server("response.created", response={"id": "resp_1"})
    c.lose()
    assert c.core.interrupt() is None
    c.reconnect()
    assert c.types() == ["session.update"]


def test_close_during_an_outage_waits_for_the_carried_calls() -> None:
    c = Core(close_timeout=5.0)
    c.call("a", response=None)
    c.run("a")
    c.lose()
    c.core.close(c.now)
    c.drain()
    c.reconnect()
    c.write_all()
    c.ack("a")
    assert [e.call_id for e in c.of_type(OutputAcknowledged)] == ["a"]
    assert c.of_type(SessionClosed)[0].reason == "closed"
    assert c.take("response.create") == []  # nobody is left to listen


def test_close_during_an_outage_gives_up_on_calls_at_the_close_timeout() -> None:
    c = Core(close_timeout=0.5, reconnect=ReconnectPolicy(initial_backoff=10, max_backoff=10))
    c.call("a", response=None)
    c.lose()
    c.core.close(c.now)
    c.advance(0.5)
    assert c.of_type(CallIncomplete)[0].reason is IncompleteReason.SESSION_CLOSED
    assert c.core.state is CoreState.CLOSED
    assert c.core.next_link_action() is None


# --- the history a new connection gets ------------------------------------------------------


def conversation(c: Core) -> None:
    """A user text, a user audio turn and its transcript, an answer in audio, a call with
    its output, a call cut off mid-arguments, and one the app deleted."""
    item_done(
        c,
        {
            "id": "u1",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
        },
    )
    item_done(
        c,
        {
            "id": "u2",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        },
    )
    c.server(
        "conversation.item.input_audio_transcription.completed",
        item_id="u2",
        content_index=0,
        transcript="weather?",
    )
    item_done(
        c,
        {
            "id": "f1",
            "type": "function_call",
            "status": "completed",
            "call_id": "c1",
            "name": "lookup",
            "arguments": "{}",
        },
    )
    item_done(c, {"id": "o1", "type": "function_call_output", "call_id": "c1", "output": "sunny"})
    item_done(
        c,
        {
            "id": "a1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_audio", "transcript": "It is sunny."}],
        },
    )
    item_done(
        c,
        {
            "id": "f2",
            "type": "function_call",
            "status": "incomplete",
            "call_id": "c2",
            "name": "lookup",
            "arguments": '{"ke',
        },
    )
    item_done(
        c,
        {
            "id": "d1",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "forget me"}],
        },
    )
    c.server("conversation.item.deleted", item_id="d1")


def test_the_history_is_replayed_in_order_as_text() -> None:
    c = Core()
    conversation(c)
    c.lose()
    c.reconnect()
    assert output_items(c) == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
            "id": "u1",
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "weather?"}],
            "id": "u2",
        },
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}", "id": "f1"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny", "id": "o1"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "It is sunny."}],
            "id": "a1",
        },
    ]
    assert c.of_type(SessionResumed)[0].replayed == 5


def test_a_replay_policy_never_splits_a_call_from_its_output() -> None:
    c = Core(reconnect=ReconnectPolicy(replay=replay_last(2)))  # [o1, a1]: o1 loses its call
    conversation(c)
    c.lose()
    c.reconnect()
    assert [i["id"] for i in output_items(c)] == ["a1"]


def test_a_failing_replay_policy_falls_back_to_the_default() -> None:
    def broken(items: Any) -> Any:
        return [object()]

    c = Core(reconnect=ReconnectPolicy(replay=broken))
    conversation(c)
    c.lose()
    c.reconnect()
    (swallowed,) = c.of_type(ErrorSwallowed)
    assert swallowed.place == "replay_policy"
    assert len(output_items(c)) == 5


def test_the_history_is_bounded_oldest_first() -> None:
    c = Core(reconnect=ReconnectPolicy(history_items=2))
    conversation(c)
    c.lose()
    c.reconnect()
    assert [i["id"] for i in output_items(c)] == ["a1"]  # [o1, a1] kept; o1 lost its call


def test_open_calls_are_carried_not_replayed() -> None:
    c = Core()
    c.call("c9", response=None)
    item_done(
        c,
        {
            "id": "f9",
            "type": "function_call",
            "status": "completed",
            "call_id": "c9",
            "name": "lookup",
            "arguments": "{}",
        },
    )
    c.lose()
    c.reconnect()
    assert [(i["type"], i.get("id")) for i in output_items(c)] == [("function_call", None)]


# --- moving on before the server's maximum duration -----------------------------------------

ROLLOVER = ReconnectPolicy(rollover_after=100.0, rollover_deadline=200.0)


def test_rollover_waits_for_a_quiet_moment_and_does_not_wait_to_reconnect() -> None:
    c = Core(reconnect=ROLLOVER)
    c.call("a", response=None)
    c.advance(100.0)
    assert c.disconnects() == 0  # a call is open
    c.run("a")
    c.write_all()
    c.ack("a")
    assert c.disconnects() == 0  # the model is asked to answer the output first
    c.server("response.created", response={"id": "resp_2"})
    c.response_done("resp_2")
    assert c.disconnects() == 1
    (reconnecting,) = c.of_type(Reconnecting)
    assert reconnecting.reason is Loss.ROLLOVER
    assert reconnecting.delay == 0.0
    c.reconnect()
    assert c.of_type(SessionResumed)[0].reason is Loss.ROLLOVER


def test_rollover_waits_while_the_model_speaks_or_the_user_takes_a_turn() -> None:
    c = Core(reconnect=ROLLOVER, response_timeout=1000.0)
    c.server("response.created", response={"id": "resp_1"})
    c.advance(150.0)
    c.server("input_audio_buffer.speech_started", audio_start_ms=0, item_id="i")
    c.response_done()  # the answer to an earlier turn
    c.server("input_audio_buffer.speech_stopped", audio_end_ms=10, item_id="i")
    assert c.disconnects() == 0  # server VAD answers the user's turn next
    c.server("response.created", response={"id": "resp_2"})
    c.response_done("resp_2")
    assert c.disconnects() == 1


def test_rollover_happens_at_its_deadline_carrying_what_is_open() -> None:
    c = Core(reconnect=ROLLOVER)
    c.call("a", response=None)
    c.advance(200.0)
    assert c.disconnects() == 1
    c.reconnect()
    assert c.of_type(SessionResumed)[0].carried == ("a",)
    c.advance(99.0)
    assert c.disconnects() == 1  # the new connection has its own clock


def test_nothing_of_the_old_connection_fires_on_the_new_one() -> None:
    c = Core(ack_timeout=1.0)
    c.call("a", response=None)
    c.run("a")
    c.write_all()
    c.lose()
    c.reconnect()
    c.advance(0.9)
    c.write_all()
    c.advance(0.9)  # 1.8 s after the first send: its ack deadline died with the connection
    assert c.of_type(CallIncomplete) == []
    assert not any(isinstance(a, Disconnect) for a in c.actions[1:])


def test_prepared_is_not_needed_again_after_a_loss() -> None:
    """A call whose arguments were being checked when the connection ended goes on."""
    c = Core()
    c.call("a", response=None)
    c.lose()
    c.finish_job("a", Prepared({"key": "k"}, needs_approval=False))
    c.finish_job("a")
    assert c.core.next_frame() is None  # no connection: the output waits
    c.reconnect()
    assert [i["type"] for i in output_items(c)] == ["function_call", "function_call_output"]
