"""Trace correlation for standard logging."""

from __future__ import annotations

import logging

from opentelemetry import trace

__all__ = ["TraceContextFilter"]


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (hex, or empty outside a span) to every record.

    Attach it to a handler and use them in the format, e.g.
    ``"%(asctime)s %(levelname)s %(name)s trace=%(trace_id)s span=%(span_id)s %(message)s"``.
    Inside a tool, the current span is the call's ``execute_tool`` span.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``record.trace_id`` and ``record.span_id`` from the current span; keeps every
        record."""
        context = trace.get_current_span().get_span_context()
        record.trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        record.span_id = format(context.span_id, "016x") if context.is_valid else ""
        return True
