"""The events waiting for the app, bounded so an app that stops iterating cannot grow memory
without limit.

Policy: once ``limit`` events wait, further plain server events (audio and transcript deltas,
and every other frame rtguard does not act on) are dropped on arrival, and the app is told how
many with one :class:`EventsDropped` in their place when it catches up. rtguard's own events
(calls, outputs, errors, ``SessionClosed``) and the server events it acts on are never
dropped: they are what the guarantee is about, and they are bounded by the calls themselves.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ._events import EventsDropped, RaiseToApp, SessionEvent
from ._protocol import ServerEvent

__all__ = ["EventQueue"]


class EventQueue:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: deque[SessionEvent | RaiseToApp] = deque()
        # One future per waiting consumer, all woken by an event: a consumer cancelled while
        # it waits cancels only its own, and one woken then cancelled leaves the event to
        # the others.
        self._waiters: list[asyncio.Future[None]] = []
        self._dropped = 0
        self._ended = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: SessionEvent | RaiseToApp) -> bool:
        """Queue ``event``; False if it was dropped."""
        if type(event) is ServerEvent and len(self._items) >= self._limit:
            self._dropped += 1
            return False
        if self._dropped:
            self._items.append(EventsDropped(self._dropped))
            self._dropped = 0
        self._items.append(event)
        self._wake()
        return True

    def end(self) -> None:
        """No more events: the iterator stops once the queued ones are taken."""
        self._ended = True
        self._wake()

    async def get(self) -> SessionEvent:
        """The next event; raises what a RaiseToApp carries, StopAsyncIteration at the end."""
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        item = self._items.popleft()
        if isinstance(item, RaiseToApp):
            raise item.error
        return item

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
