"""The call ledger: every call the model issued, and the one state machine it moves through
(drawn in :class:`CallState`'s docstring; ``_TRANSITIONS`` is its table).

``RECEIVED``: waiting for its turn to run (one at a time with ``async_tool_calls=False``).
``RUNNING``: the user's code for it runs (arguments, approval policy, tool, handoff factory).
``HANDING_OFF``: the new agent's ``session.update`` waits for the server's answer.
``OUTPUT_READY``: the output exists, and is being written or waits to be resent.
``OUTPUT_SENT``: written; waiting for the server to confirm it.

The ledger is pure bookkeeping: it checks every transition, keeps the counts the rest of the
core derives its decisions from, and reports each move to one observer (response
turn-taking), so nothing that depends on a call's state is ever set on just one path.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._protocol import FunctionCall

if TYPE_CHECKING:
    from ._agent import Agent, Handoff
    from ._tools import FunctionTool

__all__ = [
    "ACTIVE",
    "DELIVERED",
    "UNSENT",
    "Call",
    "CallLedger",
    "CallState",
    "IncompleteReason",
    "InvalidTransition",
    "Outcome",
    "RetryPolicy",
    "ToolOutput",
]


class CallState(enum.Enum):
    """Where a call is in its one state machine; ``ACKNOWLEDGED`` and ``INCOMPLETE`` end it.

    ```
    RECEIVED ──> RUNNING <──> AWAITING_APPROVAL
       │           │    └───> HANDING_OFF ──┐
       │           v                        v
       └──────> OUTPUT_READY <──> OUTPUT_SENT ──> ACKNOWLEDGED
                    │                  │
                    └──> INCOMPLETE <──┘        (every open state can end here)
    ```
    """

    RECEIVED = "received"
    """Waiting for its turn to run (one at a time with ``async_tool_calls=False``)."""
    RUNNING = "running"
    """Its user code runs: arguments, approval policy, tool, handoff factory."""
    AWAITING_APPROVAL = "awaiting_approval"
    """Waiting for the app's ``approve`` or ``reject``."""
    HANDING_OFF = "handing_off"
    """The new agent's ``session.update`` waits for the server's answer."""
    OUTPUT_READY = "output_ready"
    """The output exists, and is being written or waits to be resent."""
    OUTPUT_SENT = "output_sent"
    """Written; waiting for the server to confirm it."""
    ACKNOWLEDGED = "acknowledged"
    """The server confirmed the output: the model can see it."""
    INCOMPLETE = "incomplete"
    """Ended without a model-visible output; the call's ``IncompleteReason`` says why."""

    # Members are singletons, so identity is their equality: the identity hash (a C slot)
    # instead of Enum's hash of the name in Python, which the state sets below cost ~30
    # times per call.
    __hash__ = object.__hash__


_S = CallState
_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    _S.RECEIVED: frozenset({_S.RUNNING, _S.OUTPUT_READY, _S.INCOMPLETE}),
    _S.RUNNING: frozenset({_S.AWAITING_APPROVAL, _S.HANDING_OFF, _S.OUTPUT_READY, _S.INCOMPLETE}),
    _S.AWAITING_APPROVAL: frozenset({_S.RUNNING, _S.OUTPUT_READY, _S.INCOMPLETE}),
    _S.HANDING_OFF: frozenset({_S.OUTPUT_READY, _S.INCOMPLETE}),
    # OUTPUT_READY -> ACKNOWLEDGED: the server confirmed an attempt whose write had not
    # returned yet, or had raised after the frame left.
    _S.OUTPUT_READY: frozenset({_S.OUTPUT_SENT, _S.ACKNOWLEDGED, _S.INCOMPLETE}),
    _S.OUTPUT_SENT: frozenset({_S.OUTPUT_READY, _S.ACKNOWLEDGED, _S.INCOMPLETE}),
    _S.ACKNOWLEDGED: frozenset(),
    _S.INCOMPLETE: frozenset(),
}
# The server does not have the call's output yet.
UNSENT = frozenset({_S.RECEIVED, _S.RUNNING, _S.AWAITING_APPROVAL, _S.HANDING_OFF, _S.OUTPUT_READY})
# The output reached the server (it may still refuse it while OUTPUT_SENT).
DELIVERED = frozenset({_S.OUTPUT_SENT, _S.ACKNOWLEDGED})
# The call occupies a tool slot (``async_tool_calls=False`` allows one).
ACTIVE = frozenset({_S.RUNNING, _S.AWAITING_APPROVAL, _S.HANDING_OFF})


