"""The simulator against a raw WebSocket client: what it sends, in which order, and what it
records, feature by feature.

Every test runs a recording simulator (``conforming``) that, once the test is done, validates
every frame it sent and received against the ``openai`` package's GA models
(``tests/conformance.py``). So each scenario shape below (calls, several per response, text and
audio answers, cancels, errors, item creation, reconnects, every fault) is also a conformance
test, both ways; tests that send invalid client frames on purpose check only the server side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import pathlib
import re
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conformance import (
    assert_conforms,
    validate_client_frame,
    validate_server_frame,
)
from rtguard.simulator import (
    MALFORMED_FRAME,
    CallSpec,
    FaultProxy,
    Faults,
    Scenario,
    Simulator,
)

EXPIRED = "Your session hit the maximum duration of 60 minutes."
TOOL = {"type": "function", "name": "lookup", "description": "Look up.", "parameters": {}}
LONG = json.dumps({"key": "a value long enough to need several deltas"})


class Client:
    """A raw Realtime client that keeps every event the server sent it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._returned: set[int] = set()  # positions in events that until() returned
        self._ids = itertools.count(1)

    async def send(self, event_type: str, **fields: Any) -> str:
        event_id = f"evt_{next(self._ids)}"
        await self.ws.send(json.dumps({"type": event_type, "event_id": event_id, **fields}))
        return event_id

    async def until(
        self,
        event_type: str,
        *,
        after: dict[str, Any] | None = None,
        timeout: float = 5.0,
        **item: Any,
    ) -> dict[str, Any]:
        """The first event of ``event_type`` (whose ``item`` has the fields ``item``, if
        given) that no earlier call returned and, if given, that came ``after`` that event;
        reads more events until it arrives. Events keep their order, whatever a test waits for.
        """

        def wanted(position: int) -> bool:
            event = self.events[position]
            if position in self._returned or event["type"] != event_type:
                return False
            return all(event["item"].get(key) == value for key, value in item.items())

        async with asyncio.timeout(timeout):
            position = 0
            if after is not None:
                position = next(i for i, e in enumerate(self.events) if e is after) + 1
            while True:
                while position < len(self.events):
                    if wanted(position):
                        self._returned.add(position)
                        return self.events[position]
                    position += 1
                self.events.append(json.loads(await self.ws.recv()))

    async def nothing_for(self, seconds: float) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.ws.recv(), seconds)

    def types(self, start: int = 0) -> list[str]:
        return [event["type"] for event in self.events[start:]]

    async def configure(self, **session: Any) -> dict[str, Any]:
        await self.send("session.update", session={"type": "realtime", "tools": [TOOL], **session})
        return await self.until("session.updated")

    async def create(self, item: dict[str, Any], **fields: Any) -> str:
        return await self.send("conversation.item.create", item=item, **fields)

    async def answer(self, call_id: str, output: str = "ok") -> dict[str, Any]:
        """Send an output and return its confirmation (``conversation.item.done``)."""
        await self.create({"type": "function_call_output", "call_id": call_id, "output": output})
        return await self.until(
            "conversation.item.done", type="function_call_output", call_id=call_id
        )

    async def next_call(self) -> dict[str, Any]:
        return await self.until("response.function_call_arguments.done")


@contextlib.asynccontextmanager
async def conforming(
    scenario: Scenario | None = None, *, check_client: bool = True, **options: Any
) -> AsyncIterator[Simulator]:
    """A recording simulator; on exit every frame it sent (and, unless the test sends bad
    client frames on purpose, every frame it received) must conform to the SDK's models."""
    async with Simulator(scenario, record_frames=True, **options) as sim:
        yield sim
    assert sim.frames_sent
    if check_client:
        assert_conforms(sim)
    else:
        for text in sim.frames_sent:
            if text != MALFORMED_FRAME:
                validate_server_frame(text)


