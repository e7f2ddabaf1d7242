"""What the simulated model does: which calls to issue, how fast, and which faults to inject.

A scenario file (YAML or JSON) is read against a schema derived from the dataclasses below:
every field is a key and its type hint says what the key takes, so a field added here is
accepted in files at once. Unknown keys, missing keys and wrong types are refused with the
key's path and what it takes, in one ``ScenarioError`` line.
"""

from __future__ import annotations

import difflib
import functools
import json
import reprlib
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = ["CallSpec", "Faults", "Scenario", "ScenarioError"]

_REJECT_TYPES = ("invalid_request_error", "server_error")
# A field's own reader, for a key whose file form differs from its Python type.
_READER = "rtguard.scenario.reader"

_Reader = Callable[[object, str], Any]  # (document value, its key path) -> field value


class ScenarioError(ValueError):
    """A scenario that does not fit its schema. ``source`` is the file, ``key`` a path such as
    ``faults.reject_output[1]``, ``problem`` what was wrong; ``str()`` joins them in one line."""

    def __init__(self, key: str, problem: str, source: str = "") -> None:
        super().__init__(": ".join(part for part in (source, key, problem) if part))
        self.key, self.problem, self.source = key, problem, source


def _require(ok: bool, key: str, expected: str, value: object) -> None:
    """The dataclasses' own checks, worded like the schema's."""
    if not ok:
        raise ScenarioError(key, f"must be {expected}, got {_shown(value)}")


def _arguments_text(value: object, where: str) -> str:
    """In a file, arguments are a mapping (sent as its JSON) or a string sent as-is."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return json.dumps(value)
    raise ScenarioError(
        where, f"must be a mapping of arguments or a string sent as-is, got {_shown(value)}"
    )


@dataclass(frozen=True)
class CallSpec:
    """One function call; ``arguments`` is the raw JSON text the model sends (may be invalid)."""

    name: str
    arguments: str = field(default="{}", metadata={_READER: _arguments_text})


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
    - ``drop_connection_after``: cut the connection (no close frame) after the response
      issuing these calls (their tools are then running: the moment a client must carry a
      call). Everything sent before a cut still arrives, as when a network breaks.
    - ``drop_after_output``: accept the first output for these calls, then cut the
      connection before acknowledging it (the output counts; the client cannot know).
    - ``drop_during_response``: cut the connection after ``response.output_item.added``
      for these calls, before their arguments are done (the call was never issued).
    - ``end_after``: close the WebSocket normally (1000) after the response issuing this call:
      a deliberate end, not a drop.
    - ``max_session_seconds``: close every connection that has lasted this long with code 1001
      and the real server's reason; with ``expiry_error``, first send the ``session_expired``
      error that earlier server versions sent.
    - ``expire_after``: the same expiry, after the response issuing these calls.
    - ``ack_delay``: seconds before acknowledging each output.
    - ``malformed_before``: send a non-JSON frame before the response holding these calls.
    - ``duplicate``: deliver these calls twice (a second response, same call_id).
    """

    reject_output: frozenset[int] = frozenset()
    reject_code: str = "invalid_value"
    reject_type: str = "invalid_request_error"
    reject_session_update: frozenset[int] = frozenset()
    drop_connection_after: frozenset[int] = frozenset()
    drop_after_output: frozenset[int] = frozenset()
    drop_during_response: frozenset[int] = frozenset()
    end_after: int | None = None
    max_session_seconds: float | None = None
    expire_after: frozenset[int] = frozenset()
    expiry_error: bool = False
    ack_delay: float = 0.0
    malformed_before: frozenset[int] = frozenset()
    duplicate: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        _require(
            self.reject_type in _REJECT_TYPES,
            "reject_type",
            " or ".join(_REJECT_TYPES),
            self.reject_type,
        )
        seconds = self.max_session_seconds
        _require(seconds is None or seconds > 0, "max_session_seconds", "positive", seconds)
        _require(self.ack_delay >= 0, "ack_delay", "0 or more seconds", self.ack_delay)