class Outcome(enum.StrEnum):
    """How the tool call itself ended; decides the text the model gets."""

    SUCCESS = "success"
    """The tool returned (or the handoff was confirmed); the output is its result."""
    ERROR = "error"
    """The tool (or its approval policy) raised, its result could not be used
    (``ToolResultError``), or the closing session did not run it."""
    TIMEOUT = "timeout"
    """The tool did not finish within its ``timeout``."""
    REJECTED = "rejected"
    """The app rejected the call; the output is the rejection message."""
    UNKNOWN_TOOL = "unknown_tool"
    """The active agent has no tool by that name."""
    INVALID_ARGUMENTS = "invalid_arguments"
    """The arguments were not JSON, did not fit the tool's schema, or were too large."""
    HANDOFF_FAILED = "handoff_failed"
    """The handoff could not be made; the old agent stays."""


class IncompleteReason(enum.StrEnum):
    """Why a call ended without an output the model can see."""

    CONNECTION_LOST = "connection_lost"  # the connection ended and reconnecting is off
    """The connection ended and reconnecting is off (``SessionConfig(reconnect=None)``)."""
    RECONNECT_FAILED = "reconnect_failed"  # no new connection could be opened to carry it
    """No new connection could be opened to carry it."""
    CARRY_FAILED = "carry_failed"  # the new connection refused its recreated function_call
    """The new connection refused its recreated ``function_call``."""
    SERVER_CLOSED = "server_closed"  # the server ended the session (a normal close)
    """The server ended the session (a normal close)."""
    SESSION_CLOSED = "session_closed"
    """The app closed the session before the call was answered within ``close_timeout``, or
    the model issued it as the connection was closing (no output can follow a close frame)."""
    RETRIES_EXHAUSTED = "retries_exhausted"
    """Every send attempt the ``RetryPolicy`` allows failed."""
    REJECTED_BY_SERVER = "rejected_by_server"
    """The server refused the output with an error that is not worth retrying."""
    UNACKNOWLEDGED = "unacknowledged"  # sent, but the server never confirmed it
    """Sent, but the server never confirmed it within ``ack_timeout``; it is not resent."""


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """The model-visible result of a call, computed once and resent from here on retries.

    ``error`` is the original exception (or the rtguard error standing for a failure that had
    none); ``raise_to_app`` asks for it to be raised from the event iterator once the call is
    settled, instead of reported as an event.
    """

    text: str
    outcome: Outcome
    error: BaseException | None = None
    raise_to_app: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff for resending a cached output.

    No jitter: a session has one socket, so there is no herd of clients to spread out.
    The tool never runs again: every attempt sends the same cached output. The same policy
    paces a ``response.create`` whose write failed.

    Raises:
        ValueError: ``max_attempts`` is below 1.
    """

    max_attempts: int = 5
    """Send attempts in all, the first included; then the call is ``retries_exhausted``."""
    initial_backoff: float = 0.05
    """Seconds before the second attempt."""
    max_backoff: float = 1.0
    """The longest wait between two attempts, in seconds."""
    multiplier: float = 2.0
    """How much longer each wait is than the one before."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` (1 or more) failed attempts."""
        return min(
            self.max_backoff, self.initial_backoff * self.multiplier ** (failed_attempts - 1)
        )