@contextlib.asynccontextmanager
async def client(
    url: str, *, configure: bool = True, headers: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    # An unbounded queue: a test may stop reading while the server still streams.
    async with connect(url, additional_headers=headers, max_queue=None) as ws:
        peer = Client(ws)
        await peer.until("session.created")
        if configure:
            await peer.configure()
        yield peer


def calls(count: int, arguments: str = '{"key": "k"}') -> tuple[CallSpec, ...]:
    return tuple(CallSpec("lookup", arguments) for _ in range(count))


def function_call(call_id: str, item_id: str | None = None) -> dict[str, Any]:
    item = {"type": "function_call", "call_id": call_id, "name": "lookup", "arguments": "{}"}
    return item if item_id is None else {**item, "id": item_id}


def output(call_id: str, text: str = "ok") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": text}


def user(text: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": text}]
    return {"type": "message", "role": "user", "content": content}


# --- the session ----------------------------------------------------------------------------


async def test_session_created_carries_a_full_ga_session() -> None:
    async with conforming() as sim, client(sim.url + "?model=gpt-realtime-mini", configure=False):
        pass
    created = json.loads(sim.frames_sent[0])
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["type"] == "realtime"
    assert session["object"] == "realtime.session"
    assert session["id"] == "sess_sim1"
    assert session["model"] == "gpt-realtime-mini"
    assert session["output_modalities"] == ["audio"]
    assert (session["tools"], session["tool_choice"], session["max_output_tokens"]) == (
        [],
        "auto",
        "inf",
    )
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["output"]["voice"] == "alloy"
    assert isinstance(session["expires_at"], int)


async def test_session_update_is_merged_into_the_session_and_echoed() -> None:
    async with conforming() as sim, client(sim.url) as peer:
        updated = await peer.configure(
            instructions="Be brief.",
            output_modalities=["text"],
            audio={"output": {"voice": "marin"}},
        )
    session = updated["session"]
    assert session["id"] == "sess_sim1"
    assert session["instructions"] == "Be brief."
    assert session["tools"] == [TOOL]
    assert session["output_modalities"] == ["text"]
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    _, recorded = sim.session_updates[-1]
    assert recorded["instructions"] == "Be brief."


async def test_a_session_update_with_unknown_or_missing_fields_is_refused_whole() -> None:
    async with conforming(check_client=False) as sim, client(sim.url, configure=False) as peer:
        voice = await peer.send(
            "session.update", session={"type": "realtime", "voice": "marin", "instructions": "x"}
        )
        unknown = await peer.until("error")
        untyped = await peer.send("session.update", session={"instructions": "x"})
        missing = await peer.until("error")
    assert unknown["error"] == {
        "type": "invalid_request_error",
        "code": "unknown_parameter",
        "message": "Unknown parameter: 'session.voice'.",
        "param": "session.voice",
        "event_id": voice,
    }
    assert missing["error"]["code"] == "missing_required_parameter"
    assert missing["error"]["event_id"] == untyped
    assert sim.session_updates == []


# --- the scripted model ---------------------------------------------------------------------


async def test_the_model_waits_for_the_session_update_before_calling() -> None:
    async with conforming(Scenario(calls=calls(1))) as sim:
        async with client(sim.url, configure=False) as peer:
            await peer.nothing_for(0.2)
            assert sim.calls == {}
            await peer.configure()
            await peer.next_call()
        assert peer.types() == [
            "session.created",
            "session.updated",
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
        ]


async def test_function_calls_stream_as_the_real_server_sends_them() -> None:
    scenario = Scenario(calls=(CallSpec("lookup", LONG), CallSpec("other")), calls_per_response=2)
    async with conforming(scenario) as sim, client(sim.url) as peer:
        start = len(peer.events)
        await peer.until("rate_limits.updated")
    one_call = [
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "conversation.item.done",
        "response.output_item.done",
    ]
    long_call = one_call[:2] + one_call[2:3] * 4 + one_call[3:]  # LONG takes four deltas
    assert peer.types(start) == [
        "response.created",
        *long_call,
        *one_call,
        "response.done",
        "rate_limits.updated",
    ]
    events = peer.events[start:]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["status"], e["item"]["arguments"]) for e in added] == [
        (0, "in_progress", ""),
        (1, "in_progress", ""),
    ]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas[:4]) == LONG
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["call_id"], e["name"], e["arguments"]) for e in done] == [
        ("call_sim1_0", "lookup", LONG),
        ("call_sim1_1", "other", "{}"),
    ]
    chained = [e["previous_item_id"] for e in events if e["type"] == "conversation.item.added"]
    assert chained == [None, added[0]["item"]["id"]]
    response = next(e for e in events if e["type"] == "response.done")["response"]
    assert (response["status"], response["status_details"]) == ("completed", None)
    assert [(i["call_id"], i["status"]) for i in response["output"]] == [
        ("call_sim1_0", "completed"),
        ("call_sim1_1", "completed"),
    ]
    assert response["usage"]["total_tokens"] > 0
    assert response["conversation_id"] == "conv_sim1"
    assert list(sim.calls) == ["call_sim1_0", "call_sim1_1"]


