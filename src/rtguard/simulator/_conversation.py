"""One connection's conversation: its items in order, as the server holds them.

A new connection starts with an empty one, as on the real server; a call carried to a new
connection needs its ``function_call`` item recreated there before its output is accepted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["Conversation"]

ROOT = "root"


class Conversation:
    """The items of one connection's conversation, in the server's order (the simulator's
    ``conversations``, by connection number): what a test reads to see what the server
    holds after a replay or a carried call."""

    def __init__(self, conversation_id: str) -> None:
        self.id = conversation_id
        """The conversation's id (the simulator's are ``conv_sim<connection number>``)."""
        # Ordered by position; dicts keep the lookups constant-time for long soak sessions.
        self._items: dict[str, dict[str, Any]] = {}
        self._calls: Counter[str] = Counter()  # call_id -> function_call items holding it

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> list[dict[str, Any]]:
        """The items, in order, as the server holds them."""
        return list(self._items.values())

    @property
    def item_ids(self) -> list[str]:
        """The items' ids, in order."""
        return list(self._items)

    def get(self, item_id: str) -> dict[str, Any] | None:
        """The item with this id, or None."""
        return self._items.get(item_id)

    def has_call(self, call_id: str) -> bool:
        """Whether a ``function_call`` item with this ``call_id`` is in the conversation."""
        return self._calls[call_id] > 0

    def knows(self, previous_item_id: object) -> bool:
        """Whether an item can go after ``previous_item_id`` (``"root"``: first; None: last)."""
        return previous_item_id in (None, ROOT) or (
            isinstance(previous_item_id, str) and previous_item_id in self._items
        )

    def insert(self, item: dict[str, Any], previous_item_id: str | None = None) -> str | None:
        """Add ``item`` after ``previous_item_id``, which ``knows``, and return the id of
        the item now before it (None at the start)."""
        if previous_item_id is None:
            before = next(reversed(self._items), None)
            self._items[item["id"]] = item
        else:
            before = None if previous_item_id == ROOT else previous_item_id
            ordered = list(self._items.items())
            position = 0 if before is None else list(self._items).index(before) + 1
            ordered.insert(position, (item["id"], item))
            self._items = dict(ordered)
        if item["type"] == "function_call":
            self._calls[item["call_id"]] += 1
        return before

    def replace(self, item: dict[str, Any]) -> None:
        """Put the final state of an item (same id) in place of its earlier one."""
        self._items[item["id"]] = item

    def remove(self, item_id: str) -> bool:
        """Delete an item; False if there was none with this id."""
        item = self._items.pop(item_id, None)
        if item is not None and item["type"] == "function_call":
            self._calls[item["call_id"]] -= 1
        return item is not None
