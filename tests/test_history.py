"""The conversation record a new connection is given: what is kept, in which order, and how
a replay keeps every call paired with its output (sans-I/O, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from rtguard import replay_all, replay_last
from rtguard._history import History


def call(item_id: str, call_id: str) -> dict[str, Any]:
    fields = {"call_id": call_id, "name": "f", "arguments": "{}"}
    return {"id": item_id, "type": "function_call", "status": "completed", **fields}


def output(item_id: str, call_id: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call_output", "call_id": call_id, "output": "ok"}


def said(item_id: str, text: str, role: str = "user") -> dict[str, Any]:
    kind = "input_text" if role == "user" else "output_text"
    return {
        "id": item_id,
        "type": "message",
        "role": role,
        "content": [{"type": kind, "text": text}],
    }


def user_audio(item_id: str) -> dict[str, Any]:
    """A user's spoken item, before its transcript arrives."""
    part = {"type": "input_audio", "transcript": None}
    return {"id": item_id, "type": "message", "role": "user", "content": [part]}


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def test_an_item_confirmed_again_keeps_its_place() -> None:
    """Found by the continuity soak: the echo of a replayed call moved it after its output,
    and the next replay sent the call without one."""
    history = History(100, 100_000)
    for item in (call("f1", "c1"), output("o1", "c1"), said("m1", "hi")):
        history.item_done(item)
    history.item_done(call("f1", "c1"))  # the new connection confirms the replayed item
    assert ids(history.items) == ["f1", "o1", "m1"]
    assert ids(history.replay(replay_all, open_calls=())) == ["f1", "o1", "m1"]


def test_a_carried_call_is_recorded_once_under_its_first_id() -> None:
    history = History(100, 100_000)
    history.item_done(call("f1", "c1"))
    history.item_done(call("f1-again", "c1"))  # recreated on the next connection, new id
    history.item_done(output("o1", "c1"))
    history.item_done(output("o1-again", "c1"))
    assert ids(history.items) == ["f1", "o1"]


@pytest.mark.parametrize(
    ("chosen", "kept"),
    [
        (["f1", "o1"], ["f1", "o1"]),
        (["o1"], []),  # an output whose call was not chosen
        (["f1"], []),  # a call whose output was not chosen
        (["o1", "f1"], []),  # an output before its call
        (["f1", "o1", "o1"], ["f1", "o1"]),  # a second output
        (["f1", "f1", "o1"], ["f1", "o1"]),  # a second call
    ],
)
def test_a_replay_keeps_each_call_with_one_output_after_it(
    chosen: list[str], kept: list[str]
) -> None:
    items = {"f1": call("f1", "c1"), "o1": output("o1", "c1")}
    history = History(100, 100_000)
    assert ids(history.replay(lambda _: [items[i] for i in chosen], open_calls=())) == kept


def test_open_calls_are_left_to_be_carried() -> None:
    history = History(100, 100_000)
    history.item_done(call("f1", "c1"))
    assert history.replay(replay_all, open_calls={"c1"}) == []


def test_the_record_is_bounded_in_items_and_bytes() -> None:
    history = History(3, 100_000)
    for n in range(10):
        history.item_done(said(f"m{n}", "x"))
    assert ids(history.items) == ["m7", "m8", "m9"]
    history = History(100, 300)
    for n in range(10):
        history.item_done(said(f"m{n}", "x" * 100))
    assert len(history) == 1  # each is 164 bytes: one fits
    assert ids(history.replay(replay_last(5), open_calls=())) == ["m9"]


def test_user_audio_is_replayed_as_its_transcript_once_it_is_known() -> None:
    history = History(100, 100_000)
    history.item_done(user_audio("u1"))
    history.item_done(said("a1", "hello", role="assistant"))
    assert ids(history.replay(replay_all, open_calls=())) == ["a1"]  # nothing to say yet
    history.transcribed("u1", 0, "what time is it?")
    assert ids(history.items) == ["u1", "a1"]
    (first, _) = history.replay(replay_all, open_calls=())
    assert first["content"] == [{"type": "input_text", "text": "what time is it?"}]


def test_deleted_and_truncated_items_are_not_replayed() -> None:
    history = History(100, 100_000)
    history.item_done(said("m1", "a"))
    history.item_done(said("m2", "b", role="assistant"))
    history.remove("m2")
    assert ids(history.items) == ["m1"]


def test_a_transcript_counts_towards_the_byte_bound() -> None:
    history = History(100, 400)
    history.item_done(user_audio("u1"))
    history.item_done(said("a1", "x" * 100, role="assistant"))
    history.transcribed("u1", 0, "y" * 100)
    assert ids(history.items) == ["u1", "a1"]  # 164 + 164 bytes
    history.transcribed("u1", 0, "y" * 200)  # 264 + 164: over 400, the oldest goes
    assert ids(history.items) == ["a1"]


@pytest.mark.parametrize(
    "item",
    [
        {"id": "i", "type": ["message"]},
        {"id": "i", "type": "message", "role": {"user": 1}, "content": []},
        {"id": "i", "type": "message", "role": "user", "content": [{"type": ["input_text"]}]},
        {"id": "i", "type": "function_call", "call_id": ["c"], "name": "f", "arguments": "{}"},
    ],
)
def test_an_item_of_the_wrong_shape_is_skipped(item: dict[str, Any]) -> None:
    history = History(100, 100_000)
    history.item_done(item)
    history.item_done(said("m1", "a"))
    assert ids(history.items) in (["m1"], ["i", "m1"])
    assert all(isinstance(i["type"], str) for i in history.items)
