"""Turning a failed call into the text the model reads.

One policy (a callable taking a ``ToolFailure``) covers every failure kind, so a user who
wants different wording replaces one function. The default names the tool, the exception type
and its message: never a traceback, and secrets that look like API keys or bearer tokens are
redacted, because exception messages often quote request headers or URLs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._boundary import safe_str, type_name
from ._ledger import Outcome

__all__ = [
    "FailureOutput",
    "ToolFailure",
    "default_failure_output",
    "redact",
    "redacting_logger",
]


@dataclass(frozen=True, slots=True)
class ToolFailure:
    """A failed call, as a failure text policy gets it: ``error`` is the original exception
    (or the rtguard error standing for a failure that had none), ``outcome`` its kind."""

    tool_name: str
    call_id: str
    outcome: Outcome
    error: BaseException


FailureOutput = Callable[[ToolFailure], str]
"""A failure text policy: the model-visible text for a failed call. One function covers
every failure kind; set it in ``SessionConfig(failure_output=...)`` or per tool with
``function_tool(failure_output=...)``. If it raises or returns something that is not a
string, ``default_failure_output`` is used instead and an ``ErrorSwallowed`` says so."""

_SECRET_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*"),
    re.compile(r"(?i)\b(api[_-]?key|authorization|token)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;]{8,}"),
)
_MAX_MESSAGE_CHARS = 500
_MAX_NAME_CHARS = 64  # a name the model invented can be anything


def redact(text: str) -> str:
    """Replace what looks like an API key or bearer token with ``[REDACTED]``.

    Covers ``sk-...`` keys, ``Bearer <token>``, and values after ``api_key``,
    ``authorization`` or ``token`` followed by ``:`` or ``=``.
    """
    text = _SECRET_PATTERNS[0].sub("[REDACTED]", text)
    text = _SECRET_PATTERNS[1].sub(r"\1 [REDACTED]", text)
    return _SECRET_PATTERNS[2].sub(r"\1\2[REDACTED]", text)


def default_failure_output(failure: ToolFailure) -> str:
    """The failure text rtguard sends unless told otherwise.

    It names the tool and, for a tool that raised, the exception type and its message
    (redacted with ``redact``, at most 500 characters), never a traceback. An unknown tool,
    bad arguments, a timeout and a failed handoff each have their own wording: the model is
    told to use one of its tools, what was wrong with the arguments, that the tool returned
    no result, that it remains the active agent.
    Never raises, whatever the error: its ``str()`` and class name are read defensively.
    """
    name, error = failure.tool_name[:_MAX_NAME_CHARS], failure.error
    message = redact(safe_str(error)[: _MAX_MESSAGE_CHARS * 4])[:_MAX_MESSAGE_CHARS]
    kind = type_name(error)
    match failure.outcome:
        case Outcome.UNKNOWN_TOOL:
            return f"Error: there is no tool named {name!r}. Use one of the tools you were given."
        case Outcome.INVALID_ARGUMENTS:
            return f"Error: invalid arguments for tool {name!r}: {message}"
        case Outcome.TIMEOUT:
            return f"Error: tool {name!r} timed out and returned no result."
        case Outcome.HANDOFF_FAILED:
            return (
                f"Error: handoff {name!r} failed ({kind}: {message}). You remain the active agent."
            )
        case _:
            return f"Error: tool {name!r} failed with {kind}: {message}"


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self.logger.log(level, "%s", redact(text), **kwargs)


def redacting_logger(name: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger for websockets, which logs handshake headers (Authorization) at DEBUG."""
    return _RedactingLogger(logging.getLogger(name), {})
