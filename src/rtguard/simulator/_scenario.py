"""What the simulated model does: which calls to issue, how fast, and which faults to inject."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CallSpec", "Faults", "Scenario"]


@dataclass(frozen=True)
class CallSpec:
    """One function call; ``arguments`` is the raw JSON text the model sends (may be invalid)."""

    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class Faults:
    """Faults to inject; call positions are 0-based indexes into the issued calls."""

    reject_output: frozenset[int] = frozenset()  # the first output for these gets an `error`
    reject_code: str = "invalid_value"
    drop_connection_after: int | None = None  # abort the TCP connection after issuing this call
    ack_delay: float = 0.0  # seconds before acknowledging each output
    malformed_before: frozenset[int] = frozenset()  # send a non-JSON frame before these calls
    duplicate: frozenset[int] = frozenset()  # deliver these calls twice (same call_id)


@dataclass(frozen=True)
class Scenario:
    """``rate`` calls per second, or None to issue as fast as the client answers (keeping
    at most ``max_in_flight`` calls without an output)."""

    calls: tuple[CallSpec, ...] = ()
    rate: float | None = None
    calls_per_response: int = 1
    max_in_flight: int = 32
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if self.calls_per_response < 1 or self.max_in_flight < 1:
            raise ValueError("calls_per_response and max_in_flight must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        repeat = int(data.get("repeat", 1))
        calls = tuple(_call_spec(c) for c in data.get("calls", ())) * repeat
        raw_faults = data.get("faults") or {}
        faults = Faults(
            reject_output=frozenset(raw_faults.get("reject_output", ())),
            reject_code=str(raw_faults.get("reject_code", "invalid_value")),
            drop_connection_after=raw_faults.get("drop_connection_after"),
            ack_delay=float(raw_faults.get("ack_delay", 0.0)),
            malformed_before=frozenset(raw_faults.get("malformed_before", ())),
            duplicate=frozenset(raw_faults.get("duplicate", ())),
        )
        return cls(
            calls=calls,
            rate=data.get("rate"),
            calls_per_response=int(data.get("calls_per_response", 1)),
            max_in_flight=int(data.get("max_in_flight", 32)),
            faults=faults,
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