@dataclass(slots=True, eq=False)
class Call:
    """One function call. ``agent`` is the agent active when the model issued it, and
    ``target`` what that agent calls by this name: later handoffs do not change either."""

    call_id: str
    tool_name: str
    arguments: str | None
    response_key: str
    agent: Agent
    target: FunctionTool | Handoff | None
    received_at: float
    state: CallState = CallState.RECEIVED
    kwargs: dict[str, Any] | None = None  # validated arguments, kept while approval is pending
    handoff_to: Agent | None = None
    output: ToolOutput | None = None
    send_attempts: int = 0
    failed_sends: int = 0  # since the call was last carried: what the retry policy counts
    event_id: str | None = None  # of the latest attempt: what a server error refers to
    in_flight: bool = False  # the latest attempt's frame is queued or being written
    last_send_error: BaseException | None = None
    incomplete_reason: IncompleteReason | None = None
    settled_at: float | None = None


class InvalidTransition(RuntimeError):
    """A bug in rtguard: something impossible for the call's state was asked."""


Mover = Callable[[Call, CallState], None]


# Responses whose response.done never came are taken as ended past this many (a server
# that loses them must not make the ledger grow).
_STREAMING_RESPONSES = 64


class CallLedger:
    """Open calls by ``call_id`` (in arrival order) and the ids of settled ones, so a call
    the server repeats is recognised and its tool runs once.

    A response announces each call up to three times (``...arguments.done``,
    ``output_item.done``, ``response.done``), so a settled call's id is kept until its
    response ended, however many calls that response holds; after that only a window of the
    latest ``remember_settled`` ids is kept, for a server that repeats an older call. Memory
    stays bounded by the responses in progress, not by the session's length.
    """

    def __init__(self, *, remember_settled: int = 64, on_move: Mover | None = None) -> None:
        self._open: dict[str, Call] = {}
        self._streaming: dict[str, list[str]] = {}  # response id -> its settled call ids
        self._held: set[str] = set()  # the ids in _streaming
        self._settled: dict[str, None] = {}  # after their response ended, oldest first
        self._remember_settled = remember_settled
        self._on_move = on_move
        self.active_count = 0

    def get(self, call_id: str) -> Call | None:
        return self._open.get(call_id)

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._open.values()))

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def remembered_count(self) -> int:
        """Open calls plus the settled ids kept to recognise a repeated call (bounded)."""
        return len(self._open) + len(self._held) + len(self._settled)

    def oldest_open(self) -> Call | None:
        return next(iter(self._open.values()), None)

    def receive(self, function_call: FunctionCall, agent: Agent, now: float) -> Call | None:
        """Register a call bound to ``agent``; None if this ``call_id`` is already known."""
        call_id = function_call.call_id
        if call_id in self._open or call_id in self._held or call_id in self._settled:
            return None
        response_id = function_call.response_id
        if response_id is not None and response_id not in self._streaming:
            self._streaming[response_id] = []
            if len(self._streaming) > _STREAMING_RESPONSES:
                self.response_ended(next(iter(self._streaming)))
        call = Call(
            call_id,
            function_call.name,
            function_call.arguments,
            function_call.response_id or f"call:{call_id}",
            agent,
            agent.find(function_call.name),
            received_at=now,
        )
        self._open[call_id] = call
        return call

    def move(self, call: Call, new_state: CallState) -> None:
        old_state = call.state
        if new_state not in _TRANSITIONS[old_state]:
            raise InvalidTransition(f"call {call.call_id}: {old_state.name} -> {new_state.name}")
        call.state = new_state
        self.active_count += (new_state in ACTIVE) - (old_state in ACTIVE)
        if new_state in (_S.ACKNOWLEDGED, _S.INCOMPLETE):
            del self._open[call.call_id]
            held = self._streaming.get(call.response_key)
            if held is None:
                self._remember(call.call_id)
            else:
                held.append(call.call_id)
                self._held.add(call.call_id)
        if self._on_move is not None:
            self._on_move(call, old_state)

    def response_ended(self, response_id: str) -> None:
        """The response can announce no more calls: its settled ids join the window."""
        for call_id in self._streaming.pop(response_id, ()):
            self._held.discard(call_id)
            self._remember(call_id)

    def connection_ended(self) -> None:
        """Every response in progress ended with the connection."""
        for response_id in list(self._streaming):
            self.response_ended(response_id)

    def _remember(self, call_id: str) -> None:
        self._settled[call_id] = None
        if len(self._settled) > self._remember_settled:
            del self._settled[next(iter(self._settled))]