async def test_an_answered_call_gets_its_confirmation_and_a_text_reply() -> None:
    scenario = Scenario(calls=calls(1))
    async with conforming(scenario) as sim, client(sim.url, configure=False) as peer:
        await peer.configure(output_modalities=["text"])
        call = await peer.next_call()
        await peer.until("rate_limits.updated")  # the end of the call's response
        confirmed = await peer.answer(call["call_id"], "42")
        await peer.send("response.create")
        start = len(peer.events)
        await peer.until("rate_limits.updated")
    assert confirmed["item"]["type"] == "function_call_output"
    assert confirmed["item"]["output"] == "42"
    assert confirmed["previous_item_id"] == call["item_id"]
    words = 4
    assert peer.types(start) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * words,
        "response.output_text.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    events = peer.events[start:]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert next(e for e in events if e["type"] == "response.output_text.done")["text"] == text
    item = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert item["content"] == [{"type": "output_text", "text": text}]
    sim.assert_invariant()


async def test_the_reply_is_audio_when_the_session_asks_for_audio() -> None:
    async with conforming() as sim, client(sim.url) as peer:
        await peer.send("response.create")
        start = len(peer.events)
        done = await peer.until("response.done")
    types = peer.types(start)
    assert "response.output_text.delta" not in types
    assert types.count("response.output_audio.delta") == 4
    assert types[-5:] == [
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
    ]
    (item,) = done["response"]["output"]
    assert item["content"] == [{"type": "output_audio", "transcript": "All done. Anything else?"}]


async def test_a_spoken_answer_streams_stamped_20ms_chunks_at_real_time_pace() -> None:
    speaking = Scenario(speak_seconds=0.4, stamp_audio=True)
    async with conforming(speaking) as sim, client(sim.url) as peer:
        await peer.send("response.create")
        start = len(peer.events)
        done = await peer.until("response.done")
        await peer.send("response.create")
        await peer.until("response.output_audio.delta", after=done)
        await peer.send("response.cancel")
        cancelled = await peer.until("response.done")
    events = peer.events[start:]
    chunks = [
        base64.b64decode(e["delta"])
        for e in events[: events.index(done)]
        if e["type"] == "response.output_audio.delta"
    ]
    assert len(chunks) == 20
    assert {len(chunk) for chunk in chunks} == {960}  # 20 ms of pcm16 at 24 kHz
    stamps = [struct.unpack_from("<d", chunk)[0] for chunk in chunks]
    for k, stamp in enumerate(stamps):  # never ahead of the real-time schedule
        assert stamp - stamps[0] >= k * 0.02 - 0.002
    spoken = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert 20 < len(spoken) < 40  # the cancel stopped the second answer
    assert sum(sim.audio_late_ms.values()) == len(spoken)  # every chunk's lateness is counted
    words = [e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"]
    (item,) = done["response"]["output"]
    assert item["status"] == "completed"
    assert item["content"] == [{"type": "output_audio", "transcript": "".join(words[:2])}]
    (cut,) = cancelled["response"]["output"]
    assert cut["status"] == "incomplete"
    assert cancelled["response"]["status"] == "cancelled"


async def test_response_create_while_a_response_is_active_is_refused() -> None:
    async with conforming(Scenario(stream_delay=0.02)) as sim, client(sim.url) as peer:
        await peer.send("response.create")
        created = await peer.until("response.created")
        second = await peer.send("response.create")
        error = await peer.until("error")
        await peer.until("response.done")
    rid = created["response"]["id"]
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "conversation_already_has_active_response",
        "message": f"Conversation already has an active response in progress: {rid}. "
        "Wait until the response is finished before creating a new one.",
        "param": None,
        "event_id": second,
    }
    assert (sim.response_creates, sim.refused_response_creates) == (1, 1)


