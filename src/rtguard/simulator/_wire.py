"""The objects the simulated server puts on the wire, shaped as the GA Realtime server shapes
them (checked against the ``openai`` package's models by ``tests/conformance.py``): the
session, responses, usage and errors. Pure functions, so the shapes live in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "EXPIRED",
    "audio_bytes_per_ms",
    "default_session",
    "echo_session",
    "error_event",
    "response_object",
    "session_update_problem",
    "update_session",
    "usage",
]

# The reason the real server closes a session at its maximum duration (code 1001).
EXPIRED = "Your session hit the maximum duration of 60 minutes."

# The fields of a GA realtime session object (``RealtimeSessionCreateResponse``).
_SESSION_FIELDS = frozenset(
    {
        "type",
        "object",
        "id",
        "model",
        "output_modalities",
        "instructions",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "tracing",
        "truncation",
        "prompt",
        "expires_at",
        "audio",
        "include",
        "reasoning",
    }
)
# The server owns these; a session.update cannot change them.
_SERVER_OWNED = ("type", "object", "id", "expires_at")
# What a session.update may set (``RealtimeSessionCreateRequest``); anything else is refused.
_UPDATABLE = (_SESSION_FIELDS - {"object", "id", "expires_at"}) | {"parallel_tool_calls"}

_PCM = {"type": "audio/pcm", "rate": 24000}
_BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}


def default_session(session_id: str, model: str, expires_at: int) -> dict[str, Any]:
    """What ``session.created`` carries: the server's defaults, as the GA server sends them."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a helpful assistant. (rtguard simulator)",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": dict(_PCM),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": dict(_PCM), "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    }


def session_update_problem(requested: object) -> tuple[str, str, str] | None:
    """The real server's (code, message, param) refusing this ``session``, or None. A refused
    update is discarded whole, as on the real server (so beta fields such as a top-level
    ``voice`` change nothing)."""
    if not isinstance(requested, dict):
        return "missing_required_parameter", "Missing required parameter: 'session'.", "session"
    if "type" not in requested:
        message = "Missing required parameter: 'session.type'."
        return "missing_required_parameter", message, "session.type"
    unknown = sorted(set(requested) - _UPDATABLE)
    if unknown:
        param = f"session.{unknown[0]}"
        return "unknown_parameter", f"Unknown parameter: '{param}'.", param
    return None


def update_session(session: Mapping[str, Any], requested: Mapping[str, Any]) -> dict[str, Any]:
    """``session`` with a ``session.update`` applied: nested settings are merged (an update
    of ``audio.output.voice`` keeps the input settings), a tagged setting (one with a
    ``type``, such as ``turn_detection``) is replaced whole, and server-owned fields stay."""
    merged = _merge(session, requested)
    merged.update({key: session[key] for key in _SERVER_OWNED})
    return merged


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and "type" not in value:
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


def echo_session(session: Mapping[str, Any]) -> dict[str, Any]:
    """The session as ``session.created``/``updated`` show it: the fields of the GA session
    object (``parallel_tool_calls``, which a session.update may set, is not one of them)."""
    return {key: value for key, value in session.items() if key in _SESSION_FIELDS}


def _setting(session: Mapping[str, Any], *path: str) -> Any:
    """A nested session setting, or None where the path stops (a client may null a level)."""
    value: Any = session
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def audio_bytes_per_ms(session: Mapping[str, Any]) -> int:
    """Input audio bytes per millisecond in the session's input format (pcm16 24 kHz or g711)."""
    return _BYTES_PER_MS.get(_setting(session, "audio", "input", "format", "type"), 48)


def response_object(
    session: Mapping[str, Any],
    response_id: str,
    conversation_id: str,
    status: str,
    output: list[dict[str, Any]],
    status_details: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``realtime.response`` as ``response.created``/``done`` carry it."""
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": session.get("output_modalities"),
        "max_output_tokens": session.get("max_output_tokens"),
        "audio": {
            "output": {
                "format": _setting(session, "audio", "output", "format"),
                "voice": _setting(session, "audio", "output", "voice"),
            }
        },
        "usage": usage,
        "metadata": None,
    }


def usage(input_tokens: int, output_tokens: int, audio: bool) -> dict[str, Any]:
    """Token usage in the real shape; with audio, as many audio tokens as text tokens."""
    audio_tokens = output_tokens if audio else 0
    return {
        "total_tokens": input_tokens + output_tokens + audio_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens + audio_tokens,
        "input_token_details": {
            "text_tokens": input_tokens,
            "audio_tokens": 0,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_tokens, "audio_tokens": audio_tokens},
    }


def error_event(
    kind: str, code: str | None, message: str, event_id: str | None, param: str | None = None
) -> dict[str, Any]:
    """An ``error``; ``event_id`` names the client event it answers (None: none)."""
    error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
    return {"type": "error", "error": error}
