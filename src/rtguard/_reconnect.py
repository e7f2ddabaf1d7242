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
    """No close frame, a transport error, an unexpected close code: reconnects."""
    GOING_AWAY = "going_away"  # 1001: the server restarts
    """Close 1001, a restart: reconnects."""
    SESSION_EXPIRED = "session_expired"  # the session hit the server's maximum duration
    """Close 1001 with the maximum-duration reason, or after a ``session_expired`` error:
    reconnects."""
    ROLLOVER = "rollover"  # rtguard moved to a fresh connection before the maximum duration
    """rtguard's own move to a fresh connection before the maximum duration: reconnects at
    once."""
    SERVER_CLOSED = "server_closed"  # 1000: the server ended the session on purpose
    """Close 1000, the server ended the session on purpose: the session ends."""
    REFUSED = "refused"  # authentication, quota, policy: not worth another attempt
    """Authentication (close 3000), policy (1008), ``invalid_api_key`` or
    ``insufficient_quota``, a handshake refused with a 4xx other than 408, 425 or 429: the
    session ends, since another attempt would meet the same answer."""

    @property
    def retryable(self) -> bool:
        """Whether a connection that ended this way is worth replacing."""
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
    connection; past it, sending raises [`ConnectionLostError`][rtguard.ConnectionLostError].

    Raises:
        ConfigurationError: ``max_attempts`` below 1, a backoff, timeout or deadline that is
            not positive, ``rollover_after`` not between 0 and ``rollover_deadline``, or a
            negative history or held-frames bound.
    """

    max_attempts: int = 6
    """Attempts in a row before giving up (the session ends with ``reconnect_failed``)."""
    initial_backoff: float = 0.2
    """The ceiling of the first attempt's random delay, in seconds."""
    max_backoff: float = 5.0
    """The highest ceiling of an attempt's random delay, in seconds."""
    multiplier: float = 2.0
    """How much the ceiling grows from one attempt to the next."""
    connect_timeout: float = 10.0
    """Seconds for one attempt."""
    rollover_after: float | None = 55 * 60.0
    """Seconds after a connection opened (55 minutes) when to look for a quiet moment to
    roll over; None: never."""
    rollover_deadline: float = 59 * 60.0
    """Seconds after a connection opened (59 minutes) when to roll over regardless."""
    history_items: int = 64
    """Conversation items kept to replay: as many as the default ``replay`` uses (a voice
    session records three items a call; each costs memory in every session). Raise it with
    a policy that replays more."""
    history_bytes: int = 256_000
    """Bytes of conversation items (their text) kept to replay."""
    replay: ReplayPolicy | None = None  # None: the last 64 items (rtguard.replay_last(64))
    """What a new connection gets of the recorded items: ``replay_all``,
    ``replay_last(n)`` or your own; None: ``replay_last(64)``. If yours raises or returns
    something that is not items, the default is used and an
    ``ErrorSwallowed("replay_policy")`` says so."""
    max_held_frames: int = 1000
    """The app's frames held while there is no connection (20 s of 20 ms audio chunks)."""

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
