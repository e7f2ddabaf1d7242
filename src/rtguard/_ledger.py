"""The call ledger: where a call's life is decided.

Every function call the model issues gets a :class:`Call` here, keyed by ``call_id``, and moves
through one state machine::

    RECEIVED ─┬─> AWAITING_APPROVAL ─┐
              ├─> RUNNING ───────────┼─> OUTPUT_READY <─> OUTPUT_SENT ─> ACKNOWLEDGED
              └──────────────────────┘        │                │
                                              └───> INCOMPLETE <┘   (any open state can end here)

The ledger is sans-I/O, like websockets' ``Protocol``: the session reports what happened
(a call arrived, its output is ready, a send failed, the server acknowledged) and gets back
:data:`Action` values to carry out (send this output, retry later, send ``response.create``,
this call is settled). Every kind of failure is only a different :class:`ToolOutput` or
:class:`IncompleteReason` flowing through the same transitions, so there is exactly one place
that sends outputs and one place that settles calls.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._protocol import FunctionCall

__all__ = [
    "Action",
    "Call",
    "CallLedger",
    "CallSettled",
    "CallState",
    "IncompleteReason",
    "Outcome",
    "ResponseEndAssumed",
    "RetryPolicy",
    "SendOutput",
    "SendResponseCreate",
    "StartTimer",
    "TimerKey",
    "ToolOutput",
]


class CallState(enum.Enum):
    RECEIVED = "received"
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    OUTPUT_READY = "output_ready"
    OUTPUT_SENT = "output_sent"
    ACKNOWLEDGED = "acknowledged"
    INCOMPLETE = "incomplete"


_S = CallState
_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    _S.RECEIVED: frozenset({_S.AWAITING_APPROVAL, _S.RUNNING, _S.OUTPUT_READY, _S.INCOMPLETE}),
    _S.AWAITING_APPROVAL: frozenset({_S.RUNNING, _S.OUTPUT_READY, _S.INCOMPLETE}),
    _S.RUNNING: frozenset({_S.OUTPUT_READY, _S.INCOMPLETE}),
    # OUTPUT_READY -> ACKNOWLEDGED: the server confirmed an attempt the transport called failed.
    _S.OUTPUT_READY: frozenset({_S.OUTPUT_SENT, _S.ACKNOWLEDGED, _S.INCOMPLETE}),
    _S.OUTPUT_SENT: frozenset({_S.OUTPUT_READY, _S.ACKNOWLEDGED, _S.INCOMPLETE}),
    _S.ACKNOWLEDGED: frozenset(),
    _S.INCOMPLETE: frozenset(),
}
# States in which the server does not have the call's output yet.
_UNSENT = frozenset({_S.RECEIVED, _S.AWAITING_APPROVAL, _S.RUNNING, _S.OUTPUT_READY})


class Outcome(enum.StrEnum):
    """How the tool call itself ended; decides the text the model gets."""

    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"
    HANDOFF_FAILED = "handoff_failed"


class IncompleteReason(enum.StrEnum):
    """Why a call ended without an output the model can see."""

    CONNECTION_LOST = "connection_lost"
    SESSION_CLOSED = "session_closed"
    RETRIES_EXHAUSTED = "retries_exhausted"
    REJECTED_BY_SERVER = "rejected_by_server"
    UNACKNOWLEDGED = "unacknowledged"  # sent, but the server never confirmed it


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """The model-visible result of a call, computed once and resent from here on retries.

    ``error`` is the original exception (or the rtguard error standing for a failure that had
    none); ``raise_to_app`` asks the session to raise it from the event iterator once the call
    is settled, instead of reporting it as an event.
    """

    text: str
    outcome: Outcome
    error: BaseException | None = None
    raise_to_app: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff for resending a cached output.

    No jitter: a session has one socket, so there is no herd of clients to spread out.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, failed_attempts: int) -> float:
        return min(
            self.max_backoff, self.initial_backoff * self.multiplier ** (failed_attempts - 1)
        )


@dataclass(slots=True, eq=False)
class Call:
    call_id: str
    tool_name: str
    arguments: str | None
    response_key: str
    received_at: float
    state: CallState = CallState.RECEIVED
    output: ToolOutput | None = None
    send_attempts: int = 0
    event_id: str | None = None  # of the latest attempt, the one a server error can refer to
    refused: bool = False  # the server refused the latest attempt before its send returned
    last_send_error: BaseException | None = None
    incomplete_reason: IncompleteReason | None = None
    settled_at: float | None = None
    # Set by the session to hold whatever it tracks per call (telemetry); the ledger ignores it.
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendOutput:
    call: Call
    event_id: str


@dataclass(frozen=True, slots=True)
class RetrySend:
    """Resend the call's cached output."""

    call_id: str


