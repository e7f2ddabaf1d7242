"""What the session tells the application, as typed, immutable events.

The session core produces one ordered stream of these facts; the application iterates it and
telemetry observes the very same stream, so a trace can never tell a different story than the
app saw.

Tool failures carry the ORIGINAL exception object (``error``): rtguard never wraps or
replaces it, and each one is delivered exactly once, either as a ``ToolFailed`` event or,
when a policy asks for it, raised from the event iterator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._ledger import IncompleteReason, Outcome
from ._protocol import ServerEvent
from ._reconnect import Loss

if TYPE_CHECKING:
    from ._agent import Agent

__all__ = [
    "CallIncomplete",
    "ErrorSwallowed",
    "EventsDropped",
    "HandoffCompleted",
    "OutputAcknowledged",
    "OutputSendFailed",
    "OutputSent",
    "ProtocolErrorEvent",
    "Reconnecting",
    "ServerEvent",
    "SessionClosed",
    "SessionEvent",
    "SessionResumed",
    "SessionStarted",
    "ToolApprovalRequested",
    "ToolCallReceived",
    "ToolCallStarted",
    "ToolFailed",
    "ToolRejected",
    "ToolSucceeded",
]


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """The connection is open and the agent's ``session.update`` is on its way."""

    agent: str


@dataclass(frozen=True, slots=True)
class ToolCallReceived:
    """The model issued a call; ``agent`` is the agent it is bound to (active when issued).

    ``arguments`` is the model's raw JSON text (None if the server sent none).
    """

    call_id: str
    tool_name: str
    agent: Agent
    arguments: str | None
    response_id: str | None


@dataclass(frozen=True, slots=True)
class ToolApprovalRequested:
    """The call waits for the app's approval (its tool's ``needs_approval`` asked for it),
    with ``arguments`` validated. Answer with ``session.approve(call_id)`` or
    ``session.reject(call_id, message)``."""

    call_id: str
    tool_name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """The tool starts, with ``arguments`` validated against its schema (and approved, if it
    needed approval)."""

    call_id: str
    tool_name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolSucceeded:
    """The tool returned; ``output`` is what the model gets (a string result as it is, any
    other as JSON). A confirmed handoff succeeds too, after its ``HandoffCompleted``."""

    call_id: str
    tool_name: str
    output: str


@dataclass(frozen=True, slots=True)
class ToolRejected:
    """The app rejected the call; ``output`` (the rejection message) is what the model gets."""

    call_id: str
    tool_name: str
    output: str


@dataclass(frozen=True, slots=True)
class ToolFailed:
    """The call failed; ``error`` is the original exception, ``output`` what the model gets."""

    call_id: str
    tool_name: str
    outcome: Outcome
    error: BaseException
    output: str


@dataclass(frozen=True, slots=True)
class HandoffCompleted:
    """The server confirmed the new agent's ``session.update``; its output follows."""

    call_id: str
    from_agent: str
    to_agent: str


@dataclass(frozen=True, slots=True)
class OutputSent:
    """Attempt ``attempt`` (from 1) to send the call's output was written; the server has
    yet to confirm it ([`OutputAcknowledged`][rtguard.OutputAcknowledged])."""

    call_id: str
    tool_name: str
    attempt: int


@dataclass(frozen=True, slots=True)
class OutputSendFailed:
    """An attempt failed: the transport raised, or the server refused it (``error`` is then a
    [`ServerRejectedError`][rtguard.ServerRejectedError] with the server's code);
    ``will_retry`` says whether the cached output will be sent again."""

    call_id: str
    tool_name: str
    attempt: int
    error: BaseException
    will_retry: bool


@dataclass(frozen=True, slots=True)
class OutputAcknowledged:
    """The server confirmed the output: the model can see it. ``latency`` counts from the call."""

    call_id: str
    tool_name: str
    outcome: Outcome
    latency: float


@dataclass(frozen=True, slots=True)
class CallIncomplete:
    """The call ended without an output the model can see. ``last_error`` is what ended it:
    the last failed send or refusal, or the connection's end (None for ``session_closed``
    and ``unacknowledged``)."""

    call_id: str
    tool_name: str
    reason: IncompleteReason
    last_error: BaseException | None


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The connection ended (``reason``); attempt ``attempt`` to open a new one starts in
    ``delay`` seconds. ``error`` is what ended it, or why the previous attempt failed (None
    for a rollover). Open calls wait to be carried; what the app sends is held."""

    reason: Loss
    attempt: int
    delay: float
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class SessionResumed:
    """The conversation goes on over a new connection, ``gap`` seconds after the old one
    ended, after ``attempts`` attempts: the active agent's ``session.update`` was sent,
    ``replayed`` conversation items were recreated, and the calls in ``carried`` (still open
    when the connection ended) had their ``function_call`` recreated; their outputs follow."""

    reason: Loss
    attempts: int
    gap: float
    replayed: int
    carried: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The last event. ``reason``: "closed" (the app closed it), "server_closed" (the server
    ended the session with a normal close), "connection_lost" (the connection ended and
    reconnecting is off) or "reconnect_failed" (attempts spent, or a refusal such as an
    invalid key that another attempt would meet again); ``error`` says what happened."""

    reason: str
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class ProtocolErrorEvent:
    """A server frame (or a missing one) rtguard could not use; it was counted and skipped.

    Every frame rtguard could parse reaches the app as a [`ServerEvent`][rtguard.ServerEvent]
    (audio deltas, transcripts, ``error`` events as [`ServerError`][rtguard.ServerError], the
    response lifecycle).
    """

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ErrorSwallowed:
    """rtguard caught ``error`` in ``place`` (a failure formatter of yours that raised, a
    transport that failed to close) and carried on; logged and counted too."""

    place: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class EventsDropped:
    """The app fell more than ``max_queued_events`` behind: ``count`` plain server events
    (audio and transcript deltas, ...) were dropped here. rtguard's own events never are."""

    count: int


@dataclass(frozen=True, slots=True)
class ToolFailedRaised(ToolFailed):
    """Not yielded: a failure whose error the iterator raises (``RaiseToApp``) once the call
    is settled. Telemetry observes it like any ``ToolFailed``."""


@dataclass(frozen=True, slots=True)
class RaiseToApp:
    """Not yielded: the event iterator raises ``error`` at this point of the stream."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class AppFrameDone:
    """Not yielded: the app's frame ``event_id`` was written (``error`` None), or could not
    be; the app's ``send_*`` call waiting for it returns or raises."""

    event_id: str
    error: BaseException | None


SessionEvent = (
    SessionStarted
    | ToolCallReceived
    | ToolApprovalRequested
    | ToolCallStarted
    | ToolSucceeded
    | ToolRejected
    | ToolFailed
    | HandoffCompleted
    | OutputSent
    | OutputSendFailed
    | OutputAcknowledged
    | CallIncomplete
    | ProtocolErrorEvent
    | ErrorSwallowed
    | EventsDropped
    | Reconnecting
    | SessionResumed
    | SessionClosed
    | ServerEvent
)
"""Everything iterating a session can yield: rtguard's own events, and every frame the
server sent as a ``ServerEvent``. One ordered stream, ending with ``SessionClosed``."""

# What the core produces besides events: instructions to the asyncio layer, in stream order.
CoreEvent = SessionEvent | RaiseToApp | AppFrameDone