# --- response.cancel ------------------------------------------------------------------------


async def test_cancel_stops_the_response_and_keeps_only_the_calls_already_issued() -> None:
    scenario = Scenario(
        calls=(CallSpec("lookup", LONG),) * 2, calls_per_response=2, stream_delay=0.05
    )
    async with conforming(scenario) as sim, client(sim.url) as peer:
        first = await peer.next_call()
        await peer.send("response.cancel")
        mark = len(peer.events)
        done = await peer.until("response.done")
        after_cancel = peer.types(mark)
        assert list(sim.calls) == [first["call_id"]]
        again = await peer.next_call()  # the script goes on with the call that was cut off
    response = done["response"]
    assert response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert [(i["call_id"], i["status"]) for i in response["output"]] == [
        ("call_sim1_0", "completed"),
        ("call_sim1_1", "incomplete"),
    ]
    assert "response.function_call_arguments.done" not in after_cancel
    assert again["call_id"] == "call_sim1_1"
    assert list(sim.calls) == ["call_sim1_0", "call_sim1_1"]


async def test_cancel_cuts_a_text_reply_short() -> None:
    async with conforming(Scenario(stream_delay=0.05)) as sim, client(sim.url) as peer:
        await peer.configure(output_modalities=["text"])
        await peer.send("response.create")
        first = await peer.until("response.output_text.delta")
        await peer.send("response.cancel")
        done = await peer.until("response.done")
    (item,) = done["response"]["output"]
    assert item["status"] == "incomplete"
    assert item["content"] == [{"type": "output_text", "text": first["delta"]}]
    assert done["response"]["status"] == "cancelled"


async def test_cancel_without_an_active_response_is_the_real_error() -> None:
    async with conforming() as sim, client(sim.url) as peer:
        cancel = await peer.send("response.cancel")
        error = await peer.until("error")
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found",
        "param": None,
        "event_id": cancel,
    }


# --- the conversation -----------------------------------------------------------------------


async def test_items_of_every_type_go_where_previous_item_id_says() -> None:
    system = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "s"}]}
    assistant = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "a"}],
    }
    async with conforming() as sim, client(sim.url) as peer:
        await peer.create(user("hello"))
        first = await peer.until("conversation.item.done")
        await peer.create(function_call("call_x", "fc_1"))
        call = await peer.until("conversation.item.done")
        await peer.create(output("call_x"))
        answered = await peer.until("conversation.item.done")
        await peer.create(system, previous_item_id="root")
        at_root = await peer.until("conversation.item.done")
        await peer.create(assistant, previous_item_id=first["item"]["id"])
        inserted = await peer.until("conversation.item.done")
        unknown = await peer.create(user("x"), previous_item_id="item_nope")
        error = await peer.until("error")
    assert first["previous_item_id"] is None
    assert call["item"]["id"] == "fc_1"
    assert call["previous_item_id"] == first["item"]["id"]
    assert answered["previous_item_id"] == "fc_1"
    assert at_root["previous_item_id"] is None
    assert inserted["previous_item_id"] == first["item"]["id"]
    added = [e for e in peer.events if e["type"] == "conversation.item.added"]
    assert len(added) == 5
    ids = [at_root["item"]["id"], first["item"]["id"], inserted["item"]["id"], "fc_1"]
    assert sim.conversations[1].item_ids == [*ids, answered["item"]["id"]]
    assert sim.client_items[1] == [
        user("hello"),
        function_call("call_x", "fc_1"),
        output("call_x"),
        system,
        assistant,
    ]
    assert sim.user_messages == ["hello"]
    assert error["error"]["code"] == "item_create_invalid_previous_item_id"
    assert error["error"]["message"] == (
        "Error adding item: the previous item with id 'item_nope' does not exist."
    )
    assert error["error"]["event_id"] == unknown


async def test_an_output_without_its_function_call_in_the_conversation_is_refused() -> None:
    async with conforming() as sim, client(sim.url) as peer:
        sent = await peer.create(output("call_elsewhere"))
        error = await peer.until("error")
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_tool_call_id",
        "message": "Tool call ID 'call_elsewhere' not found in conversation.",
        "param": None,
        "event_id": sent,
    }
    assert sim.client_items[1] == []


