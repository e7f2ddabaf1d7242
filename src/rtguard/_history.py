"""The conversation as rtguard can recreate it on a new connection.

A new Realtime connection starts with an empty conversation, and ``conversation.item.create``
accepts ``message``, ``function_call`` and ``function_call_output`` items but no assistant
audio. So rtguard keeps, in the server's order, what it can recreate: user and system text,
user audio as its transcript, assistant text and audio transcripts as text, function calls
with their arguments and outputs. It is fed from the server's ``conversation.item.done``
(the item's final state, GA servers) and kept bounded.

Which part of it a new connection gets is a :data:`ReplayPolicy`; whatever it chooses,
:meth:`History.replay` keeps each function call paired with its output (a server refuses an
output whose call it does not hold, and a call without an output would leave the model
waiting), and leaves out the calls still open: those are carried by the session core itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

__all__ = ["History", "ReplayPolicy", "replay_all", "replay_last"]

Item = dict[str, Any]
ReplayPolicy = Callable[[Sequence[Mapping[str, Any]]], Sequence[Mapping[str, Any]]]
"""Given the recorded items (oldest first, in ``conversation.item.create`` form), the items a
new connection gets, in order. It may drop, reorder or replace items (a summary as a system
message, say)."""

DEFAULT_REPLAY_ITEMS = 64
_TEXT_PARTS = {"input_text": "text", "output_text": "text"}
_TRANSCRIBED_PARTS = {"input_audio": "input_text", "output_audio": "output_text"}
_ROLES = ("user", "assistant", "system")
# The values every item repeats, as rtguard's own strings: kept as parsed, each recorded item
# would hold its own copies.
_KINDS = ("message", "function_call", "function_call_output")
_CANONICAL = {value: value for value in (*_KINDS, *_ROLES, *_TEXT_PARTS, *_TRANSCRIBED_PARTS)}


def replay_all(items: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """Everything recorded (itself bounded by ``ReconnectPolicy.history_items``)."""
    return items


def replay_last(count: int) -> ReplayPolicy:
    """The last ``count`` recorded items."""
    if count < 0:
        raise ValueError("count must not be negative")

    def last(items: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        return items[len(items) - count :] if count else ()

    last.__name__ = f"replay_last({count})"
    return last


class History:
    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: OrderedDict[str, Item] = OrderedDict()
        # (type, call_id) -> item id: a call and its output are recorded once each, although
        # a carried call comes back under a new item id on every connection it visits.
        self._call_items: dict[tuple[str, str], str] = {}
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> list[Item]:
        return list(self._items.values())

    def item_done(self, item: Mapping[str, Any]) -> None:
        """The server's final state of an item; one rtguard cannot recreate is skipped."""
        item_id = item.get("id")
        recreated = _recreatable(item)
        if not isinstance(item_id, str) or recreated is None:
            return
        call = _call_key(recreated)
        if call is not None and self._call_items.setdefault(call, item_id) != item_id:
            return  # recorded already, under the id of the connection it was first on
        recreated["id"] = item_id
        self._store(item_id, recreated)

    def transcribed(self, item_id: str, content_index: object, transcript: object) -> None:
        """A user audio part's transcript arrived (after the item itself)."""
        item = self._items.get(item_id)
        if item is None or not isinstance(transcript, str) or not isinstance(content_index, int):
            return
        content = item.get("content") or []
        if 0 <= content_index < len(content):
            self._bytes -= _size(item)
            content[content_index]["text"] = transcript
            self._bytes += _size(item)
            self._evict()

    def remove(self, item_id: str) -> None:
        """The item was deleted, or truncated (the server then drops its transcript too)."""
        item = self._items.pop(item_id, None)
        if item is not None:
            self._forget(item_id, item)

    def replay(self, policy: ReplayPolicy, open_calls: Collection[str]) -> list[Item]:
        """What a new connection gets: ``policy``'s choice, with every output after its call
        and every call before its output; calls in ``open_calls`` are left out (carried).

        ``policy`` is user code: the caller runs it behind the boundary; this raises
        ``TypeError`` for a choice that is not items.
        """
        kept: list[Item | None] = []
        unanswered: dict[str, int] = {}  # call_id -> where its function_call was kept
        answered: set[str] = set()
        for item in map(_checked, policy(self.items)):
            kind = item["type"]
            call_id: str = item.get("call_id", "")  # checked: set on calls and outputs
            if kind == "function_call":
                if call_id in open_calls or call_id in unanswered or call_id in answered:
                    continue  # carried, or a second one
                unanswered[call_id] = len(kept)
            elif kind == "function_call_output":
                if call_id not in unanswered:
                    continue  # its call is not before it, or it was answered already
                del unanswered[call_id]
                answered.add(call_id)
            elif not item["content"]:
                continue
            kept.append(item)
        for position in unanswered.values():
            kept[position] = None  # a call whose output was not chosen after it
        return [item for item in kept if item is not None]

    def _store(self, item_id: str, item: Item) -> None:
        """Record ``item``; one recorded already keeps its place in the conversation."""
        recorded = self._items.get(item_id)
        self._bytes += _size(item) - (_size(recorded) if recorded is not None else 0)
        self._items[item_id] = item
        self._evict()

    def _evict(self) -> None:
        while self._items and (len(self._items) > self._max_items or self._bytes > self._max_bytes):
            oldest, evicted = self._items.popitem(last=False)
            self._forget(oldest, evicted)

    def _forget(self, item_id: str, item: Item) -> None:
        self._bytes -= _size(item)
        call = _call_key(item)
        if call is not None and self._call_items.get(call) == item_id:
            del self._call_items[call]


