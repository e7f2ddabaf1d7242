"""Why a connection ended, and whether the conversation should come back on a new one.

A Realtime session ends in several ways that call for different answers: the server closes a
session it meant to end (1000: not retried), goes away (1001: a restart or the 60-minute
maximum duration: retried), the network breaks (no close frame: retried), or refuses us for
good (an invalid key, exhausted quota: never retried, since every attempt would fail the same
way). rtguard also moves to a fresh connection by itself before the maximum duration
(``rollover``), at a quiet moment, so the server's hard cut never lands in the middle of a call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import ConfigurationError, ConnectionLostError
from ._history import ReplayPolicy

__all__ = ["FATAL_ERROR_CODES", "Loss", "ReconnectPolicy", "classify"]

# Server error codes that end a connection for good: another attempt fails the same way.
FATAL_ERROR_CODES = frozenset({"invalid_api_key", "insufficient_quota"})
EXPIRED_ERROR_CODE = "session_expired"
# Close codes that refuse the client (3000: the Realtime API's authentication failure;
# 1008: policy violation).
_REFUSING_CLOSE_CODES = frozenset({1008, 3000})
# Handshake answers worth another attempt; any other 4xx would be answered the same way.
_RETRYABLE_HTTP_STATUSES = frozenset({408, 425, 429})


class Loss(enum.StrEnum):
    """Why a connection ended: the ``reason`` of reconnect events and metrics."""

    CONNECTION_LOST = "connection_lost"  # no close frame, a transport error, an odd close code
    GOING_AWAY = "going_away"  # 1001: the server restarts
    SESSION_EXPIRED = "session_expired"  # the session hit the server's maximum duration
    ROLLOVER = "rollover"  # rtguard moved to a fresh connection before the maximum duration
    SERVER_CLOSED = "server_closed"  # 1000: the server ended the session on purpose
    REFUSED = "refused"  # authentication, quota, policy: not worth another attempt

    @property
    def retryable(self) -> bool:
        return self not in (Loss.SERVER_CLOSED, Loss.REFUSED)


def classify(error: ConnectionLostError, server_error_code: str | None = None) -> Loss:
    """Why ``error`` ended (or prevented) a connection; ``server_error_code`` is the code of
    the last connection-wide ``error`` event the server sent before it closed."""
    code = error.close_code
    status = error.http_status
    if server_error_code in FATAL_ERROR_CODES or code in _REFUSING_CLOSE_CODES:
        return Loss.REFUSED
    if status is not None and 400 <= status < 500 and status not in _RETRYABLE_HTTP_STATUSES:
        return Loss.REFUSED
    if code == 1000:
        return Loss.SERVER_CLOSED
    expired = server_error_code == EXPIRED_ERROR_CODE or "maximum duration" in error.close_reason
    if expired:
        return Loss.SESSION_EXPIRED
    if code == 1001:
        return Loss.GOING_AWAY
    return Loss.CONNECTION_LOST


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a session comes back after losing its connection, and when it moves on by itself.

    Attempts wait a randomised, growing delay ("full jitter": uniform between 0 and
    ``min(max_backoff, initial_backoff * multiplier ** (attempt - 1))``), so clients that a
    server restart dropped together do not return together. ``max_attempts`` consecutive
    failures give up. A proactive rollover does not wait.

    ``rollover_after`` (seconds since the connection opened; None: never) starts looking for a
    quiet moment (no response in progress, no call open) to move to a fresh connection, well
    before the server's maximum duration (60 minutes); ``rollover_deadline`` moves even if no
    quiet moment came, carrying any open calls as on a lost connection.

    Replaying the conversation: ``history_items`` / ``history_bytes`` bound what is kept (the
    oldest items go first); ``replay`` chooses what of it a new connection gets.
    ``max_held_frames`` bounds the app's frames (messages, audio) held while there is no
    connection; past it, sending raises :class:`~rtguard.ConnectionLostError`.
    """

    max_attempts: int = 6
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    connect_timeout: float = 10.0
    rollover_after: float | None = 55 * 60.0
    rollover_deadline: float = 59 * 60.0
    history_items: int = 256
    history_bytes: int = 1_000_000
    replay: ReplayPolicy | None = None  # None: the last 64 items (rtguard.replay_last(64))
    max_held_frames: int = 1000

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        for name in ("initial_backoff", "max_backoff", "connect_timeout", "rollover_deadline"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if self.rollover_after is not None and not (
            0 < self.rollover_after < self.rollover_deadline
        ):
            raise ConfigurationError("rollover_after must be positive and below rollover_deadline")
        for name in ("history_items", "history_bytes", "max_held_frames"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must not be negative")

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        """The wait before ``attempt`` (1-based), drawn with ``random()`` in [0, 1)."""
        ceiling = self.initial_backoff * self.multiplier ** (attempt - 1)
        return random() * min(self.max_backoff, ceiling)
