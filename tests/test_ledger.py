"""The call ledger as a pure state machine: inputs in, actions out, no sockets."""

from __future__ import annotations

import pytest

from rtguard import IncompleteReason, Outcome, RetryPolicy, ServerRejectedError
from rtguard._ledger import (
    AckDeadline,
    Action,
    CallLedger,
    CallSettled,
    CallState,
    InvalidTransition,
    ResponseDeadline,
    ResponseEndAssumed,
    RetrySend,
    SendOutput,
    SendResponseCreate,
    StartTimer,
    ToolOutput,
)
from rtguard._protocol import FunctionCall, event_ids

OK = ToolOutput("ok", Outcome.SUCCESS)


def ledger(remember_settled: int = 10_000) -> CallLedger:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.1)
    return CallLedger(policy, event_ids=event_ids(), remember_settled=remember_settled)


def effects(actions: list[Action]) -> list[Action]:
    """The actions other than timers (each sent output also starts its ack deadline)."""
    return [a for a in actions if not isinstance(a, StartTimer)]


def sent(actions: list[Action]) -> SendOutput:
    (action,) = actions
    assert isinstance(action, SendOutput)
    return action


def call(call_id: str, response_id: str | None = "r1") -> FunctionCall:
    return FunctionCall(call_id, "tool", "{}", response_id)


def test_happy_path_and_one_response_create_per_response() -> None:
    book = ledger()
    book.response_created("r1")
    for call_id in ("a", "b"):
        assert book.receive(call(call_id), 0.0) is not None
    assert book.response_done("r1") == []  # outputs not sent yet: nothing to ask for
    (send_a,) = book.output_ready("a", OK)
    assert isinstance(send_a, SendOutput)
    assert effects(book.send_succeeded("a", 0.1)) == []  # "b" still unsent
    (send_b,) = book.output_ready("b", OK)
    assert isinstance(send_b, SendOutput)
    (create,) = effects(book.send_succeeded("b", 0.2))
    assert isinstance(create, SendResponseCreate)
    assert [type(a) for a in book.acknowledged("a", 0.3)] == [CallSettled]
    assert [type(a) for a in book.acknowledged("b", 0.3)] == [CallSettled]
    assert book.open_count == 0


def test_response_create_waits_for_response_done_and_for_an_idle_server() -> None:
    book = ledger()
    book.response_created("r1")
    book.receive(call("a"), 0.0)
    book.output_ready("a", OK)
    assert effects(book.send_succeeded("a", 0.0)) == []  # response still in progress
    (create,) = effects(book.response_done("r1"))
    assert isinstance(create, SendResponseCreate)
    # The server refuses it: another response is active. Ask again after that one ends.
    refusal = ServerRejectedError("conversation_already_has_active_response", "busy")
    assert book.server_error(create.event_id, refusal, 0.0) == []
    book.response_created("r2")
    (again,) = effects(book.response_done("r2"))
    assert isinstance(again, SendResponseCreate)
    assert again.event_id != create.event_id


def test_duplicate_call_ids_are_refused_even_after_settling() -> None:
    book = ledger(remember_settled=2)
    book.receive(call("a", None), 0.0)
    assert book.receive(call("a", None), 0.0) is None
    book.output_ready("a", OK)
    book.send_succeeded("a", 0.0)
    book.acknowledged("a", 0.0)
    assert book.receive(call("a", None), 0.0) is None
    for other in ("b", "c"):  # push "a" out of the bounded window
        book.receive(call(other, None), 0.0)
        book.output_ready(other, OK)
        book.send_succeeded(other, 0.0)
        book.acknowledged(other, 0.0)
    assert book.remembered_count == 2
    assert book.receive(call("a", None), 0.0) is not None


def test_send_failure_retries_from_the_cache_then_gives_up() -> None:
    book = ledger()
    book.receive(call("a", None), 0.0)
    first = sent(book.output_ready("a", ToolOutput("boom", Outcome.ERROR, ValueError("x"))))
    error = OSError("write failed")
    (retry,) = book.send_failed("a", error, connection_open=True, now=0.0)
    assert retry == StartTimer(RetrySend("a"), 0.1)
    second = sent(book.timer_due(RetrySend("a"), 0.0))
    assert second.event_id != first.event_id
    book.send_failed("a", error, connection_open=True, now=0.0)
    book.timer_due(RetrySend("a"), 0.0)
    (settled,) = book.send_failed("a", error, connection_open=True, now=1.0)
    assert isinstance(settled, CallSettled)
    assert settled.call.incomplete_reason is IncompleteReason.RETRIES_EXHAUSTED
    assert settled.call.last_send_error is error
    assert settled.call.send_attempts == 3