async def test_items_can_be_retrieved_truncated_and_deleted_only_if_they_exist() -> None:
    async with conforming() as sim, client(sim.url) as peer:
        await peer.create(user("hi"))
        item_id = (await peer.until("conversation.item.done"))["item"]["id"]
        await peer.send("conversation.item.retrieve", item_id=item_id)
        retrieved = await peer.until("conversation.item.retrieved")
        await peer.send(
            "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=5
        )
        truncated = await peer.until("conversation.item.truncated")
        await peer.send("conversation.item.delete", item_id=item_id)
        deleted = await peer.until("conversation.item.deleted")
        errors = []
        for event_type in ("retrieve", "delete"):
            await peer.send(f"conversation.item.{event_type}", item_id=item_id)
            errors.append((await peer.until("error"))["error"])
    assert retrieved["item"]["id"] == item_id
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, 5)
    assert deleted["item_id"] == item_id
    assert sim.conversations[1].item_ids == []
    assert [e["code"] for e in errors] == [
        "item_retrieve_invalid_item_id",
        "item_delete_invalid_item_id",
    ]
    assert (
        errors[1]["message"] == f"Error deleting item: the item with id '{item_id}' does not exist."
    )


async def test_committed_audio_becomes_a_user_item_and_too_little_is_refused() -> None:
    tenth_of_a_second = "AAAA" * 1600  # 4,800 bytes of pcm16 at 24 kHz
    async with conforming() as sim, client(sim.url) as peer:
        await peer.send("input_audio_buffer.append", audio="AAAA")
        await peer.send("input_audio_buffer.commit")
        refused = await peer.until("error")
        await peer.send("input_audio_buffer.append", audio=tenth_of_a_second)
        await peer.send("input_audio_buffer.commit")
        committed = await peer.until("input_audio_buffer.committed")
        item = await peer.until("conversation.item.done")
        await peer.send("input_audio_buffer.clear")
        await peer.until("input_audio_buffer.cleared")
    assert refused["error"]["code"] == "input_audio_buffer_commit_empty"
    assert "only has 0.06ms of audio" in refused["error"]["message"]
    assert committed["previous_item_id"] is None
    assert item["item"]["id"] == committed["item_id"]
    assert item["item"]["content"] == [{"type": "input_audio", "transcript": None}]


async def test_what_the_real_server_does_not_accept_gets_its_error() -> None:
    async with conforming(check_client=False) as sim, client(sim.url) as peer:
        unknown = await peer.send("output_audio_buffer.clear")  # WebRTC and SIP only
        errors = [(await peer.until("error"))["error"]]
        await peer.ws.send("not json")
        errors.append((await peer.until("error"))["error"])
        await peer.ws.send(b"\x00\x01")
        errors.append((await peer.until("error"))["error"])
        await peer.create({"type": "mcp_call"})
        errors.append((await peer.until("error"))["error"])
    assert [(e["code"], e["param"]) for e in errors] == [
        ("invalid_value", "type"),
        ("invalid_json", None),
        ("invalid_event", None),
        ("invalid_value", "item.type"),
    ]
    assert errors[0]["event_id"] == unknown
    assert errors[0]["message"].startswith(
        "Invalid value: 'output_audio_buffer.clear'. Supported values are: 'session.update', "
    )
    assert errors[0]["message"].endswith(", and 'response.cancel'.")


# --- reconnects -----------------------------------------------------------------------------


