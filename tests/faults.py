"""A transport wrapper that makes chosen sends raise, for the send-failure paths.

A real WebSocket cannot be made to fail one write on demand; everything else in these tests
is the real thing (the session, the socket, the simulator).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from rtguard import Transport


class InjectedSendError(OSError):
    """The failure FailingSends raises in place of a send."""


class FailingSends:
    """Raises InjectedSendError for sends that ``should_fail(event)`` picks."""

    def __init__(
        self, inner: Transport, should_fail: Callable[[dict[str, object], int], bool]
    ) -> None:
        self._inner = inner
        self._should_fail = should_fail
        self.attempts: dict[str, int] = {}  # call_id -> output send attempts
        self.failures: list[InjectedSendError] = []

    @property
    def is_open(self) -> bool:
        return self._inner.is_open

    async def send(self, frame: str) -> None:
        event = json.loads(frame)
        item = event.get("item") or {}
        if item.get("type") == "function_call_output":
            call_id = item["call_id"]
            attempt = self.attempts[call_id] = self.attempts.get(call_id, 0) + 1
            if self._should_fail(event, attempt):
                error = InjectedSendError(f"injected send failure for {call_id} attempt {attempt}")
                self.failures.append(error)
                raise error
        await self._inner.send(frame)

    async def recv(self) -> str | bytes:
        return await self._inner.recv()

    async def close(self) -> None:
        await self._inner.close()


def fail_first_output(event: dict[str, object], attempt: int) -> bool:
    return attempt == 1


def fail_every_output(event: dict[str, object], attempt: int) -> bool:
    return True
