"""What the simulated model does: which calls to issue, how fast, and which faults to inject."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CallSpec", "Faults", "Scenario"]

_REJECT_TYPES = ("invalid_request_error", "server_error")


@dataclass(frozen=True)
class CallSpec:
    """One function call; ``arguments`` is the raw JSON text the model sends (may be invalid)."""

    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class Faults:
    """Faults to inject. Call positions are 0-based indexes into the scenario's calls, which
    are issued once over the whole simulator (a new connection carries on with the next call
    not yet issued); each call-indexed fault fires once, so the connection after it goes on.

    - ``reject_output``: the first output for these calls gets an ``error`` of type
      ``reject_type`` (``invalid_request_error``, or ``server_error`` for a refusal worth
      retrying) and code ``reject_code``, naming the client's event_id.
    - ``reject_session_update``: 0-based indexes of ``session.update`` events, counted over
      the whole simulator, answered with an ``error`` instead of ``session.updated`` (the
      session is not changed).
    - ``drop_connection_after``: abort the TCP connection after the response issuing this call.
    - ``drop_after_output``: accept the first output for these calls, then abort the TCP
      connection before acknowledging it (the output counts; the client cannot know).
    - ``drop_during_response``: abort the TCP connection after ``response.output_item.added``
      for these calls, before their arguments are done (the call was never issued).
    - ``end_after``: close the WebSocket normally (1000) after the response issuing this call:
      a deliberate end, not a drop.
    - ``max_session_seconds``: close every connection that has lasted this long with code 1001
      and the real server's reason; with ``expiry_error``, first send the ``session_expired``
      error that earlier server versions sent.
    - ``ack_delay``: seconds before acknowledging each output.
    - ``malformed_before``: send a non-JSON frame before the response holding these calls.
    - ``duplicate``: deliver these calls twice (a second response, same call_id).
    """

    reject_output: frozenset[int] = frozenset()
    reject_code: str = "invalid_value"
    reject_type: str = "invalid_request_error"
    reject_session_update: frozenset[int] = frozenset()
    drop_connection_after: int | None = None
    drop_after_output: frozenset[int] = frozenset()
    drop_during_response: frozenset[int] = frozenset()
    end_after: int | None = None
    max_session_seconds: float | None = None
    expiry_error: bool = False
    ack_delay: float = 0.0
    malformed_before: frozenset[int] = frozenset()
    duplicate: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.reject_type not in _REJECT_TYPES:
            raise ValueError(f"reject_type must be one of {_REJECT_TYPES}")
        if self.max_session_seconds is not None and self.max_session_seconds <= 0:
            raise ValueError("max_session_seconds must be positive")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        def indexes(key: str) -> frozenset[int]:
            values: Iterable[Any] = data.get(key, ())
            return frozenset(int(v) for v in values)

        def optional(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        seconds = data.get("max_session_seconds")
        return cls(
            reject_output=indexes("reject_output"),
            reject_code=str(data.get("reject_code", "invalid_value")),
            reject_type=str(data.get("reject_type", "invalid_request_error")),
            reject_session_update=indexes("reject_session_update"),
            drop_connection_after=optional("drop_connection_after"),
            drop_after_output=indexes("drop_after_output"),
            drop_during_response=indexes("drop_during_response"),
            end_after=optional("end_after"),
            max_session_seconds=None if seconds is None else float(seconds),
            expiry_error=bool(data.get("expiry_error", False)),
            ack_delay=float(data.get("ack_delay", 0.0)),
            malformed_before=indexes("malformed_before"),
            duplicate=indexes("duplicate"),
        )


@dataclass(frozen=True)
class Scenario:
    """``rate`` calls per second, or None to issue as fast as the client answers (keeping
    at most ``max_in_flight`` calls without an output on a connection).

    The scripted model speaks first, as soon as the client's first ``session.update`` has been
    accepted. ``stream_delay`` is the pause in seconds before each streamed delta of a
    response: with it, a response stays in progress long enough to be cancelled.
    """

    calls: tuple[CallSpec, ...] = ()
    rate: float | None = None
    calls_per_response: int = 1
    max_in_flight: int = 32
    stream_delay: float = 0.0
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if self.calls_per_response < 1 or self.max_in_flight < 1:
            raise ValueError("calls_per_response and max_in_flight must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.stream_delay < 0:
            raise ValueError("stream_delay must not be negative")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        repeat = int(data.get("repeat", 1))
        calls = tuple(_call_spec(c) for c in data.get("calls", ())) * repeat
        return cls(
            calls=calls,
            rate=data.get("rate"),
            calls_per_response=int(data.get("calls_per_response", 1)),
            max_in_flight=int(data.get("max_in_flight", 32)),
            stream_delay=float(data.get("stream_delay", 0.0)),
            faults=Faults.from_dict(data.get("faults") or {}),
        )

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario from a JSON or YAML file (YAML is a superset of JSON)."""
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a scenario must be a mapping")
        return cls.from_dict(data)


def _call_spec(raw: Mapping[str, Any]) -> CallSpec:
    arguments = raw.get("arguments", {})
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return CallSpec(name=str(raw["name"]), arguments=text)
