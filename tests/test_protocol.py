"""The wire format without sockets: every frame parses to a typed event or a ProtocolError."""

from __future__ import annotations

import json

import pytest

from rtguard import ProtocolError
from rtguard._protocol import (
    FunctionCall,
    FunctionCallReady,
    ItemConfirmed,
    ResponseCreated,
    ResponseDone,
    ServerError,
    ServerEvent,
    SessionInfo,
    build_function_call_output,
    build_response_create,
    build_session_update,
    encode,
    event_ids,
    parse_server_event,
)


def frame(**data: object) -> str:
    return json.dumps(data)


def test_arguments_done_is_a_ready_call() -> None:
    event = parse_server_event(
        frame(
            type="response.function_call_arguments.done",
            response_id="r1",
            call_id="c1",
            name="f",
            arguments='{"a":1}',
        )
    )
    assert isinstance(event, FunctionCallReady)
    assert event.call == FunctionCall("c1", "f", '{"a":1}', "r1")


def test_arguments_done_without_name_waits_for_the_item() -> None:
    event = parse_server_event(
        frame(type="response.function_call_arguments.done", call_id="c1", arguments="{}")
    )
    assert type(event) is ServerEvent


def test_output_item_done_with_a_function_call() -> None:
    item = {
        "type": "function_call",
        "call_id": "c2",
        "name": "g",
        "arguments": "{}",
        "status": "completed",
    }
    event = parse_server_event(frame(type="response.output_item.done", response_id="r", item=item))
    assert isinstance(event, FunctionCallReady)
    assert event.call.call_id == "c2"
    message = {"type": "message", "role": "assistant"}
    assert (
        type(parse_server_event(frame(type="response.output_item.done", item=message)))
        is ServerEvent
    )


def test_call_without_name_or_arguments_is_kept() -> None:
    item = {"type": "function_call", "call_id": "c3", "arguments": {"not": "a string"}}
    event = parse_server_event(frame(type="response.output_item.done", item=item))
    assert isinstance(event, FunctionCallReady)
    assert event.call == FunctionCall("c3", "", None, None)


def test_response_done_lists_its_calls() -> None:
    output = [
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "message"},
        {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
    ]
    event = parse_server_event(frame(type="response.done", response={"id": "r9", "output": output}))
    assert isinstance(event, ResponseDone)
    assert event.response_id == "r9"
    assert [c.call_id for c in event.calls] == ["a", "b"]


@pytest.mark.parametrize(
    "kind", ["conversation.item.added", "conversation.item.created", "conversation.item.done"]
)
def test_output_confirmations(kind: str) -> None:
    item = {"type": "function_call_output", "call_id": "c1", "output": "x"}
    event = parse_server_event(frame(type=kind, item=item))
    assert isinstance(event, ItemConfirmed)
    assert event.output_call_id == "c1"
    assert event.final is (kind == "conversation.item.done")


def test_other_items_are_confirmed_without_a_call_id() -> None:
    item = {"id": "i1", "type": "message", "role": "user", "content": []}
    event = parse_server_event(frame(type="conversation.item.done", item=item))
    assert isinstance(event, ItemConfirmed)
    assert event.output_call_id is None
    assert event.item["id"] == "i1"


def test_error_names_the_client_event() -> None:
    event = parse_server_event(
        frame(
            type="error",
            error={
                "type": "invalid_request_error",
                "code": "x",
                "message": "m",
                "event_id": "evt_1",
            },
        )
    )
    assert isinstance(event, ServerError)
    assert (event.code, event.message, event.client_event_id) == ("x", "m", "evt_1")


def test_session_and_response_ids() -> None:
    session = parse_server_event(
        frame(type="session.created", session={"id": "sess_1", "type": "realtime"})
    )
    assert isinstance(session, SessionInfo)
    assert session.session_id == "sess_1"
    response = parse_server_event(frame(type="response.created", response={"id": "r1"}))
    assert isinstance(response, ResponseCreated)
    assert response.response_id == "r1"


def test_unknown_event_types_pass_through() -> None:
    event = parse_server_event(frame(type="response.output_audio.delta", delta="AAAA"))
    assert event.type == "response.output_audio.delta"
    assert event.data["delta"] == "AAAA"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_utf8"),
        ("[1, 2]", "not_an_object"),
        ('{"no": "type"}', "missing_type"),
        ('{"type": "response.done"}', "invalid_field"),
        ('{"type": "response.done", "response": {"output": "x"}}', "invalid_field"),
        (
            '{"type": "response.output_item.done", "item": {"type": "function_call"}}',
            "invalid_field",
        ),
        (
            '{"type": "conversation.item.added",'
            ' "item": {"type": "function_call_output", "call_id": 5}}',
            "invalid_field",
        ),
    ],
)
def test_malformed_frames_raise_protocol_errors(raw: str | bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_server_event(raw)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "text",
    ['{"type": "x.y", "n": NaN}', '{"type": "x.y", "s": "\\ud800"}'],  # orjson refuses these
)
def test_frames_are_read_as_the_standard_library_reads_them(text: str) -> None:
    event = parse_server_event(text)
    assert repr(event.data) == repr(json.loads(text))


def test_values_orjson_cannot_write_are_written_by_json() -> None:
    event = {"type": "x", "n": 2**70, "keys": {1: "a"}}
    assert json.loads(encode(event)) == {"type": "x", "n": 2**70, "keys": {"1": "a"}}


def test_client_events() -> None:
    ids = event_ids()
    assert [next(ids), next(ids)] == ["evt_rtg_1", "evt_rtg_2"]
    output = build_function_call_output("e1", "c1", "ok")
    assert output == {
        "type": "conversation.item.create",
        "event_id": "e1",
        "item": {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    }
    assert build_response_create("e2") == {"type": "response.create", "event_id": "e2"}
    update = build_session_update(
        "e3", "be nice", [], {"voice": "marin", "instructions": "ignored"}
    )
    assert update["session"] == {
        "type": "realtime",
        "voice": "marin",
        "instructions": "be nice",
        "tools": [],
    }
    assert json.loads(encode(output)) == output