@dataclass(frozen=True)
class Scenario:
    """``rate`` calls per second; 0 or None issues them as fast as the client answers
    (keeping at most ``max_in_flight`` calls without an output on a connection), the same
    meaning ``--rate 0`` has on the command line.

    The scripted model speaks first, as soon as the client's first ``session.update`` has been
    accepted. ``stream_delay`` is the pause in seconds before each streamed delta of a
    response: with it, a response stays in progress long enough to be cancelled.

    ``speak_seconds`` makes each spoken answer (the reply to ``response.create`` when the
    session's output is audio) last that long, streamed at real-time pace as a voice app gets
    it: a 20 ms chunk of PCM16 at 24 kHz (960 bytes) every 20 ms, the transcript a word at a
    time alongside (0: a short answer sent at once). ``stamp_audio`` writes the time each
    chunk is sent (``time.monotonic()``, a little-endian double) into its first 8 bytes, so a
    client can measure how late it saw each one.
    """

    calls: tuple[CallSpec, ...] = ()
    """The calls the model issues, in order, once over the whole simulator."""
    rate: float | None = None
    """Calls per second; 0 or None: as fast as the client answers."""
    calls_per_response: int = 1
    """How many calls each model response issues."""
    max_in_flight: int = 32
    """Without a rate: the most calls left without an output on a connection."""
    stream_delay: float = 0.0
    """Seconds before each streamed delta of a response."""
    speak_seconds: float = 0.0
    """How long each spoken answer lasts, streamed at real-time pace (0: at once)."""
    stamp_audio: bool = False
    """Write each audio chunk's send time (``time.monotonic()``) into its first 8 bytes."""
    faults: Faults = field(default_factory=Faults)
    """What goes wrong, and when."""

    def __post_init__(self) -> None:
        rate = self.rate
        _require(rate is None or rate >= 0, "rate", "0 or more calls per second", rate)
        _require(
            self.calls_per_response >= 1,
            "calls_per_response",
            "at least 1",
            self.calls_per_response,
        )
        _require(self.max_in_flight >= 1, "max_in_flight", "at least 1", self.max_in_flight)
        _require(self.stream_delay >= 0, "stream_delay", "0 or more seconds", self.stream_delay)
        _require(self.speak_seconds >= 0, "speak_seconds", "0 or more seconds", self.speak_seconds)

    @classmethod
    def from_dict(cls, data: object) -> Scenario:
        """Build a scenario from a parsed document, checked against the schema (a scenario
        file's keys: this class's fields, ``repeat``, and ``faults`` with ``Faults``'s).

        Raises:
            ScenarioError: an unknown or missing key, or a value of the wrong type.
        """
        document = _form(_ScenarioFile).read(data, "")
        assert isinstance(document, _ScenarioFile)
        return document.scenario()

    @classmethod
    def parse(cls, text: str, source: str = "<scenario>") -> Scenario:
        """Read a scenario from YAML or JSON text (YAML is a superset of JSON).

        Raises:
            ScenarioError: the text is not YAML, or does not fit the schema; its message
                names ``source`` and the key.
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ScenarioError(_yaml_position(error), _yaml_problem(error), source) from None
        try:
            return cls.from_dict(data)
        except ScenarioError as error:
            raise ScenarioError(error.key, error.problem, source) from None

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario from a JSON or YAML file.

        Raises:
            ScenarioError: the file cannot be read, is not UTF-8 text, or does not fit the
                schema.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            problem = f"cannot read the scenario file ({error.strerror})"
            raise ScenarioError("", problem, str(path)) from None
        except UnicodeDecodeError:
            raise ScenarioError("", "not a text file (expected UTF-8)", str(path)) from None
        return cls.parse(text, str(path))

    @classmethod
    def shipped(cls, name: str) -> Scenario:
        """One of the example scenarios that come with rtguard, by name (see
        ``shipped_names``), such as ``"handoffs"`` or ``"flaky-server"``.

        Raises:
            ScenarioError: no shipped scenario has that name.
        """
        resource = _shipped_folder().joinpath(f"{name}.yaml")
        if not resource.is_file():
            shipped = ", ".join(cls.shipped_names())
            problem = f"neither a scenario file nor a shipped scenario (shipped: {shipped})"
            raise ScenarioError("", problem, name)
        return cls.parse(resource.read_text(encoding="utf-8"), f"{name} (shipped)")

    @staticmethod
    def shipped_names() -> list[str]:
        """The names of the example scenarios in ``rtguard/simulator/scenarios``."""
        entries = _shipped_folder().iterdir()
        return sorted(e.name.removesuffix(".yaml") for e in entries if e.name.endswith(".yaml"))


@dataclass(frozen=True)
class _ScenarioFile(Scenario):
    """A scenario as a file writes it: ``repeat`` issues its list of calls that many times."""

    repeat: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.repeat >= 1, "repeat", "at least 1", self.repeat)

    def scenario(self) -> Scenario:
        own = {f.name: getattr(self, f.name) for f in fields(Scenario)}
        return Scenario(**{**own, "calls": self.calls * self.repeat})


def _shipped_folder() -> Traversable:
    return resources.files("rtguard.simulator").joinpath("scenarios")


# --- the schema, derived from the type hints ------------------------------------------------


@dataclass(frozen=True)
class _Form:
    """How a value is written in a file: what to tell a user (``expected``, and ``plural`` for
    a list of them), and how to read it."""

    expected: str
    plural: str
    read: _Reader


_SCALARS: dict[object, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
}


@functools.cache
def _form(hint: Any) -> _Form:
    """The file form of a type hint. A hint nothing here can read fails at once, on the first
    scenario read, so a new field's type cannot slip through unchecked."""
    origin, args = get_origin(hint), get_args(hint)
    if isinstance(hint, type) and is_dataclass(hint):
        return _mapping_form(hint)
    if origin in (Union, types.UnionType):
        return _union_form(args)
    if origin is frozenset or (origin is tuple and args[1:] == (...,)):
        return _list_form(origin, _form(args[0]))
    if hint in _SCALARS:
        return _scalar_form(hint)
    raise TypeError(f"scenario files cannot express {hint!r}: teach _form in {__name__} it")