async def test_a_new_connection_continues_the_script_and_the_call_follows_its_item() -> None:
    # One call in flight at a time, so the model issues the last call once call 1 is answered.
    scenario = Scenario(
        calls=calls(3), max_in_flight=1, faults=Faults(drop_connection_after=frozenset({0}))
    )
    async with conforming(scenario) as sim:
        async with client(sim.url) as first:
            lost = await first.next_call()
            with pytest.raises(ConnectionClosed):
                await first.until("never")
        async with client(sim.url) as second:
            carried_on = await second.next_call()
            refused = await second.create(output(lost["call_id"]))
            assert (await second.until("error"))["error"]["event_id"] == refused
            await second.create(function_call(lost["call_id"]))
            await second.until("conversation.item.done", call_id=lost["call_id"])
            await second.answer(lost["call_id"])
            await second.answer(carried_on["call_id"])
            last = await second.next_call()
            await second.until("rate_limits.updated", after=last)  # its response is over
            answered = await second.answer(last["call_id"])
            await second.send("response.create")
            await second.until("response.done", after=answered)
    assert [lost["call_id"], carried_on["call_id"], last["call_id"]] == [
        "call_sim1_0",
        "call_sim2_1",
        "call_sim2_2",
    ]
    record = sim.calls["call_sim1_0"]
    assert record.connections == [1, 2]
    assert record.function_call_recreated == 1
    assert record.outputs_by_connection == {2: ["ok"]}
    assert record.refused_outputs == 1
    assert sim.client_items[2][:2] == [function_call("call_sim1_0"), output("call_sim1_0")]
    sim.assert_invariant()


async def test_an_output_counts_in_the_conversation_that_continues() -> None:
    scenario = Scenario(calls=calls(1), faults=Faults(drop_after_output=frozenset({0})))
    async with conforming(scenario) as sim:
        async with client(sim.url) as first:
            call_id = (await first.next_call())["call_id"]
            await first.create(output(call_id, "first"))
            with pytest.raises(ConnectionClosed):
                await first.until("conversation.item.added", type="function_call_output")
        record = sim.calls[call_id]
        assert record.outputs == ["first"]
        assert sim.violations() == [f"{call_id} (lookup): no response.create after its output"]
        async with client(sim.url) as second:
            await second.create(function_call(call_id))
            await second.until("conversation.item.done", type="function_call")
            await second.answer(call_id, "again")
            await second.send("response.create")
            await second.until("response.done")
    assert record.outputs_by_connection == {1: ["first"], 2: ["again"]}
    assert record.outputs == ["again"]
    assert sim.asked_to_answer(record)
    sim.assert_invariant()


# --- faults ---------------------------------------------------------------------------------


async def test_a_refused_session_update_changes_nothing_and_holds_the_calls() -> None:
    scenario = Scenario(calls=calls(1), faults=Faults(reject_session_update=frozenset({0})))
    async with conforming(scenario) as sim, client(sim.url, configure=False) as peer:
        refused = await peer.send("session.update", session={"type": "realtime", "tools": [TOOL]})
        error = await peer.until("error")
        await peer.nothing_for(0.1)
        await peer.configure()
        await peer.next_call()
    assert error["error"]["event_id"] == refused
    assert len(sim.session_updates) == 1


@pytest.mark.parametrize("reject_type", ["invalid_request_error", "server_error"])
async def test_a_refused_output_names_its_kind_and_the_next_one_is_accepted(
    reject_type: str,
) -> None:
    faults = Faults(reject_output=frozenset({0}), reject_type=reject_type, reject_code="nope")
    async with conforming(Scenario(calls=calls(1), faults=faults)) as sim, client(sim.url) as peer:
        call_id = (await peer.next_call())["call_id"]
        sent = await peer.create(output(call_id))
        error = await peer.until("error")
        await peer.answer(call_id)
    assert (error["error"]["type"], error["error"]["code"]) == (reject_type, "nope")
    assert error["error"]["event_id"] == sent
    assert sim.calls[call_id].refused_outputs == 1
    assert sim.calls[call_id].outputs == ["ok"]


async def test_a_drop_during_a_response_leaves_the_call_unissued() -> None:
    scenario = Scenario(
        calls=calls(2), calls_per_response=2, faults=Faults(drop_during_response=frozenset({1}))
    )
    async with conforming(scenario) as sim:
        async with client(sim.url) as first:
            await first.next_call()
            with pytest.raises(ConnectionClosed):
                await first.until("never")
        assert first.types()[-2:] == ["response.output_item.added", "conversation.item.added"]
        assert list(sim.calls) == ["call_sim1_0"]
        async with client(sim.url) as second:
            assert (await second.next_call())["call_id"] == "call_sim2_1"


