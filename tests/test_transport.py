"""WebSocketTransport against a real WebSocket server: frames handed over as they arrive
(``deliver_to``) or read with ``recv()``, the same messages in the same order either way,
and the end of the connection reported as ``recv()`` would raise it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import ServerConnection, serve

from rtguard import ConnectionLostError
from rtguard._transport import WebSocketTransport

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as running:
        port = running.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


class Received:
    """What ``deliver_to`` handed over."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.ended: list[Exception] = []
        self.done = asyncio.Event()

    def message(self, message: str | bytes) -> None:
        self.messages.append(message)

    def end(self, error: Exception) -> None:
        self.ended.append(error)
        self.done.set()


async def test_messages_sent_before_delivery_starts_come_first_then_the_rest_in_order() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("early 1")
        await ws.send("early 2")
        await ws.recv()  # the client took over
        await ws.send(["frag", "mented"])  # one message in two frames
        await ws.send(b"\x00binary")
        await ws.close(1001, "going away")

    async with server(handler) as url:
        transport = await WebSocketTransport.connect(url, {})
        await asyncio.sleep(0.1)  # both early messages are in
        received = Received()
        assert transport.deliver_to(received.message, received.end)
        await transport.send("go")
        await asyncio.wait_for(received.done.wait(), 5)
    assert received.messages == ["early 1", "early 2", "fragmented", b"\x00binary"]
    (error,) = received.ended
    assert isinstance(error, ConnectionLostError)
    assert (error.close_code, error.close_reason) == (1001, "going away")


async def test_recv_reads_the_same_messages_and_raises_the_same_end() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("early")
        await ws.recv()
        await ws.send(["frag", "mented"])
        await ws.close(1001, "going away")

    async with server(handler) as url:
        transport = await WebSocketTransport.connect(url, {})
        await asyncio.sleep(0.1)
        assert await transport.recv() == "early"
        assert not transport.deliver_to(print, print)  # recv() took over
        await transport.send("go")
        assert await transport.recv() == "fragmented"
        with pytest.raises(ConnectionLostError) as caught:
            await transport.recv()
    assert caught.value.close_code == 1001


async def test_a_text_frame_that_is_not_utf8_ends_delivery_as_recv_would_raise() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(b"\xff\xfe", text=True)
        await ws.wait_closed()

    async with server(handler) as url:
        pulled = await WebSocketTransport.connect(url, {})
        with pytest.raises(UnicodeDecodeError):
            await pulled.recv()
        await pulled.close()
        pushed = await WebSocketTransport.connect(url, {})
        received = Received()
        assert pushed.deliver_to(received.message, received.end)
        await asyncio.wait_for(received.done.wait(), 5)
        await pushed.close()
    assert received.messages == []
    assert [type(e) for e in received.ended] == [UnicodeDecodeError]


async def test_once_delivery_stops_what_arrives_is_discarded_and_the_close_completes() -> None:
    async def handler(ws: ServerConnection) -> None:
        while True:  # a server that never stops talking
            await ws.send("x" * 1000)
            await asyncio.sleep(0)

    async with server(handler) as url:
        transport = await WebSocketTransport.connect(url, {})
        received = Received()
        assert transport.deliver_to(received.message, received.end)
        while len(received.messages) < 10:
            await asyncio.sleep(0.01)
        transport.deliver_to(None)
        count = len(received.messages)
        await asyncio.sleep(0.1)
        assert len(received.messages) == count
        await asyncio.wait_for(transport.close(), 5)
    assert not transport.is_open
    assert received.ended == []  # stopped first: the end is not reported


async def test_the_end_of_a_connection_that_closed_before_delivery_is_still_reported() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("last words")
        await ws.close(1000)

    async with server(handler) as url:
        transport = await WebSocketTransport.connect(url, {})
        await asyncio.sleep(0.2)  # closed by now
        received = Received()
        assert transport.deliver_to(received.message, received.end)
        await asyncio.wait_for(received.done.wait(), 5)
    assert received.messages == ["last words"]
    assert len(received.ended) == 1
