"""Span helpers: how a failure, an exception and the end of a generation are recorded.

Exception text passes the same redaction as model-visible text, and no helper calls
``str()`` on an exception directly (an exception's ``__str__`` is user code and may raise).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode

from .._boundary import safe_str, type_name
from .._errors import ServerRejectedError
from .._failures import redact
from .._protocol import ResponseDone
from . import _names as n

__all__ = ["error_type_of", "exemplar", "fail", "generation_end", "record_exception"]

_MAX_STATUS_CHARS = 200


def fail(
    span: Span, error_type: str, error: BaseException | None, *, at: int | None = None
) -> None:
    """Mark a span failed with a low-cardinality ``error.type``; with the exception, an
    ``exception`` event too (at ``at``, nanoseconds since the epoch, or now)."""
    span.set_attribute(n.ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, _message(error) if error is not None else error_type))
    if error is not None:
        record_exception(span, error, at=at)


def record_exception(span: Span, error: BaseException, *, at: int | None = None) -> None:
    # By hand, not span.record_exception(): that calls str(error), which may raise.
    stacktrace = redact("".join(traceback.format_exception(error)))
    attributes = {
        n.EXCEPTION_TYPE: type_name(error),
        n.EXCEPTION_MESSAGE: _message(error),
        n.EXCEPTION_STACKTRACE: stacktrace,
    }
    span.add_event(n.SPAN_EVENT_EXCEPTION, attributes, timestamp=at)


def error_type_of(error: BaseException) -> str:
    """The server's error code for a refusal (what the conventions ask ``error.type`` to be),
    the exception's class name otherwise."""
    if isinstance(error, ServerRejectedError) and error.code:
        return error.code
    return type_name(error)


def generation_end(done: ResponseDone | None) -> tuple[dict[str, Any], str | None]:
    """How a generation ended, from its ``response.done``: the finish reason (the
    provider's own for a cut-off response, ``error`` when it gives none or there was no
    ``response.done``) and token usage as span attributes, and the server's error code for
    a failed response (None if it did not fail)."""
    if done is None:
        return {n.GEN_AI_RESPONSE_FINISH_REASONS: ["error"]}, None
    response = _mapping(done.data.get("response"))
    details = _mapping(response.get("status_details"))
    status = done.status
    if status == "completed":
        reason = "tool_call" if done.calls else "stop"
    elif status in ("cancelled", "incomplete") and isinstance(details.get("reason"), str):
        reason = details["reason"]
    else:
        reason = "error"
    attributes: dict[str, Any] = {n.GEN_AI_RESPONSE_FINISH_REASONS: [reason]}
    usage = _mapping(response.get("usage"))
    for key, attribute in (
        ("input_tokens", n.GEN_AI_USAGE_INPUT_TOKENS),
        ("output_tokens", n.GEN_AI_USAGE_OUTPUT_TOKENS),
    ):
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            attributes[attribute] = value
    if status != "failed":
        return attributes, None
    error = _mapping(details.get("error"))
    code = error.get("code") or error.get("type")
    return attributes, code if isinstance(code, str) else n.ERROR_OTHER


def exemplar(span: Span) -> dict[str, str] | None:
    """The trace and span ids a histogram sample links to (sampled spans only)."""
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def _message(error: BaseException) -> str:
    return redact(safe_str(error))[:_MAX_STATUS_CHARS]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