async def test_drop_connection_after_fires_once() -> None:
    scenario = Scenario(calls=calls(2), faults=Faults(drop_connection_after=frozenset({0})))
    async with conforming(scenario) as sim:
        async with client(sim.url) as first:
            await first.next_call()
            with pytest.raises(ConnectionClosed):
                await first.until("never")
        async with client(sim.url) as second:
            await second.until("rate_limits.updated")
            await second.nothing_for(0.1)  # no drop this time
    assert list(sim.calls) == ["call_sim1_0", "call_sim2_1"]


async def test_end_script_issues_no_more_calls() -> None:
    async with conforming(Scenario(calls=calls(5), rate=20)) as sim, client(sim.url) as peer:
        call = await peer.next_call()
        sim.end_script()
        await peer.answer(call["call_id"])
        issued = len(sim.calls)
        await asyncio.sleep(0.3)  # six intervals of the rate
        assert len(sim.calls) == issued < 5
        assert sim.next_call == 5


async def test_end_after_closes_normally_and_the_next_connection_carries_on() -> None:
    scenario = Scenario(calls=calls(2), faults=Faults(end_after=0))
    async with conforming(scenario) as sim:
        async with client(sim.url) as first:
            await first.until("response.done")
            await first.ws.wait_closed()
        assert first.ws.close_code == 1000
        async with client(sim.url) as second:
            assert (await second.next_call())["call_id"] == "call_sim2_1"


@pytest.mark.parametrize("expiry_error", [False, True])
async def test_a_session_at_its_maximum_duration_is_closed_with_1001(expiry_error: bool) -> None:
    faults = Faults(max_session_seconds=0.2, expiry_error=expiry_error)
    async with conforming(Scenario(faults=faults)) as sim, client(sim.url) as peer:
        with pytest.raises(ConnectionClosed):
            await peer.until("never")
    assert (peer.ws.close_code, peer.ws.close_reason) == (1001, EXPIRED)
    errors = [e["error"] for e in peer.events if e["type"] == "error"]
    expected = [("invalid_request_error", "session_expired", EXPIRED)] if expiry_error else []
    assert [(e["type"], e["code"], e["message"]) for e in errors] == expected


async def test_an_expiry_completes_while_the_client_keeps_sending() -> None:
    """The server's close must read on: frames it left unread past websockets' queue limit
    stopped it reading, so it never saw the client's answer and waited 10 s."""
    faults = Faults(max_session_seconds=0.2)
    async with (
        conforming(Scenario(faults=faults), check_client=False) as sim,
        client(sim.url) as peer,
    ):
        started = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            for _ in range(20_000):  # bursts, each frame answered with an error
                await peer.send("no.such.event")
            await peer.ws.wait_closed()
        assert time.monotonic() - started < 3.0
        assert peer.ws.close_code == 1001


async def test_the_api_key_is_checked_as_the_real_server_checks_it() -> None:
    async with conforming(api_key="sk-right") as sim:
        refusals = []
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
            async with connect(sim.url, additional_headers=headers) as ws:
                event = json.loads(await ws.recv())
                await ws.wait_closed()
            refusals.append((event["error"]["code"], ws.close_code, ws.close_reason))
        async with client(sim.url, headers={"Authorization": "Bearer sk-right"}):
            pass
    assert refusals == [
        (None, 3000, "invalid_request_error"),
        ("invalid_api_key", 3000, "invalid_request_error.invalid_api_key"),
    ]
    assert sim.connections == 3
    assert list(sim.conversations) == [3]


async def test_malformed_duplicate_and_late_acknowledgement_faults() -> None:
    faults = Faults(malformed_before=frozenset({0}), duplicate=frozenset({0}), ack_delay=0.2)
    async with (
        conforming(Scenario(calls=calls(1), faults=faults)) as sim,
        connect(sim.url, max_queue=None) as ws,
    ):
        peer = Client(ws)
        await peer.until("session.created")
        await peer.send("session.update", session={"type": "realtime"})
        assert json.loads(await ws.recv())["type"] == "session.updated"
        assert await ws.recv() == MALFORMED_FRAME
        first = await peer.next_call()
        again = await peer.next_call()
        sent_at = asyncio.get_running_loop().time()
        await peer.answer(first["call_id"])
        waited = asyncio.get_running_loop().time() - sent_at
    assert again["call_id"] == first["call_id"]
    assert again["item_id"] != first["item_id"]
    assert waited >= 0.2
    assert sim.calls[first["call_id"]].outputs == ["ok"]


