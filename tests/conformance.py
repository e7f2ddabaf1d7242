"""Strict conformance of Realtime frames to the official ``openai`` package's GA models.

Each frame is validated by pydantic (``validate_json`` in strict mode, never ``construct``)
against the SDK's server or client event union, made discriminated on ``type`` so that a failure
names the one event model that failed. The SDK's models accept unknown fields; these checks do
not, so a misspelt or beta-era field fails too. Two exceptions, both from live captures of the
GA server: ``session.created``/``updated`` carry the server's full session, which is checked
against ``RealtimeSessionCreateResponse`` (it has the ``id``, ``object`` and ``expires_at`` the
SDK's event model leaves out), and text deltas carry ``obfuscation``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union, get_args

from openai.types.realtime import RealtimeSessionCreateResponse
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from rtguard.simulator import MALFORMED_FRAME, Simulator

__all__ = ["assert_conforms", "validate_client_frame", "validate_server_frame"]


def _discriminated(union: Any, title: str) -> TypeAdapter[Any]:
    """A TypeAdapter over an SDK event union, discriminated on ``type``: the SDK marks the
    discriminator with its own metadata, which pydantic does not read."""
    members = get_args(get_args(union)[0])
    discriminated: Any = Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007
    return TypeAdapter(discriminated, config=ConfigDict(title=title))


_SERVER = _discriminated(RealtimeServerEvent, "RealtimeServerEvent")
_CLIENT = _discriminated(RealtimeClientEvent, "RealtimeClientEvent")
_SESSION = TypeAdapter(RealtimeSessionCreateResponse)
_SESSION_EVENTS = ("session.created", "session.updated")
# Fields the real server sends that the SDK's models do not declare (seen in live captures).
_UNDECLARED = {"response.output_text.delta": {"obfuscation"}}


def validate_server_frame(text: str) -> None:
    """Raise AssertionError unless ``text`` is a server event the SDK's models accept, with
    no field they do not know."""
    event_type, event = _validate(_SERVER, text, "server")
    ignored = _UNDECLARED.get(event_type, set())
    unknown = [path for path in _unknown_fields(event) if path not in ignored]
    if event_type in _SESSION_EVENTS:
        unknown = [path for path in unknown if not path.startswith("session.")]
        session = json.dumps(json.loads(text)["session"])
        try:
            full = _SESSION.validate_json(session, strict=True)
        except ValidationError as exc:
            raise AssertionError(f"server event {event_type!r}: session: {exc}") from exc
        unknown += [f"session.{path}" for path in _unknown_fields(full)]
    if unknown:
        raise AssertionError(f"server event {event_type!r} has fields the SDK lacks: {unknown}")


def validate_client_frame(text: str) -> None:
    """Raise AssertionError unless ``text`` is a client event the SDK's models accept, with
    no field they do not know."""
    event_type, event = _validate(_CLIENT, text, "client")
    unknown = _unknown_fields(event)
    if unknown:
        raise AssertionError(f"client event {event_type!r} has fields the SDK lacks: {unknown}")


def assert_conforms(sim: Simulator) -> None:
    """Validate every frame the simulator sent and received (it must record frames). The one
    frame a fault sends on purpose as garbage, ``MALFORMED_FRAME``, is skipped."""
    assert sim.record_frames, "create the Simulator with record_frames=True"
    for text in sim.frames_sent:
        if text != MALFORMED_FRAME:
            validate_server_frame(text)
    for text in sim.frames_received:
        validate_client_frame(text)


def _validate(adapter: TypeAdapter[Any], text: str, side: str) -> tuple[str, BaseModel]:
    try:
        event_type = json.loads(text).get("type")
    except (ValueError, AttributeError) as exc:
        raise AssertionError(f"{side} frame is not a JSON object: {text[:200]!r}") from exc
    try:
        event: BaseModel = adapter.validate_json(text, strict=True)
    except ValidationError as exc:
        raise AssertionError(f"{side} event {event_type!r} does not conform: {exc}") from exc
    return str(event_type), event


def _unknown_fields(value: object, path: str = "") -> list[str]:
    """Dotted paths of every field a model holds as an extra (one its class does not
    declare), in ``value`` and below."""
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _unknown_fields(v, f"{path}{i}.")]
    if not isinstance(value, BaseModel):
        return []
    found = [f"{path}{key}" for key in value.model_extra or {}]
    for name in type(value).model_fields:
        found += _unknown_fields(getattr(value, name), f"{path}{name}.")
    return found
