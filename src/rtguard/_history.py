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

import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
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


@dataclass(slots=True, frozen=True)
class _Record:
    """One item as rtguard can recreate it, compact (a voice session keeps dozens of them; a
    dict per item and per content part costs about three times as much). ``parts`` are a
    message's (type, text) pairs, text None until an audio part's transcript is known."""

    kind: str
    role: str | None = None
    call_id: str | None = None
    name: str | None = None
    text: str | None = None  # a call's arguments or an output
    parts: tuple[tuple[str, str | None], ...] = ()

    @property
    def size(self) -> int:
        texts = [self.text, *(text for _, text in self.parts)]
        return 64 + sum(len(text) for text in texts if text is not None)

    def item(self, item_id: str) -> Item:
        """The ``conversation.item.create`` form."""
        if self.kind == "message":
            content = [{"type": kind, "text": text} for kind, text in self.parts]
            return {"id": item_id, "type": self.kind, "role": self.role, "content": content}
        if self.kind == "function_call":
            fields = {"call_id": self.call_id, "name": self.name, "arguments": self.text}
            return {"id": item_id, "type": self.kind, **fields}
        return {"id": item_id, "type": self.kind, "call_id": self.call_id, "output": self.text}


class History:
    def __init__(self, max_items: int, max_bytes: int) -> None:
        # item id -> its record, oldest first (a dict keeps insertion order; an OrderedDict
        # would cost a linked-list node per item)
        self._records: dict[str, _Record] = {}
        # type -> call_id -> item id: a call and its output are recorded once each, although
        # a carried call comes back under a new item id on every connection it visits.
        self._call_items: dict[str, dict[str, str]] = {
            "function_call": {},
            "function_call_output": {},
        }
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._records)

    @property
    def items(self) -> list[Item]:
        return [record.item(item_id) for item_id, record in self._records.items()]

    def item_done(self, item: Mapping[str, Any]) -> None:
        """The server's final state of an item; one rtguard cannot recreate is skipped."""
        item_id = item.get("id")
        record = _recreatable(item)
        if not isinstance(item_id, str) or record is None:
            return
        if record.call_id is not None:
            items = self._call_items[record.kind]
            if items.setdefault(record.call_id, item_id) != item_id:
                return  # recorded already, under the id of the connection it was first on
        self._store(item_id, record)

    def transcribed(self, item_id: str, content_index: object, transcript: object) -> None:
        """A user audio part's transcript arrived (after the item itself)."""
        record = self._records.get(item_id)
        if record is None or not isinstance(transcript, str) or not isinstance(content_index, int):
            return
        parts = record.parts
        if 0 <= content_index < len(parts):
            kind, _ = parts[content_index]
            parts = (*parts[:content_index], (kind, transcript), *parts[content_index + 1 :])
            self._store(item_id, replace(record, parts=parts))

    def remove(self, item_id: str) -> None:
        """The item was deleted, or truncated (the server then drops its transcript too)."""
        record = self._records.pop(item_id, None)
        if record is not None:
            self._forget(item_id, record)

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

    def _store(self, item_id: str, record: _Record) -> None:
        """Record ``record``; an item recorded already keeps its place in the conversation."""
        recorded = self._records.get(item_id)
        self._bytes += record.size - (recorded.size if recorded is not None else 0)
        self._records[item_id] = record
        self._evict()

    def _evict(self) -> None:
        while self._records and (
            len(self._records) > self._max_items or self._bytes > self._max_bytes
        ):
            oldest = next(iter(self._records))
            self._forget(oldest, self._records.pop(oldest))

    def _forget(self, item_id: str, record: _Record) -> None:
        self._bytes -= record.size
        if record.call_id is not None:
            items = self._call_items[record.kind]
            if items.get(record.call_id) == item_id:
                del items[record.call_id]


def _recreatable(item: Mapping[str, Any]) -> _Record | None:
    """The record of ``item`` that ``conversation.item.create`` can recreate, or None."""
    kind = _canonical(item.get("type"))
    if kind == "message" and (role := _canonical(item.get("role"))) in _ROLES:
        parts = tuple(part for part in map(_text_part, item.get("content") or ()) if part)
        return _Record(kind, role=role, parts=parts)
    call_id = item.get("call_id")
    if not isinstance(call_id, str):
        return None
    call_id = sys.intern(call_id)  # the ledger's copy, and one for a call and its output
    if kind == "function_call":
        if item.get("status") == "incomplete":
            return None  # cut off before its arguments were complete: never issued
        name, arguments = item.get("name"), item.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, str):
            return None
        return _Record(kind, call_id=call_id, name=sys.intern(name), text=arguments)
    output = item.get("output")
    if kind == "function_call_output" and isinstance(output, str):
        return _Record(kind, call_id=call_id, text=output)
    return None


def _text_part(part: object) -> tuple[str, str | None] | None:
    """A content part as text: audio becomes its transcript (None until one is known; kept
    so that a later transcript finds its index)."""
    if not isinstance(part, Mapping):
        return None
    kind = _canonical(part.get("type"))
    if kind in _TEXT_PARTS:
        text = part.get("text")
        return (kind, text) if isinstance(text, str) else None
    if kind in _TRANSCRIBED_PARTS:
        transcript = part.get("transcript")
        return (_TRANSCRIBED_PARTS[kind], transcript if isinstance(transcript, str) else None)
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
