"""Moving frames: the interface the session needs, and its WebSocket implementation.

The session only needs to send text, receive frames and close, so tests and users can put
anything with these three methods between the session and the server (a fault injector, an
in-process pipe). A transport raises :class:`~rtguard.ConnectionLostError` once the connection
is gone, with the server's close code when there was one; any other exception from ``send``
is treated as transient and retried.

A session opens its connections with a :data:`Connector`, an async callable returning a new
open transport, so that it can open another one when a connection is lost.

The WebSocket transport can also hand each message to the session as soon as websockets has
parsed it, from the event loop's ``data_received`` callback (:meth:`WebSocketTransport.\
deliver_to`), as aioquic's protocol hands its events on: no reader task to wake and no queue
in between, for each of the fifty audio chunks a second a speaking model sends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

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


# What a connection opened by WebSocketTransport.connect does with each message.
_HOLD = 0  # keep it (until deliver_to or recv takes over)
_PULL = 1  # websockets' own queue, for recv(), with its flow control
_PUSH = 2  # hand it to the receiver at once
_DISCARD = 3  # drop it: the session is done with this connection
_HELD_MESSAGES = 16  # held at most (websockets' queue size) before recv() is assumed
_DATA_OPCODES = frozenset((Opcode.CONT, Opcode.TEXT, Opcode.BINARY))


class _Connection(ClientConnection):
    """websockets' client connection, able to hand each message to a callback as it is parsed.

    Until the session takes over (``deliver_to``, or the first ``recv()``), messages are held:
    the server speaks as soon as the handshake is done, before anyone reads.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = _HOLD
        self.held: list[Frame] = []  # whole messages, one frame each (a list: at most 16)
        self.receiver: Callable[[Frame], None] = _ignore
        self.ended: Callable[[], None] = _nothing
        self._parts: list[Frame] = []  # a fragmented message so far

    def process_event(self, event: Event) -> None:
        if not isinstance(event, Frame) or event.opcode not in _DATA_OPCODES:
            super().process_event(event)  # control frames: pongs for the keepalive
            return
        if self.mode == _PULL and not self._parts:
            super().process_event(event)
            return
        if self._parts or not event.fin:
            self._parts.append(event)
            if not event.fin:
                return
            parts, self._parts = self._parts, []
            event = Frame(parts[0].opcode, b"".join(part.data for part in parts))
        if self.mode == _PUSH:
            self.receiver(event)
        elif self.mode == _HOLD:
            self.held.append(event)
            if len(self.held) >= _HELD_MESSAGES:
                self.mode = _PULL  # nobody took over yet: websockets queues and paces reading
        elif self.mode == _PULL:
            super().process_event(event)  # a message begun while held

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.mode == _PUSH:
            self.mode = _DISCARD
            self.ended()


def _ignore(frame: Frame) -> None:
    pass


def _nothing() -> None:
    pass


def _payload(frame: Frame) -> str | bytes:
    """A text message as text (UnicodeDecodeError if it is not UTF-8), a binary one as bytes."""
    return str(frame.data, "utf-8") if frame.opcode is Opcode.TEXT else bytes(frame.data)


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
                create_connection=_Connection,
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
        connection = self._connection
        if isinstance(connection, _Connection):
            if connection.mode == _HOLD:
                connection.mode = _PULL
            if connection.held:
                return _payload(connection.held.pop(0))
        try:
            return await connection.recv()
        except websockets.ConnectionClosed as exc:
            raise _closed(exc) from exc

    def deliver_to(
        self,
        receiver: Callable[[str | bytes], None] | None,
        ended: Callable[[Exception], None] | None = None,
    ) -> bool:
        """Hand each message to ``receiver`` as soon as it is parsed, in order, from the
        event loop's ``data_received`` callback, instead of ``recv()``; the end of the
        connection goes to ``ended`` once (a ``ConnectionLostError``, or the error decoding a
        message raised). Neither may raise. ``receiver`` None stops the delivery: what
        arrives later is discarded, so that a close handshake is never held up unread.

        Returns False (use ``recv()``) if this transport cannot: it wraps a connection it did
        not open, or ``recv()`` was called first.
        """
        connection = self._connection
        if not isinstance(connection, _Connection):
            return False
        if receiver is None:
            connection.mode = _DISCARD
            connection.receiver, connection.ended = _ignore, _nothing
            return True
        if connection.mode != _HOLD or ended is None:
            return False

        def push(frame: Frame) -> None:
            try:
                message = _payload(frame)
            except UnicodeDecodeError as exc:  # what recv() would have raised
                connection.mode = _DISCARD
                ended(exc)
                return
            receiver(message)

        def closed() -> None:
            ended(_closed(connection.protocol.close_exc))

        connection.mode, connection.receiver, connection.ended = _PUSH, push, closed
        while connection.held and connection.mode == _PUSH:
            push(connection.held.pop(0))
        if connection.mode == _PUSH and connection.state is websockets.State.CLOSED:
            connection.mode = _DISCARD  # it ended before the session took over
            closed()
        return True

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
