"""Moving frames: the interface the session needs, and its WebSocket implementation.

The session only needs to send text, receive frames and close, so tests and users can put
anything with these three methods between the session and the server (a fault injector, an
in-process pipe). A transport raises :class:`~rtguard.ConnectionLostError` once the connection
is gone, with the server's close code when there was one; any other exception from ``send``
is treated as transient and retried.

A session opens its connections with a :data:`Connector`, an async callable returning a new
open transport, so that it can open another one when a connection is lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, runtime_checkable

import websockets
from websockets.asyncio.client import ClientConnection, connect

from ._errors import ConnectionLostError
from ._failures import redacting_logger

__all__ = ["Connector", "Transport", "WebSocketTransport"]

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024


@runtime_checkable
class Transport(Protocol):
    """One open connection to a Realtime server: what a session needs to move frames.

    Anything with these four members will do (a fault injector, an in-process pipe); a
    [`Connector`][rtguard.Connector] opens one. Once the connection is gone, ``send`` and
    ``recv`` raise [`ConnectionLostError`][rtguard.ConnectionLostError], with the server's
    close code when there was one.
    """

    @property
    def is_open(self) -> bool:
        """Whether the connection is still open; read after ``send`` raised, to tell a
        transient failure (retried) from a lost connection."""
        ...

    async def send(self, frame: str) -> None:
        """Write one text frame. Any exception other than ``ConnectionLostError`` while the
        connection is open counts as transient: the output is resent after a backoff."""
        ...

    async def recv(self) -> str | bytes:
        """The next frame from the server; raises ``ConnectionLostError`` once it is gone."""
        ...

    async def close(self) -> None:
        """Close the connection; the session reads and discards what still arrives
        meanwhile."""
        ...


Connector = Callable[[], Awaitable[Transport]]
"""Opens a new connection to the server; raises ConnectionLostError if it cannot.

The session calls it for its first connection (in ``connect()``, which raises what it
raises) and for each one after a loss, where each attempt is bounded by
``ReconnectPolicy.connect_timeout`` and anything it raises counts as a failed attempt."""


class WebSocketTransport:
    """A client WebSocket (the ``websockets`` package) to a Realtime endpoint.

    The session's default transport. Open one with ``connect``; the constructor wraps a
    ``websockets`` connection that is already open.
    """

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    @classmethod
    async def connect(
        cls,
        url: str,
        headers: Mapping[str, str],
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        open_timeout: float = 10.0,
    ) -> WebSocketTransport:
        """Open a WebSocket to ``url`` with ``headers`` (for instance ``Authorization``).

        Frames are not compressed, and a frame larger than ``max_frame_bytes`` closes the
        connection. A connection that cannot be opened within ``open_timeout`` seconds, or
        that the server refuses, raises [`ConnectionLostError`][rtguard.ConnectionLostError]
        with the handshake's ``http_status`` when there was one; its message never repeats
        the headers or the URL's query.
        """
        try:
            connection = await connect(
                url,
                additional_headers=dict(headers),
                max_size=max_frame_bytes,
                open_timeout=open_timeout,
                compression=None,
                logger=redacting_logger("websockets.client"),
            )
        except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
            # Not `raise ... from exc`'s message: handshake errors can echo request headers.
            status = exc.response.status_code if isinstance(exc, websockets.InvalidStatus) else None
            detail = f"HTTP {status}" if status is not None else type(exc).__name__
            raise ConnectionLostError(
                f"could not connect to {_without_query(url)}: {detail}", http_status=status
            ) from exc
        return cls(connection)

    @property
    def is_open(self) -> bool:
        """Whether the WebSocket is open."""
        return self._connection.state is websockets.State.OPEN

    async def send(self, frame: str) -> None:
        """Send a text frame; a closed connection raises ``ConnectionLostError``."""
        try:
            await self._connection.send(frame)
        except websockets.ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def recv(self) -> str | bytes:
        """The next message; a closed connection raises ``ConnectionLostError`` with the
        close code and reason the server sent (None and "" without a close frame)."""
        try:
            return await self._connection.recv()
        except websockets.ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def close(self) -> None:
        """Close the WebSocket with a normal close handshake."""
        await self._connection.close()


def _closed(exc: websockets.ConnectionClosed) -> ConnectionLostError:
    close = exc.rcvd
    if close is None:
        return ConnectionLostError("connection closed (no close frame)")
    return ConnectionLostError(
        f"connection closed ({close})", close_code=close.code, close_reason=close.reason
    )


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]