def _scalar_form(kind: type) -> _Form:
    expected, plural = _SCALARS[kind]
    accepted = (int, float) if kind is float else (kind,)

    def read(value: object, where: str) -> object:
        # Python's bool is an int: true is never a number here, nor 1 a boolean.
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, accepted):
            raise ScenarioError(where, f"must be {expected}, got {_shown(value)}")
        return float(value) if kind is float and isinstance(value, int) else value

    return _Form(expected, plural, read)


def _union_form(args: tuple[Any, ...]) -> _Form:
    nullable = type(None) in args
    alternatives = [_form(a) for a in args if a is not type(None)]
    expected = " or ".join([a.expected for a in alternatives] + (["null"] if nullable else []))

    def read(value: object, where: str) -> object:
        if value is None and nullable:
            return None
        if len(alternatives) == 1:  # its own error says more than "must be X or null"
            return alternatives[0].read(value, where)
        for alternative in alternatives:
            try:
                return alternative.read(value, where)
            except ScenarioError:
                continue
        raise ScenarioError(where, f"must be {expected}, got {_shown(value)}")

    return _Form(expected, f"values that are each {expected}", read)


def _list_form(collection: type, item: _Form) -> _Form:
    expected = f"a list of {item.plural}"

    def read(value: object, where: str) -> object:
        if not isinstance(value, list):
            raise ScenarioError(where, f"must be {expected}, got {_shown(value)}")
        return collection(item.read(v, f"{where}[{i}]") for i, v in enumerate(value))

    return _Form(expected, f"lists of {item.plural}", read)


def _mapping_form(cls: type) -> _Form:
    hints = get_type_hints(cls)
    readers: dict[str, _Reader] = {
        f.name: f.metadata.get(_READER) or _form(hints[f.name]).read for f in fields(cls)
    }
    required = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    ]
    expected = f"a mapping with keys {', '.join(readers)}"

    def read(value: object, where: str) -> object:
        if not isinstance(value, Mapping):
            raise ScenarioError(where, f"must be {expected}, got {_shown(value)}")
        for key in value:
            if key not in readers:
                raise ScenarioError(_join(where, str(key)), _unknown_key(str(key), readers))
        for key in required:
            if key not in value:
                raise ScenarioError(_join(where, key), "missing: this key is required")
        values = {key: readers[key](v, _join(where, key)) for key, v in value.items()}
        try:
            return cls(**values)
        except ScenarioError as error:
            raise ScenarioError(_join(where, error.key), error.problem) from None
        except ValueError as error:
            raise ScenarioError(where, str(error)) from None

    return _Form(expected, f"mappings with keys {', '.join(readers)}", read)


def _unknown_key(key: str, known: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key{hint}; the keys are {', '.join(known)}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _shown(value: object) -> str:
    """A value as the file wrote it, shortened."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return reprlib.repr(value)


def _yaml_position(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"not valid YAML or JSON ({problem})"
