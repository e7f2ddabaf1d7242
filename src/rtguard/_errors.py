"""Exceptions rtguard raises or hands to the application.

Errors that describe a tool call (timeout, unknown tool, bad arguments, failed handoff) are
delivered to the app in place of an exception the tool never raised, so every failed call
carries an exception object, and the model gets a text built from it.
"""

from __future__ import annotations


class RtguardError(Exception):
    """Base class of every exception rtguard defines."""


class ConfigurationError(RtguardError):
    """A mistake in how the app set rtguard up (duplicate tool names, a bad handoff target)."""


class ToolCallError(RtguardError):
    """A call failed around the tool itself; ``tool_name`` is what the model asked for."""

    def __init__(self, tool_name: str, message: str) -> None:
        super().__init__(message)
        self.tool_name = tool_name


class UnknownToolError(ToolCallError):
    """The model called a tool the current agent does not have."""

    def __init__(self, tool_name: str) -> None:
        super().__init__(tool_name, f"no tool named {tool_name!r}")


class InvalidArgumentsError(ToolCallError):
    """The arguments were not JSON, or did not match the tool's schema."""


class ToolTimeoutError(ToolCallError):
    """The tool did not finish within its ``timeout``."""

    def __init__(self, tool_name: str, timeout: float) -> None:
        super().__init__(tool_name, f"tool {tool_name!r} timed out after {timeout:g} seconds")
        self.timeout = timeout


class ToolResultError(ToolCallError):
    """The tool returned a value that cannot be serialised to JSON for the model."""


class HandoffError(ToolCallError):
    """A handoff raised, returned something that is not an Agent, or could not be applied."""


class ProtocolError(RtguardError):
    """A server event rtguard could not use: not JSON, not an object, or missing a field.

    ``reason`` is one of a small fixed set (it becomes a metric label).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ConnectionLostError(RtguardError):
    """The connection closed, or could not be opened, while the session needed it.

    ``close_code`` and ``close_reason`` come from the server's WebSocket close frame (None and
    "" when the connection broke without one); ``http_status`` is the handshake's status when
    the server refused to open a connection. rtguard reads them to tell a deliberate end, an
    expiry, a broken network and a refusal apart.
    """

    def __init__(
        self,
        message: str,
        *,
        close_code: int | None = None,
        close_reason: str = "",
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.close_reason = close_reason
        self.http_status = http_status


class SessionClosedError(RtguardError):
    """The app used a session that is already closed."""


class ServerRejectedError(RtguardError):
    """The server answered one of our events with an ``error`` event.

    ``error_type`` is the server's class of error: only a ``server_error`` is worth retrying.
    """

    def __init__(self, code: str | None, message: str, error_type: str | None = None) -> None:
        super().__init__(f"server refused the event: {code or 'error'}: {message}")
        self.code = code
        self.error_type = error_type