def test_connection_lost_during_send_settles_at_once() -> None:
    book = ledger()
    book.receive(call("a", None), 0.0)
    book.output_ready("a", OK)
    (settled,) = book.send_failed("a", OSError(), connection_open=False, now=0.0)
    assert isinstance(settled, CallSettled)
    assert settled.call.incomplete_reason is IncompleteReason.CONNECTION_LOST


def test_late_acknowledgement_cancels_the_retry() -> None:
    book = ledger()
    book.receive(call("a", None), 0.0)
    book.output_ready("a", OK)
    book.send_failed("a", OSError(), connection_open=True, now=0.0)
    (settled,) = book.acknowledged("a", 0.05)  # the "failed" attempt reached the server
    assert isinstance(settled, CallSettled)
    assert settled.call.state is CallState.ACKNOWLEDGED
    assert book.timer_due(RetrySend("a"), 0.0) == []


def test_server_refusal_before_send_returns_is_not_lost() -> None:
    book = ledger()
    book.receive(call("a", None), 0.0)
    send = sent(book.output_ready("a", OK))
    assert book.server_error(send.event_id, ServerRejectedError("bad", "no"), 0.0) == []
    (retry,) = book.send_succeeded("a", 0.0)
    assert retry == StartTimer(RetrySend("a"), 0.1)


def test_refusal_after_sending_retries_then_settles_rejected() -> None:
    book = CallLedger(RetryPolicy(max_attempts=2), event_ids=event_ids())
    book.receive(call("a", None), 0.0)
    send = sent(book.output_ready("a", OK))
    book.send_succeeded("a", 0.0)
    (retry,) = book.server_error(send.event_id, ServerRejectedError("x", "y"), 0.0)
    assert isinstance(retry, StartTimer)
    send2 = sent(book.timer_due(RetrySend("a"), 0.0))
    book.send_succeeded("a", 0.0)
    assert book.server_error(send.event_id, ServerRejectedError("x", "y"), 0.0) == []  # stale id
    (settled,) = book.server_error(send2.event_id, ServerRejectedError("x", "y"), 0.0)
    assert isinstance(settled, CallSettled)
    assert settled.call.incomplete_reason is IncompleteReason.REJECTED_BY_SERVER


def test_close_all_accounts_for_every_open_call() -> None:
    book = ledger()
    for call_id in ("a", "b", "c"):
        book.receive(call(call_id), 0.0)
    book.output_ready("b", OK)
    settled = book.close_all(IncompleteReason.SESSION_CLOSED, 1.0)
    assert sorted(a.call.call_id for a in settled if isinstance(a, CallSettled)) == ["a", "b", "c"]
    assert book.open_count == 0
    assert book.output_ready("a", OK) == []  # a tool finishing after close changes nothing


def test_oldest_open_call_is_the_first_received() -> None:
    book = ledger()
    book.receive(call("a", None), 1.0)
    book.receive(call("b", None), 2.0)
    oldest = book.oldest_open()
    assert oldest is not None
    assert oldest.call_id == "a"


def test_impossible_transitions_are_bugs() -> None:
    book = ledger()
    book.receive(call("a", None), 0.0)
    book.output_ready("a", OK)
    with pytest.raises(InvalidTransition):
        book.start("a")


def test_retry_policy_backoff_is_bounded() -> None:
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.3, multiplier=2)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_an_output_never_acknowledged_is_incomplete_not_resent() -> None:
    book = ledger()
    book.receive(call("a", None), 0.0)
    send = sent(book.output_ready("a", OK))
    deadline, create, _ = book.send_succeeded("a", 0.0)  # the call had no response: ask now
    assert deadline == StartTimer(AckDeadline("a", send.event_id), 10.0)
    assert isinstance(create, SendResponseCreate)
    (settled,) = book.timer_due(deadline.key, 10.0)
    assert isinstance(settled, CallSettled)
    assert settled.call.incomplete_reason is IncompleteReason.UNACKNOWLEDGED
    assert book.acknowledged("a", 11.0) == []  # a late ack changes nothing


def test_a_lost_response_done_does_not_block_response_create_forever() -> None:
    book = ledger()
    (deadline,) = book.response_created("r1")
    assert isinstance(deadline, StartTimer)
    assert isinstance(deadline.key, ResponseDeadline)
    book.receive(call("a"), 0.0)
    book.output_ready("a", OK)
    assert effects(book.send_succeeded("a", 0.0)) == []  # waiting for response.done
    assumed, create, _ = book.timer_due(deadline.key, 60.0)
    assert assumed == ResponseEndAssumed("r1")
    assert isinstance(create, SendResponseCreate)
    assert book.timer_due(deadline.key, 61.0) == []  # a stale deadline does nothing
