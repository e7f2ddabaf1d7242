"""What the session tells the application, as typed, immutable events.

Tool failures carry the ORIGINAL exception object (``error``): rtguard never wraps or
replaces it, and each one is delivered exactly once, either as a :class:`ToolFailed` event or,
when a policy asks for it, raised from the event iterator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._ledger import IncompleteReason, Outcome
from ._protocol import ServerEvent

__all__ = [
    "CallIncomplete",
    "HandoffCompleted",
    "OutputAcknowledged",
    "OutputSendFailed",
    "OutputSent",
    "ProtocolErrorEvent",
    "ServerEvent",
    "SessionClosed",
    "SessionEvent",
    "ToolApprovalRequested",
    "ToolCallStarted",
    "ToolFailed",
    "ToolSucceeded",
]


@dataclass(frozen=True, slots=True)
class ToolApprovalRequested:
    """Answer with ``session.approve(call_id)`` or ``session.reject(call_id, message)``."""

    call_id: str
    tool_name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    call_id: str
    tool_name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolSucceeded:
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
    call_id: str
    from_agent: str
    to_agent: str


@dataclass(frozen=True, slots=True)
class OutputSent:
    call_id: str
    tool_name: str
    attempt: int


@dataclass(frozen=True, slots=True)
class OutputSendFailed:
    """An attempt to send the output failed; ``error`` is the transport's (or server's) error."""

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
    """The call ended without an output the model can see."""

    call_id: str
    tool_name: str
    reason: IncompleteReason
    last_error: BaseException | None


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The last event: the session ended (``reason`` "closed" or "connection_lost")."""

    reason: str
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class ProtocolErrorEvent:
    """A server frame rtguard could not use; it was counted and skipped.

    Every frame rtguard could parse reaches the app as a :class:`ServerEvent` (audio deltas,
    transcripts, ``error`` events as :class:`~rtguard.ServerError`, the response lifecycle).
    """

    reason: str
    detail: str


SessionEvent = (
    ToolApprovalRequested
    | ToolCallStarted
    | ToolSucceeded
    | ToolFailed
    | HandoffCompleted
    | OutputSent
    | OutputSendFailed
    | OutputAcknowledged
    | CallIncomplete
    | ProtocolErrorEvent
    | SessionClosed
    | ServerEvent
)
