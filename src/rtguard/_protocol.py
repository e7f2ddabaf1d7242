"""The OpenAI Realtime wire format, without I/O.

Text frames go in through :func:`parse_server_event`, which returns one typed event or raises
:class:`~rtguard.ProtocolError`; client events come out of the ``build_*`` functions as plain
dicts and :func:`encode` turns them into frame text. Nothing here touches a socket, so the whole
format is testable in microseconds and the transport stays a thin pump.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _json
from ._errors import ProtocolError

__all__ = [
    "FunctionCall",
    "FunctionCallReady",
    "ItemConfirmed",
    "ItemRemoved",
    "ItemTranscribed",
    "ResponseCreated",
    "ResponseDone",
    "ServerError",
    "ServerEvent",
    "SessionInfo",
    "UserSpeech",
    "build_audio_append",
    "build_audio_commit",
    "build_function_call",
    "build_function_call_output",
    "build_item_create",
    "build_response_cancel",
    "build_response_create",
    "build_session_update",
    "build_user_message",
    "encode",
    "event_ids",
    "parse_server_event",
]

# Events that confirm an item is in the conversation. GA servers send `added` then `done`;
# beta servers send `created`. The first one seen for an output acknowledges it.
_ITEM_CONFIRMATIONS = frozenset(
    {"conversation.item.added", "conversation.item.created", "conversation.item.done"}
)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A function call the model issued.

    ``arguments`` is the model's JSON text, or None when the server sent none (or not a
    string): the call still needs an output, so it is not dropped here.
    """

    call_id: str
    name: str
    arguments: str | None
    response_id: str | None


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """Any event the server sent, as parsed JSON. Subclasses add what rtguard acts on."""

    type: str
    data: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionInfo(ServerEvent):
    session_id: str | None


@dataclass(frozen=True, slots=True)
class ResponseCreated(ServerEvent):
    response_id: str | None


@dataclass(frozen=True, slots=True)
class FunctionCallReady(ServerEvent):
    """A call whose arguments are complete (``...arguments.done`` or ``output_item.done``)."""

    call: FunctionCall


@dataclass(frozen=True, slots=True)
class ResponseDone(ServerEvent):
    """The end of a model response, with every function call it held.

    ``status`` is the server's (``completed``, ``cancelled``, ``incomplete``, ``failed``).
    ``unusable`` describes each function call item that could not be read (no ``call_id``):
    it is reported, and the response's other calls still count.
    """

    response_id: str | None
    status: str | None
    calls: tuple[FunctionCall, ...]
    unusable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ItemConfirmed(ServerEvent):
    """The server put an item into the conversation (``added``, ``created``) or reports its
    final state (``conversation.item.done``, ``final``).

    ``output_call_id`` is set for a ``function_call_output``: the first confirmation of ours
    acknowledges it.
    """

    item: Mapping[str, Any]
    output_call_id: str | None
    final: bool


@dataclass(frozen=True, slots=True)
class ItemRemoved(ServerEvent):
    """An item left the conversation (deleted), or lost its text (truncated audio: the server
    drops the transcript of what the user did not hear)."""

    item_id: str


@dataclass(frozen=True, slots=True)
class ItemTranscribed(ServerEvent):
    """The transcript of a user audio part, which arrives after its item."""

    item_id: str
    content_index: int | None
    transcript: str | None


@dataclass(frozen=True, slots=True)
class UserSpeech(ServerEvent):
    """Server VAD heard the user start (``speaking``) or stop speaking."""

    speaking: bool


@dataclass(frozen=True, slots=True)
class ServerError(ServerEvent):
    """An ``error`` event; ``client_event_id`` names the client event it refers to, if any.

    ``error_type`` is the error's class (``invalid_request_error``, ``server_error``, ...):
    only a ``server_error`` may succeed when the same event is sent again.
    """

    error_type: str | None
    code: str | None
    message: str
    client_event_id: str | None