@dataclass(frozen=True, slots=True)
class RetryResponseCreate:
    """Send the ``response.create`` whose send raised."""


@dataclass(frozen=True, slots=True)
class AckDeadline:
    """Give up waiting for the server to acknowledge this attempt."""

    call_id: str
    event_id: str


@dataclass(frozen=True, slots=True)
class ResponseDeadline:
    """Stop waiting for the ``response.done`` of the response in progress (``epoch``)."""

    epoch: int


TimerKey = RetrySend | RetryResponseCreate | AckDeadline | ResponseDeadline


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call :meth:`CallLedger.timer_due` with ``key`` after ``delay`` seconds."""

    key: TimerKey
    delay: float


@dataclass(frozen=True, slots=True)
class SendResponseCreate:
    event_id: str


@dataclass(frozen=True, slots=True)
class CallSettled:
    """The call reached ACKNOWLEDGED or INCOMPLETE; the ledger holds no more work for it."""

    call: Call


@dataclass(frozen=True, slots=True)
class ResponseEndAssumed:
    """No ``response.done`` came in time; the ledger went on as if it had."""

    response_id: str | None


Action = SendOutput | StartTimer | SendResponseCreate | CallSettled | ResponseEndAssumed


@dataclass(slots=True)
class _Response:
    """The calls of one model response: ``response.create`` waits until all are sent."""

    done: bool
    open_calls: int = 0
    unsent: int = 0
    outputs_pending: bool = False  # an output reached the server since the last response.create


class InvalidTransition(RuntimeError):
    """A bug in rtguard: the session reported something impossible for the call's state."""


