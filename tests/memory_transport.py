"""An in-process transport for property tests: frames scripted by the test go in, and it
answers each function_call_output the way a server does (a conversation.item.added)."""

from __future__ import annotations

import asyncio
import json


class ScriptedServer:
    """Implements rtguard's Transport interface without a socket, for thousands of examples."""

    def __init__(self, frames: list[str | bytes]) -> None:
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        for frame in frames:
            self._inbox.put_nowait(frame)
        self.outputs: list[tuple[str, str]] = []  # (call_id, output) in send order
        self.response_creates = 0
        self._open = True

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def drained(self) -> bool:
        return self._inbox.empty()

    async def send(self, frame: str) -> None:
        event = json.loads(frame)
        if event["type"] == "response.create":
            self.response_creates += 1
        item = event.get("item") or {}
        if item.get("type") == "function_call_output":
            self.outputs.append((item["call_id"], item["output"]))
            self._inbox.put_nowait(json.dumps({"type": "conversation.item.added", "item": item}))

    async def recv(self) -> str | bytes:
        frame = await self._inbox.get()
        if frame is None:
            from rtguard import ConnectionLostError

            raise ConnectionLostError("closed")
        return frame

    async def close(self) -> None:
        self._open = False
        self._inbox.put_nowait(None)
