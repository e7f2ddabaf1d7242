"""A WebSocket server on 127.0.0.1 that plays a test's script against one client: for server
behaviour the simulator has no reason to offer (floods, malformed responses)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed


class Peer:
    """The server's side of one connection, as the script sees it."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self._ids = iter(range(1, 1_000_000))

    async def send(self, event_type: str, **fields: Any) -> None:
        event = {"type": event_type, "event_id": f"event_{next(self._ids)}", **fields}
        await self.ws.send(json.dumps(event))

    async def issue_call(
        self, call_id: str, name: str, item_id: str, output_index: int = 0, **fields: Any
    ) -> None:
        """The model issues a call: its ``response.function_call_arguments.done``, with no
        arguments (``{}``)."""
        await self.send(
            "response.function_call_arguments.done",
            item_id=item_id,
            output_index=output_index,
            call_id=call_id,
            name=name,
            arguments="{}",
            **fields,
        )

    async def until(self, event_type: str) -> dict[str, Any]:
        """Read client events until one of ``event_type`` comes; return it."""
        while True:
            event: dict[str, Any] = json.loads(await self.ws.recv())
            self.received.append(event)
            if event["type"] == event_type:
                return event

    async def drain(self) -> None:
        """Keep reading (and recording) client events until the client goes away."""
        try:
            while True:
                self.received.append(json.loads(await self.ws.recv()))
        except ConnectionClosed:
            pass

    async def acknowledge_outputs(self) -> None:
        """Answer every function_call_output the way the server does, until the client goes."""
        try:
            while True:
                event = json.loads(await self.ws.recv())
                self.received.append(event)
                item = event.get("item") or {}
                if item.get("type") == "function_call_output":
                    await self.send("conversation.item.added", previous_item_id=None, item=item)
        except ConnectionClosed:
            pass


Script = Callable[[Peer], Awaitable[None]]


class ScriptedWebSocket:
    """``async with ScriptedWebSocket(script) as server:`` then connect to ``server.url``."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self._server: Server | None = None
        self.peers: list[Peer] = []

    async def __aenter__(self) -> ScriptedWebSocket:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/realtime"

    async def _handle(self, ws: ServerConnection) -> None:
        peer = Peer(ws)
        self.peers.append(peer)
        await peer.send("session.created", session={"type": "realtime", "id": "sess_scripted"})
        with contextlib.suppress(ConnectionClosed):
            await self._script(peer)
        await asyncio.sleep(0)
