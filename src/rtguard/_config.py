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

    ``on_tool_error``: "continue" reports a failed call as a :class:`ToolFailed` event;
    "raise" raises the original exception from the event iterator once the call is settled;
    "close" does the same, then closes the session.
    ``async_tool_calls=False`` runs one call at a time, in the order the model issued them,
    while the connection keeps being read.
    ``reconnect``: how a lost connection is replaced and open calls carried to the new one
    (None: a lost connection ends the session, its open calls ``connection_lost``).
    """

    async_tool_calls: bool = True
    on_tool_error: OnToolError = "continue"
    failure_output: FailureOutput = default_failure_output
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    reconnect: ReconnectPolicy | None = field(default_factory=ReconnectPolicy)
    close_timeout: float = 5.0
    ack_timeout: float = 10.0
    response_timeout: float = 60.0
    max_argument_bytes: int = 1_000_000
    max_output_bytes: int = 1_000_000
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_queued_events: int = 4096
    remember_settled_calls: int = 10_000
    session_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_tool_error not in ("continue", "raise", "close"):
            raise ConfigurationError(f"unknown on_tool_error {self.on_tool_error!r}")
        for name in ("close_timeout", "ack_timeout", "response_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        for name in ("max_argument_bytes", "max_output_bytes", "max_queued_events"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
