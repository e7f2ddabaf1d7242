"""Every deadline of a session in one set: the sans-I/O core arms and disarms them by key,
and the asyncio layer only ever asks for the earliest one (aioquic's ``get_timer``)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable

__all__ = ["Deadlines"]


class Deadlines:
    """Keyed deadlines; setting a key again moves its deadline, so each key has at most one.

    A heap with lazy deletion: a replaced or cleared deadline stays in the heap until it
    surfaces or the heap is compacted, so the heap never holds more than about twice the
    live deadlines.
    """

    def __init__(self) -> None:
        self._when: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._when)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._when

    def set(self, key: Hashable, when: float) -> None:
        if self._when.get(key) == when:
            return
        self._when[key] = when
        heapq.heappush(self._heap, (when, next(self._order), key))
        if len(self._heap) > 2 * len(self._when) + 64:
            self._heap = [(w, n, k) for w, n, k in self._heap if self._when.get(k) == w]
            heapq.heapify(self._heap)

    def clear(self, key: Hashable) -> None:
        self._when.pop(key, None)

    def earliest(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, key = heap[0]
            if self._when.get(key) == when:
                return when
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[Hashable]:
        """The keys whose deadline has passed, earliest first; they are cleared."""
        due = []
        while (when := self.earliest()) is not None and when <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._when[key]
            due.append(key)
        return due