def _recreatable(item: Mapping[str, Any]) -> Item | None:
    """``item`` as ``conversation.item.create`` takes it, or None if it cannot be recreated."""
    kind = _canonical(item.get("type"))
    fields: tuple[str, ...]
    if kind == "function_call":
        if item.get("status") == "incomplete":
            return None  # cut off before its arguments were complete: never issued
        fields = ("call_id", "name", "arguments")
    elif kind == "function_call_output":
        fields = ("call_id", "output")
    elif kind == "message" and (role := _canonical(item.get("role"))) in _ROLES:
        content = [part for part in map(_text_part, item.get("content") or ()) if part]
        return {"type": kind, "role": role, "content": content}
    else:
        return None
    if not all(isinstance(item.get(key), str) for key in fields):
        return None
    return {"type": kind, **{key: item[key] for key in fields}}


def _call_key(item: Item) -> tuple[str, str] | None:
    call_id = item.get("call_id")
    return (item["type"], call_id) if isinstance(call_id, str) else None


def _text_part(part: object) -> Item | None:
    """A content part as text: audio becomes its transcript (None until one is known; kept
    so that a later transcript finds its index)."""
    if not isinstance(part, Mapping):
        return None
    kind = _canonical(part.get("type"))
    if kind in _TEXT_PARTS:
        text = part.get("text")
        return {"type": kind, "text": text} if isinstance(text, str) else None
    if kind in _TRANSCRIBED_PARTS:
        transcript = part.get("transcript")
        return {
            "type": _TRANSCRIBED_PARTS[kind],
            "text": transcript if isinstance(transcript, str) else None,
        }
    return None


def _canonical(value: object) -> str | None:
    return _CANONICAL.get(value) if isinstance(value, str) else None


def _checked(item: object) -> Item:
    """A policy's item, copied, with untranscribed parts left out; TypeError if unusable."""
    if not isinstance(item, Mapping) or item.get("type") not in _KINDS:
        raise TypeError(f"a replay policy returned {item!r:.80}, not a conversation item")
    copied = dict(item)
    if copied["type"] == "message":
        parts = copied.get("content") or []
        copied["content"] = [
            dict(p) for p in parts if isinstance(p, Mapping) and p.get("text") is not None
        ]
    elif not isinstance(copied.get("call_id"), str):
        raise TypeError(f"a replay policy returned a {copied['type']} without a call_id")
    return copied


def _size(item: Item) -> int:
    texts = [item.get("arguments"), item.get("output")]
    texts += [part.get("text") for part in item.get("content") or ()]
    return 64 + sum(len(text) for text in texts if isinstance(text, str))