def test_faults_load_from_a_scenario_file(tmp_path: pathlib.Path) -> None:
    text = """
stream_delay: 0.01
calls: [{name: lookup}]
faults:
  reject_output: [1]
  reject_type: server_error
  reject_session_update: [0, 2]
  drop_after_output: [3]
  drop_during_response: [4]
  end_after: 5
  max_session_seconds: 1.5
  expiry_error: true
"""
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    scenario = Scenario.load(path)
    assert scenario.stream_delay == 0.01
    assert scenario.faults == Faults(
        reject_output=frozenset({1}),
        reject_type="server_error",
        reject_session_update=frozenset({0, 2}),
        drop_after_output=frozenset({3}),
        drop_during_response=frozenset({4}),
        end_after=5,
        max_session_seconds=1.5,
        expiry_error=True,
    )
    with pytest.raises(ValueError, match="reject_type"):
        Faults(reject_type="rate_limit_error")


# --- the fault proxy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "code", "reason"),
    [
        (Faults(max_session_seconds=0.2), 1001, EXPIRED),
        (Faults(expire_after=frozenset({0})), 1001, EXPIRED),
        (Faults(end_after=0), 1000, ""),
        # cut, so cut on the client's side too
        (Faults(drop_connection_after=frozenset({0})), 1006, ""),
    ],
)
async def test_the_proxy_ends_the_client_side_as_the_server_side_ended(
    faults: Faults, code: int, reason: str
) -> None:
    scenario = Scenario(calls=calls(1), faults=faults)
    async with conforming(scenario) as sim, FaultProxy(sim.url) as proxy:
        async with client(proxy.url) as peer:
            assert len(proxy._pairs) == 1
            with pytest.raises(ConnectionClosed):
                await peer.until("never")
        assert (peer.ws.close_code, peer.ws.close_reason) == (code, reason)
        async with asyncio.timeout(5):  # the relay is forgotten once it ended
            while proxy._pairs:
                await asyncio.sleep(0.01)


# --- the conformance checks themselves ------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (
            {"type": "response.function_call_arguments.done", "event_id": "e", "response_id": "r"}
            | {"item_id": "i", "output_index": 0, "call_id": "c", "arguments": "{}"},
            "name",
        ),
        (
            {"type": "output_audio_buffer.cleared", "event_id": "e"},
            "response_id",
        ),
        (
            {"type": "error", "event_id": "e", "error": {"type": "t", "message": "m", "oops": 1}},
            "error.oops",
        ),
        (
            {"type": "response.done", "event_id": "e", "response": {"status": "cancelled"}}
            | {"extra": True},
            "extra",
        ),
        ({"type": "session.created", "event_id": "e", "session": {"type": "realtime"}}, "id"),
    ],
)
def test_server_frames_that_differ_from_the_sdk_fail(frame: dict[str, Any], reason: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(reason)):
        validate_server_frame(json.dumps(frame))


def test_client_frames_that_differ_from_the_sdk_fail() -> None:
    beta = {"type": "session.update", "session": {"type": "realtime", "voice": "marin"}}
    with pytest.raises(AssertionError, match=re.escape("session.voice")):
        validate_client_frame(json.dumps(beta))
    with pytest.raises(AssertionError, match=re.escape("'response.create' does not conform")):
        validate_client_frame(json.dumps({"type": "response.create", "response": []}))
    with pytest.raises(AssertionError, match="not a JSON object"):
        validate_client_frame("not json")


async def test_an_output_before_the_client_hangs_up_needs_no_answer() -> None:
    # The app closed the session after the output: nobody waits for the model's answer, and
    # none may be asked for after the session closed. (A connection the server cut is no
    # hang-up: test_an_output_counts_in_the_conversation_that_continues.)
    async with conforming(Scenario(calls=calls(1))) as sim, client(sim.url) as peer:
        call_id = (await peer.next_call())["call_id"]
        await peer.answer(call_id)
    assert sim.hung_up == {1}
    assert sim.asked_to_answer(sim.calls[call_id])
    sim.assert_invariant()
