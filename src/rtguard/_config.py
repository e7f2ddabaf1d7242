"""How a session behaves: one frozen value with a production default for every field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import ConfigurationError
from ._failures import FailureOutput, default_failure_output
from ._ledger import RetryPolicy
from ._reconnect import ReconnectPolicy
from ._transport import DEFAULT_MAX_FRAME_BYTES

__all__ = ["OnToolError", "SessionConfig"]

OnToolError = Literal["continue", "raise", "close"]


@dataclass(frozen=True)
class SessionConfig:
    """How a session behaves; every field has a production default.

    Pass it as ``RealtimeSession(..., config=SessionConfig(...))``. It is frozen: use
    ``dataclasses.replace`` to derive another one.

    Raises:
        ConfigurationError: an unknown ``on_tool_error``, a timeout that is not a positive
            number of seconds, or ``max_argument_bytes``, ``max_output_bytes`` or
            ``max_queued_events`` below 1.
    """

    async_tool_calls: bool = True
    """``False`` runs one call at a time, in the order the model issued them; the connection
    keeps being read meanwhile (acknowledgements, errors, audio)."""
    on_tool_error: OnToolError = "continue"
    """``"continue"``: failures are [`ToolFailed`][rtguard.ToolFailed] events. ``"raise"``:
    the original exception is raised from the event iterator once the call is settled
    (iterate again to continue). ``"close"``: the same, then the session closes."""
    failure_output: FailureOutput = default_failure_output
    """The model-visible text of every failure kind (also per tool:
    ``function_tool(failure_output=...)``). The default names the tool, the exception type
    and message, never a traceback, and redacts what looks like API keys and bearer tokens.
    If yours raises or returns something that is
    not a string, the default is used and an [`ErrorSwallowed`][rtguard.ErrorSwallowed]
    says so."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Resending a cached output after a transport error or a server ``error`` of type
    ``server_error``."""
    reconnect: ReconnectPolicy | None = field(default_factory=ReconnectPolicy)
    """Replacing a lost connection and carrying the conversation and open calls over;
    ``None``: a lost connection ends the session, its open calls ``connection_lost``."""
    close_timeout: float = 5.0
    """Seconds ``close()`` gives open calls to be answered."""
    ack_timeout: float = 10.0
    """Seconds to wait for the server to confirm a sent output (then the call is
    ``unacknowledged``; it is not resent: if only the confirmation was lost, a resend would
    give the model two outputs), or a handoff's ``session.update`` (then the handoff
    fails)."""
    response_timeout: float = 60.0
    """Seconds to wait for a response's ``response.done``; then rtguard goes on as if it
    came (a ``ProtocolErrorEvent("response_timeout")``), so a lost event cannot block
    ``response.create`` for good."""
    max_argument_bytes: int = 1_000_000
    """Larger arguments get an ``invalid_arguments`` output (the call is answered, not
    dropped)."""
    max_output_bytes: int = 1_000_000
    """A larger result becomes a failure output (``ToolResultError``) for that call alone."""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """The WebSocket's maximum message size (16 MiB); a larger frame closes the
    connection."""
    max_queued_events: int = 4096
    """Events waiting for the app; past it, plain server events are dropped and one
    [`EventsDropped`][rtguard.EventsDropped] says how many."""
    remember_settled_calls: int = 64
    """Settled call ids kept, once their response ended, to recognise a server repeating an
    older ``call_id`` (each response's own ids are kept until it ends, whatever this says);
    older ones are forgotten."""
    session_options: Mapping[str, Any] = field(default_factory=dict)
    """Extra GA ``session.update`` fields (``model``, ``audio``, ``output_modalities``,
    ...); the server refuses a field it does not know, for example a top-level ``voice``
    (it is ``audio.output.voice``)."""

    def __post_init__(self) -> None:
        if self.on_tool_error not in ("continue", "raise", "close"):
            raise ConfigurationError(f"unknown on_tool_error {self.on_tool_error!r}")
        for name in ("close_timeout", "ack_timeout", "response_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        for name in ("max_argument_bytes", "max_output_bytes", "max_queued_events"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