def parse_server_event(frame: str | bytes) -> ServerEvent:
    """Parse one text frame from the server into the most specific event type."""
    if isinstance(frame, bytes):
        try:
            frame = frame.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("invalid_utf8", str(exc)) from None
    try:
        data = _json.loads(frame)
    except ValueError as exc:
        raise ProtocolError("invalid_json", str(exc)) from None
    if not isinstance(data, dict):
        raise ProtocolError("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    event_type = data.get("type")
    if not isinstance(event_type, str):
        raise ProtocolError("missing_type", "event has no string 'type'")
    parser = _PARSERS.get(event_type)
    return parser(event_type, data) if parser else ServerEvent(event_type, data)


def _parse_session(event_type: str, data: dict[str, Any]) -> ServerEvent:
    session = _object(data, "session")
    return SessionInfo(event_type, data, _optional_str(session, "id"))


def _parse_response_created(event_type: str, data: dict[str, Any]) -> ServerEvent:
    return ResponseCreated(event_type, data, _optional_str(_object(data, "response"), "id"))


def _parse_arguments_done(event_type: str, data: dict[str, Any]) -> ServerEvent:
    if not _optional_str(data, "name"):
        # Some servers leave the name to `output_item.done`; wait for it rather than answer
        # a call we cannot route.
        return ServerEvent(event_type, data)
    return FunctionCallReady(
        event_type, data, _function_call(data, _optional_str(data, "response_id"))
    )


def _parse_output_item_done(event_type: str, data: dict[str, Any]) -> ServerEvent:
    item = _object(data, "item")
    if item.get("type") != "function_call" or item.get("status") == "incomplete":
        # A call cut off mid-arguments (its response was cancelled) was never issued.
        return ServerEvent(event_type, data)
    return FunctionCallReady(
        event_type, data, _function_call(item, _optional_str(data, "response_id"))
    )


def _parse_response_done(event_type: str, data: dict[str, Any]) -> ServerEvent:
    response = _object(data, "response")
    response_id = _optional_str(response, "id")
    output = response.get("output") or []
    if not isinstance(output, list):
        raise ProtocolError("invalid_field", "response.output is not a list")
    calls, unusable = [], []
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "function_call":
            continue
        if item.get("status") == "incomplete":
            continue  # cut off before its arguments were complete: never issued
        try:
            calls.append(_function_call(item, response_id))
        except ProtocolError as exc:
            unusable.append(exc.detail)
    status = _optional_str(response, "status")
    return ResponseDone(event_type, data, response_id, status, tuple(calls), tuple(unusable))


def _parse_item_confirmation(event_type: str, data: dict[str, Any]) -> ServerEvent:
    item = _object(data, "item")
    is_output = item.get("type") == "function_call_output"
    call_id = _required_str(item, "call_id") if is_output else None
    return ItemConfirmed(event_type, data, item, call_id, event_type == "conversation.item.done")


def _parse_item_removed(event_type: str, data: dict[str, Any]) -> ServerEvent:
    return ItemRemoved(event_type, data, _required_str(data, "item_id"))


def _parse_transcription(event_type: str, data: dict[str, Any]) -> ServerEvent:
    index = data.get("content_index")
    transcript = data.get("transcript")
    return ItemTranscribed(
        event_type,
        data,
        _required_str(data, "item_id"),
        index if isinstance(index, int) else None,
        transcript if isinstance(transcript, str) else None,
    )


def _parse_speech(event_type: str, data: dict[str, Any]) -> ServerEvent:
    return UserSpeech(event_type, data, event_type.endswith("speech_started"))


def _parse_error(event_type: str, data: dict[str, Any]) -> ServerEvent:
    error = _object(data, "error")
    message = error.get("message")
    return ServerError(
        event_type,
        data,
        error_type=_optional_str(error, "type"),
        code=_optional_str(error, "code"),
        message=message if isinstance(message, str) else "",
        client_event_id=_optional_str(error, "event_id"),
    )


_PARSERS = {
    "session.created": _parse_session,
    "session.updated": _parse_session,
    "response.created": _parse_response_created,
    "response.function_call_arguments.done": _parse_arguments_done,
    "response.output_item.done": _parse_output_item_done,
    "response.done": _parse_response_done,
    "error": _parse_error,
    **dict.fromkeys(_ITEM_CONFIRMATIONS, _parse_item_confirmation),
    "conversation.item.deleted": _parse_item_removed,
    "conversation.item.truncated": _parse_item_removed,
    "conversation.item.input_audio_transcription.completed": _parse_transcription,
    "input_audio_buffer.speech_started": _parse_speech,
    "input_audio_buffer.speech_stopped": _parse_speech,
}


def _function_call(fields: Mapping[str, Any], response_id: str | None) -> FunctionCall:
    name = fields.get("name")
    arguments = fields.get("arguments")
    return FunctionCall(
        # Interned: the ledger and the history keep a call's id for minutes, one copy for both.
        call_id=sys.intern(_required_str(fields, "call_id")),
        # A call without a usable name is still answered (as an unknown tool), never dropped.
        name=name if isinstance(name, str) else "",
        arguments=arguments if isinstance(arguments, str) else None,
        response_id=response_id,
    )


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ProtocolError("invalid_field", f"{key!r} is missing or not an object")
    return value


def _required_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError("invalid_field", f"{key!r} is missing or not a non-empty string")
    return value


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


# --- client events ---------------------------------------------------------------------------


def event_ids(prefix: str = "evt_rtg_") -> Iterator[str]:
    """Unique client event ids, so a server ``error`` can be traced to what we sent."""
    return (f"{prefix}{n}" for n in itertools.count(1))


def build_session_update(
    event_id: str, instructions: str, tools: list[dict[str, Any]], extra: Mapping[str, Any]
) -> dict[str, Any]:
    session = {"type": "realtime", **extra, "instructions": instructions, "tools": tools}
    return {"type": "session.update", "event_id": event_id, "session": session}


def build_item_create(event_id: str, item: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.create", "event_id": event_id, "item": item}


def build_function_call(event_id: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A function call the model issued on an earlier connection, recreated on this one so
    that its output is accepted."""
    item = {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
    return build_item_create(event_id, item)


def build_function_call_output(event_id: str, call_id: str, output: str) -> dict[str, Any]:
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return build_item_create(event_id, item)


def build_response_create(event_id: str) -> dict[str, Any]:
    return {"type": "response.create", "event_id": event_id}


def build_response_cancel(event_id: str) -> dict[str, Any]:
    return {"type": "response.cancel", "event_id": event_id}


def build_user_message(event_id: str, text: str) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return build_item_create(event_id, item)


def build_audio_append(event_id: str, audio_base64: str) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "event_id": event_id, "audio": audio_base64}


def build_audio_commit(event_id: str) -> dict[str, Any]:
    return {"type": "input_audio_buffer.commit", "event_id": event_id}


def encode(event: Mapping[str, Any]) -> str:
    return _json.dumps(event)
