"""A fault-injecting WebSocket relay between a session and a server, on 127.0.0.1.

It forwards frames both ways and, for the frames a ``FrameFault`` matches, drops them,
duplicates them, holds them back (so later frames overtake them: reordering, late acks), or
cuts both TCP connections at that point, in the middle of a call. ``stall()`` pauses all
forwarding for a while, like a network that stops moving. When one side ends, the other ends
the same way: the same close code and reason, or an abort if the connection was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from .._failures import redacting_logger

__all__ = ["FaultProxy", "FrameFault"]

Direction = Literal["to_server", "to_client"]
FaultAction = Literal["drop", "duplicate", "delay", "cut"]


@dataclass
class FrameFault:
    """Apply ``action`` to frames going ``direction`` whose kind is ``kind``.

    A frame's kind is its event ``type``, or for ``conversation.item.create`` and the
    ``conversation.item.*`` confirmations, ``<type>:<item type>`` (for example
    ``conversation.item.added:function_call_output``). ``times`` matching frames are hit
    (None: all of them), after skipping the first ``skip``.

    ``action``: ``"drop"`` forwards nothing, ``"duplicate"`` forwards the frame twice,
    ``"delay"`` forwards it ``delay`` seconds later (frames behind it overtake it), and
    ``"cut"`` aborts both connections at that frame, without a close handshake.
    """

    direction: Direction
    """``"to_server"`` (what the session sends) or ``"to_client"`` (what the server sends)."""
    kind: str
    """The frame kind to match, such as ``response.create`` or
    ``conversation.item.added:function_call_output``."""
    action: FaultAction
    """``"drop"``, ``"duplicate"``, ``"delay"`` or ``"cut"``."""
    delay: float = 0.0
    """Seconds a ``"delay"`` holds the frame back."""
    times: int | None = 1
    """How many matching frames to hit; None: all of them."""
    skip: int = 0
    """How many matching frames to let through first."""
    hits: int = 0
    """How many frames it hit so far."""
    seen: int = 0
    """How many matching frames it saw so far."""

    def applies(self, direction: Direction, kind: str) -> bool:
        """Whether this frame is hit, counting it (the relay calls it once per frame)."""
        if direction != self.direction or kind != self.kind:
            return False
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.hits >= self.times):
            return False
        self.hits += 1
        return True


def frame_kind(frame: str | bytes) -> str:
    try:
        event = json.loads(frame)
        kind = str(event["type"])
        item = event.get("item")
    except (ValueError, TypeError, KeyError, AttributeError):
        return "<malformed>"
    if isinstance(item, dict) and kind.startswith("conversation.item."):
        return f"{kind}:{item.get('type')}"
    return kind


class FaultProxy:
    """A WebSocket relay on 127.0.0.1 that injects frame faults between a session and a
    server: ``async with FaultProxy(server_url, faults) as proxy:`` then connect the session
    to ``proxy.url``.

    Each connection to the proxy opens one to ``upstream_url`` (passing the
    ``Authorization`` header on) and relays frames both ways; the first of ``faults`` that
    matches a frame decides what happens to it. When one side ends, the other ends the same
    way: the same close code and reason, or an abort if the connection was cut.
    """

    def __init__(self, upstream_url: str, faults: list[FrameFault] | None = None) -> None:
        self.upstream_url = upstream_url
        """The server the proxy relays to."""
        self.faults = faults or []
        """The frame faults, tried in order for each frame."""
        self._server: Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pairs: list[tuple[ServerConnection, ClientConnection]] = []
        self._held: set[asyncio.Task[None]] = set()
        self.cuts = 0
        """How many times the connections were cut (``cut()`` or a ``"cut"`` fault)."""

    async def __aenter__(self) -> FaultProxy:
        self._server = await serve(
            self._relay,
            "127.0.0.1",
            0,
            compression=None,
            max_size=None,
            logger=redacting_logger("websockets.server"),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._held:
            task.cancel()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        """Where to connect the session: ``ws://127.0.0.1:<port>/v1/realtime``."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/realtime"

    async def stall(self, seconds: float) -> None:
        """Stop forwarding in both directions for ``seconds``."""
        self._flowing.clear()
        await asyncio.sleep(seconds)
        self._flowing.set()

    def cut(self) -> None:
        """Abort every relayed TCP connection, both sides, without a close handshake."""
        self.cuts += 1
        for downstream, upstream in self._pairs:
            downstream.transport.abort()
            upstream.transport.abort()

    async def _relay(self, downstream: ServerConnection) -> None:
        request = downstream.request
        assert request is not None  # the handshake is done when the handler runs
        headers = {k: v for k, v in request.headers.raw_items() if k.lower() == "authorization"}
        async with connect(
            self.upstream_url,
            additional_headers=headers,
            compression=None,
            max_size=None,
            logger=redacting_logger("websockets.client"),
        ) as upstream:
            pair = (downstream, upstream)
            self._pairs.append(pair)
            try:
                pumps = [
                    asyncio.create_task(self._pump(downstream, upstream, "to_server")),
                    asyncio.create_task(self._pump(upstream, downstream, "to_client")),
                ]
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            finally:
                self._pairs.remove(pair)

    async def _pump(
        self,
        source: ServerConnection | ClientConnection,
        sink: ServerConnection | ClientConnection,
        direction: Direction,
    ) -> None:
        try:
            async for frame in source:
                await self._flowing.wait()
                kind = frame_kind(frame)
                fault = next((f for f in self.faults if f.applies(direction, kind)), None)
                if fault is None:
                    await sink.send(frame)
                elif fault.action == "duplicate":
                    await sink.send(frame)
                    await sink.send(frame)
                elif fault.action == "delay":
                    task = asyncio.create_task(self._send_later(sink, frame, fault.delay))
                    self._held.add(task)
                    task.add_done_callback(self._held.discard)
                elif fault.action == "cut":
                    self.cut()
                    return
                # "drop": forward nothing
        except ConnectionClosed:
            pass
        await _end_like(source, sink)

    @staticmethod
    async def _send_later(
        sink: ServerConnection | ClientConnection, frame: str | bytes, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(ConnectionClosed):
            await sink.send(frame)


async def _end_like(
    source: ServerConnection | ClientConnection, sink: ServerConnection | ClientConnection
) -> None:
    """End ``sink`` as ``source`` ended: with its close code and reason (a client can tell a
    session's expiry, 1001, from a deliberate end, 1000), or by an abort if it was cut."""
    received = source.protocol.close_rcvd
    if received is None:
        sink.transport.abort()
    elif received.code == CloseCode.NO_STATUS_RCVD:
        await sink.close()
    else:
        await sink.close(received.code, received.reason)
