"""rtguard: a realtime (OpenAI Realtime API) tool-call session where every call the model
issues gets exactly one model-visible output, and every failure reaches the app."""

from ._agent import Agent, Handoff, handoff
from ._config import SessionConfig
from ._errors import (
    ConfigurationError,
    ConnectionLostError,
    HandoffError,
    InvalidArgumentsError,
    ProtocolError,
    RtguardError,
    ServerRejectedError,
    SessionClosedError,
    ToolCallError,
    ToolResultError,
    ToolTimeoutError,
    UnknownToolError,
)
from ._events import (
    CallIncomplete,
    ErrorSwallowed,
    EventsDropped,
    HandoffCompleted,
    OutputAcknowledged,
    OutputSendFailed,
    OutputSent,
    ProtocolErrorEvent,
    SessionClosed,
    SessionEvent,
    SessionStarted,
    ToolApprovalRequested,
    ToolCallReceived,
    ToolCallStarted,
    ToolFailed,
    ToolRejected,
    ToolSucceeded,
)
from ._failures import FailureOutput, ToolFailure, default_failure_output, redact
from ._ledger import CallState, IncompleteReason, Outcome, RetryPolicy
from ._protocol import ServerError, ServerEvent
from ._session import DEFAULT_URL, RealtimeSession
from ._tools import FunctionTool, function_tool
from ._transport import Transport, WebSocketTransport
from ._version import __version__

__all__ = [
    "DEFAULT_URL",
    "Agent",
    "CallIncomplete",
    "CallState",
    "ConfigurationError",
    "ConnectionLostError",
    "ErrorSwallowed",
    "EventsDropped",
    "FailureOutput",
    "FunctionTool",
    "Handoff",
    "HandoffCompleted",
    "HandoffError",
    "IncompleteReason",
    "InvalidArgumentsError",
    "Outcome",
    "OutputAcknowledged",
    "OutputSendFailed",
    "OutputSent",
    "ProtocolError",
    "ProtocolErrorEvent",
    "RealtimeSession",
    "RetryPolicy",
    "RtguardError",
    "ServerError",
    "ServerEvent",
    "ServerRejectedError",
    "SessionClosed",
    "SessionClosedError",
    "SessionConfig",
    "SessionEvent",
    "SessionStarted",
    "ToolApprovalRequested",
    "ToolCallError",
    "ToolCallReceived",
    "ToolCallStarted",
    "ToolFailed",
    "ToolFailure",
    "ToolRejected",
    "ToolResultError",
    "ToolSucceeded",
    "ToolTimeoutError",
    "Transport",
    "UnknownToolError",
    "WebSocketTransport",
    "__version__",
    "default_failure_output",
    "function_tool",
    "handoff",
    "redact",
]