class CallLedger:
    def __init__(
        self,
        retry: RetryPolicy | None = None,
        *,
        event_ids: Iterator[str],
        remember_settled: int = 10_000,
        ack_timeout: float = 10.0,
        response_timeout: float = 60.0,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.ack_timeout = ack_timeout
        self.response_timeout = response_timeout
        self._event_ids = event_ids
        self._remember_settled = remember_settled
        self._open: dict[str, Call] = {}  # arrival order, so the first one is the oldest
        self._settled: OrderedDict[str, CallState] = OrderedDict()
        self._responses: dict[str, _Response] = {}
        self._attempts: dict[str, str] = {}  # output event_id -> call_id, while it can be refused
        self._server_responding = False
        self._active_response: str | None = None
        self._response_epoch = 0  # bumped whenever a response starts or ends
        self._response_create_wanted = False
        self._response_create_id: str | None = None
        self._response_create_failures = 0

    # --- queries --------------------------------------------------------------------------

    def get(self, call_id: str) -> Call | None:
        return self._open.get(call_id)

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def remembered_count(self) -> int:
        """Open calls plus the settled ids kept to recognise a repeated call (bounded)."""
        return len(self._open) + len(self._settled)

    def oldest_open(self) -> Call | None:
        return next(iter(self._open.values()), None)

    # --- what happened to a call ----------------------------------------------------------

    def receive(self, function_call: FunctionCall, now: float) -> Call | None:
        """Register a call; None if this ``call_id`` is already known (the tool must run once)."""
        call_id = function_call.call_id
        if call_id in self._open or call_id in self._settled:
            return None
        key = function_call.response_id or f"call:{call_id}"
        group = self._responses.get(key)
        if group is None:
            group = self._responses[key] = _Response(done=function_call.response_id is None)
        group.open_calls += 1
        group.unsent += 1
        call = Call(call_id, function_call.name, function_call.arguments, key, received_at=now)
        self._open[call_id] = call
        return call

    def await_approval(self, call_id: str) -> None:
        self._move(self._open[call_id], CallState.AWAITING_APPROVAL)

    def start(self, call_id: str) -> None:
        self._move(self._open[call_id], CallState.RUNNING)

    def output_ready(self, call_id: str, output: ToolOutput) -> list[Action]:
        call = self._open.get(call_id)
        if call is None:  # settled meanwhile (the session closed while the tool ran)
            return []
        call.output = output
        self._move(call, CallState.OUTPUT_READY)
        return [self._attempt(call)]

    def send_succeeded(self, call_id: str, now: float) -> list[Action]:
        call = self._open.get(call_id)
        if call is None or call.state is not CallState.OUTPUT_READY:
            return []  # acknowledged or settled while the frame was being written
        if call.refused:
            call.refused = False
            return self._retry_or_give_up(call, IncompleteReason.REJECTED_BY_SERVER, now)
        self._move(call, CallState.OUTPUT_SENT)
        self._responses[call.response_key].outputs_pending = True
        assert call.event_id is not None
        deadline = StartTimer(AckDeadline(call_id, call.event_id), self.ack_timeout)
        return [deadline, *self._after_change(call.response_key)]

    def send_failed(
        self, call_id: str, error: BaseException, *, connection_open: bool, now: float
    ) -> list[Action]:
        call = self._open.get(call_id)
        if call is None or call.state is not CallState.OUTPUT_READY:
            return []
        call.last_send_error = error
        if not connection_open:
            return self._incomplete(call, IncompleteReason.CONNECTION_LOST, now)
        return self._retry_or_give_up(call, IncompleteReason.RETRIES_EXHAUSTED, now)

    def timer_due(self, key: TimerKey, now: float) -> list[Action]:
        match key:
            case RetrySend(call_id=call_id):
                call = self._open.get(call_id)
                if call is None or call.state is not CallState.OUTPUT_READY:
                    return []  # acknowledged late, or settled, while we waited
                return [self._attempt(call)]
            case RetryResponseCreate():
                self._response_create_wanted = True
                return self._flush_response_create()
            case AckDeadline(call_id=call_id, event_id=event_id):
                call = self._open.get(call_id)
                if (
                    call is None
                    or call.state is not CallState.OUTPUT_SENT
                    or call.event_id != event_id
                ):
                    return []
                # Resending could give the model two outputs if only the ack was lost.
                return self._incomplete(call, IncompleteReason.UNACKNOWLEDGED, now)
            case ResponseDeadline(epoch=epoch):
                if epoch != self._response_epoch or not self._server_responding:
                    return []
                response_id = self._active_response
                return [ResponseEndAssumed(response_id), *self.response_done(response_id)]
        return []

    def acknowledged(self, call_id: str, now: float) -> list[Action]:
        call = self._open.get(call_id)
        if call is None or call.send_attempts == 0:
            return []  # not an output of ours, or already settled
        actions = self._settle(call, CallState.ACKNOWLEDGED, None, now)
        return actions + self._after_change(call.response_key)

    def server_error(
        self, client_event_id: str | None, error: BaseException, now: float
    ) -> list[Action]:
        """The server refused one of our events; an output it refused was not delivered."""
        if client_event_id is not None and client_event_id == self._response_create_id:
            return self._response_create_refused(error)
        call_id = self._attempts.pop(client_event_id or "", None)
        call = self._open.get(call_id) if call_id else None
        if call is None:
            return []
        call.last_send_error = error
        if call.state is CallState.OUTPUT_READY:  # our send() has not returned yet
            call.refused = True
            return []
        return self._retry_or_give_up(call, IncompleteReason.REJECTED_BY_SERVER, now)

    def close_all(self, reason: IncompleteReason, now: float) -> list[Action]:
        """Account for every open call as incomplete (the session or connection is gone)."""
        actions: list[Action] = []
        for call in list(self._open.values()):
            actions += self._incomplete(call, reason, now)
        return actions

    # --- what happened to the model's responses ------------------------------------------

    def response_created(self, response_id: str | None) -> list[Action]:
        self._active_response = response_id
        return [self._expect_response_end()]

    def response_done(self, response_id: str | None) -> list[Action]:
        self._server_responding = False
        self._active_response = None
        self._response_epoch += 1
        group = self._responses.get(response_id) if response_id else None
        if group is not None:
            group.done = True
            return self._after_change(response_id)  # type: ignore[arg-type]
        return self._flush_response_create()

    def request_response(self) -> list[Action]:
        """The app wants the model to respond (it sent a user message)."""
        self._response_create_wanted = True
        return self._flush_response_create()

    def response_create_sent(self) -> None:
        self._response_create_failures = 0

    def response_create_failed(self) -> list[Action]:
        """Sending ``response.create`` raised; try again with the outputs' retry policy."""
        self._server_responding = False
        self._response_create_id = None
        self._response_create_failures += 1
        if self._response_create_failures >= self.retry.max_attempts:
            self._response_create_failures = 0
            return []
        delay = self.retry.backoff(self._response_create_failures)
        return [StartTimer(RetryResponseCreate(), delay)]

    # --- internals ------------------------------------------------------------------------

    def _move(self, call: Call, new_state: CallState) -> None:
        if new_state not in _TRANSITIONS[call.state]:
            raise InvalidTransition(f"call {call.call_id}: {call.state.name} -> {new_state.name}")
        was_unsent = call.state in _UNSENT
        call.state = new_state
        is_unsent = new_state in _UNSENT
        if was_unsent != is_unsent:
            self._responses[call.response_key].unsent += 1 if is_unsent else -1

    def _attempt(self, call: Call) -> SendOutput:
        call.send_attempts += 1
        call.refused = False
        if call.event_id is not None:
            self._attempts.pop(call.event_id, None)
        event_id = call.event_id = next(self._event_ids)
        self._attempts[event_id] = call.call_id
        return SendOutput(call, event_id)

    def _retry_or_give_up(self, call: Call, reason: IncompleteReason, now: float) -> list[Action]:
        if call.send_attempts >= self.retry.max_attempts:
            return self._incomplete(call, reason, now)
        if call.state is CallState.OUTPUT_SENT:
            self._move(call, CallState.OUTPUT_READY)
        return [StartTimer(RetrySend(call.call_id), self.retry.backoff(call.send_attempts))]

    def _incomplete(self, call: Call, reason: IncompleteReason, now: float) -> list[Action]:
        actions = self._settle(call, CallState.INCOMPLETE, reason, now)
        return actions + self._after_change(call.response_key)

    def _settle(
        self, call: Call, state: CallState, reason: IncompleteReason | None, now: float
    ) -> list[Action]:
        self._move(call, state)
        call.incomplete_reason = reason
        call.settled_at = now
        del self._open[call.call_id]
        if call.event_id is not None:
            self._attempts.pop(call.event_id, None)
        self._settled[call.call_id] = state
        if len(self._settled) > self._remember_settled:
            self._settled.popitem(last=False)
        self._responses[call.response_key].open_calls -= 1
        return [CallSettled(call)]

    def _after_change(self, response_key: str) -> list[Action]:
        group = self._responses[response_key]
        if group.done and group.unsent == 0 and group.outputs_pending:
            group.outputs_pending = False
            self._response_create_wanted = True
        if group.done and group.open_calls == 0:
            del self._responses[response_key]
        return self._flush_response_create()

    def _flush_response_create(self) -> list[Action]:
        if not self._response_create_wanted or self._server_responding:
            return []
        self._response_create_wanted = False
        # The server starts a response as soon as it reads this: hold further requests until
        # its response.done, or the server answers "conversation already has an active response".
        self._active_response = None
        self._response_create_id = next(self._event_ids)
        return [SendResponseCreate(self._response_create_id), self._expect_response_end()]

    def _expect_response_end(self) -> StartTimer:
        """A response is in progress; a lost response.done must not block us for good."""
        self._server_responding = True
        self._response_epoch += 1
        return StartTimer(ResponseDeadline(self._response_epoch), self.response_timeout)

    def _response_create_refused(self, error: BaseException) -> list[Action]:
        self._response_create_id = None
        code = getattr(error, "code", None)
        if code == "conversation_already_has_active_response":
            # Another response is running; ask again after its response.done.
            self._response_create_wanted = True
            return []
        self._server_responding = False
        return []
