"""What a session reports: spans (OpenTelemetry API only) and Prometheus samples.

The session calls these hooks at fixed points of a call's life; they only observe. An app
that set up its own OpenTelemetry SDK gets rtguard's spans through it; without any SDK the
API's no-op tracer makes spans free.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NoOpTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)

from .._failures import redact
from .._ledger import Call, CallState, IncompleteReason, Outcome, ToolOutput
from .._version import __version__
from . import _names as n
from ._metrics import RtguardMetrics

if TYPE_CHECKING:
    from .._agent import Agent, Handoff
    from .._session import RealtimeSession
    from .._tools import FunctionTool

__all__ = ["SessionTelemetry", "Telemetry"]

logger = logging.getLogger("rtguard")

_OUTCOME_ERROR_TYPES = {
    Outcome.TIMEOUT: n.ERROR_TIMEOUT,
    Outcome.HANDOFF_FAILED: n.ERROR_HANDOFF_FAILED,
    Outcome.INVALID_ARGUMENTS: n.ERROR_INVALID_ARGUMENTS,
    Outcome.UNKNOWN_TOOL: n.ERROR_UNKNOWN_TOOL,
    Outcome.REJECTED: n.ERROR_REJECTED,
}
_INCOMPLETE_ERROR_TYPES = {
    IncompleteReason.RETRIES_EXHAUSTED: n.ERROR_OUTPUT_SEND_FAILED,
    IncompleteReason.REJECTED_BY_SERVER: n.ERROR_OUTPUT_SEND_FAILED,
    IncompleteReason.CONNECTION_LOST: IncompleteReason.CONNECTION_LOST.value,
    IncompleteReason.SESSION_CLOSED: IncompleteReason.SESSION_CLOSED.value,
    IncompleteReason.UNACKNOWLEDGED: IncompleteReason.UNACKNOWLEDGED.value,
}
_OPEN_RESPONSE_SPANS = 64
_RECENT_RESPONSES = 256
_MAX_TOOL_NAME_CHARS = 64
_REFRESH_SECONDS = 1.0
_MAX_STATUS_CHARS = 200


class Telemetry:
    """Where sessions report: a tracer provider, a metrics set, and what spans may contain.

    ``capture_content=True`` opts in to tool arguments and results on spans (truncated to
    ``max_content_chars``); they are off by default because they often hold user data.
    """

    _default: Telemetry | None = None

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        metrics: RtguardMetrics | None = None,
        capture_content: bool = False,
        max_content_chars: int = 1000,
    ) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer(
            n.INSTRUMENTATION_NAME, __version__, schema_url=n.SCHEMA_URL
        )
        self.metrics = metrics
        self.capture_content = capture_content
        self.max_content_chars = max_content_chars

    @classmethod
    def default(cls) -> Telemetry:
        """The global tracer provider and the process-wide Prometheus registry."""
        if cls._default is None:
            cls._default = cls(metrics=RtguardMetrics())
        return cls._default

    @classmethod
    def disabled(cls) -> Telemetry:
        """No spans and no metrics (to measure what telemetry costs)."""
        return cls(tracer_provider=NoOpTracerProvider())

    def session(self, session: RealtimeSession) -> SessionTelemetry:
        return SessionTelemetry(self, session)


class SessionTelemetry:
    def __init__(self, telemetry: Telemetry, session: RealtimeSession) -> None:
        self._tracer = telemetry.tracer
        self._metrics = telemetry.metrics
        self._capture = telemetry.capture_content
        self._max_chars = telemetry.max_content_chars
        self._session = session
        self._session_id: str | None = None
        self._open_responses: OrderedDict[str, Span] = OrderedDict()
        # Built once and reused: span attributes per tool, metric children per label set.
        self._tool_attributes: dict[tuple[str, str], dict[str, Any]] = {}
        self._children: dict[tuple[object, ...], Any] = {}
        self._recent_responses: OrderedDict[str, Span] = OrderedDict()
        self._refresher: asyncio.Task[None] | None = None

    # --- session and responses ----------------------------------------------------------

    def session_started(self) -> None:
        if self._metrics:
            self.agent_active(self._session.agent)
            self._metrics.active_sessions.inc()
            self._metrics.watch(self._session.ledger)
            if self._metrics.multiprocess:
                self._refresher = asyncio.get_running_loop().create_task(self._refresh_gauges())

    def session_ended(self) -> None:
        if self._metrics:
            self._metrics.active_sessions.dec()
            if self._refresher is not None:
                self._refresher.cancel()
            self._metrics.refresh()
        for span in self._open_responses.values():
            span.end()
        self._open_responses.clear()

    def agent_active(self, agent: Agent) -> None:
        """Export the agent's per-tool series at 0, so rates count a tool's very first call."""
        if self._metrics:
            self._metrics.export_tools([*agent.tool_names, n.UNKNOWN_TOOL_LABEL])

    async def _refresh_gauges(self) -> None:
        """Multiprocess mode: keep this process's waiting-call gauges current (age grows)."""
        assert self._metrics is not None
        while True:
            self._metrics.refresh()
            await asyncio.sleep(_REFRESH_SECONDS)

    def session_identified(self, session_id: str) -> None:
        if session_id != self._session_id:
            self._session_id = session_id
            self._tool_attributes.clear()

    def response_started(self, response_id: str | None) -> None:
        if response_id is None:
            return
        model = self._session.config.session_options.get("model")
        attributes = self._common_attributes() | {
            n.GEN_AI_OPERATION_NAME: n.OP_REALTIME_INFERENCE,
            n.GEN_AI_PROVIDER_NAME: n.PROVIDER_OPENAI,
            n.GEN_AI_RESPONSE_ID: response_id,
        }
        if isinstance(model, str):
            attributes[n.GEN_AI_REQUEST_MODEL] = model
        name = (
            f"{n.OP_REALTIME_INFERENCE} {model}"
            if isinstance(model, str)
            else n.OP_REALTIME_INFERENCE
        )
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        self._open_responses[response_id] = span
        _remember(self._recent_responses, response_id, span, _RECENT_RESPONSES)
        if len(self._open_responses) > _OPEN_RESPONSE_SPANS:  # response.done never came
            self._open_responses.popitem(last=False)[1].end()

    def response_finished(self, response_id: str | None) -> None:
        span = self._open_responses.pop(response_id, None) if response_id else None
        if span is not None:
            span.end()

    # --- calls --------------------------------------------------------------------------

    def call_received(
        self, call: Call, agent: Agent, target: FunctionTool | Handoff | None
    ) -> None:
        label = call.tool_name if target is not None else n.UNKNOWN_TOOL_LABEL
        attributes = {
            **self._attributes_for(agent, target, call.tool_name),
            n.GEN_AI_TOOL_CALL_ID: call.call_id,
        }
        if self._capture and call.arguments is not None:
            attributes[n.GEN_AI_TOOL_CALL_ARGUMENTS] = call.arguments[: self._max_chars]
        parent = self._recent_responses.get(call.response_key)
        ctx = trace.set_span_in_context(parent) if parent is not None else otel_context.Context()
        name = f"{n.OP_EXECUTE_TOOL} {label}" if target is not None else n.OP_EXECUTE_TOOL
        span = self._tracer.start_span(
            name, context=ctx, kind=SpanKind.INTERNAL, attributes=attributes
        )
        call.annotations["span"] = span
        call.annotations["context"] = trace.set_span_in_context(span)
        call.annotations["label"] = label
        if self._metrics:
            self._metrics.refresh()

    def _attributes_for(
        self, agent: Agent, target: FunctionTool | Handoff | None, tool_name: str
    ) -> dict[str, Any]:
        """The execute_tool attributes every call of this agent's tool shares."""
        key = (agent.name, tool_name)
        cached = self._tool_attributes.get(key)
        if cached is not None:
            return cached
        attributes = self._common_attributes() | {
            n.GEN_AI_OPERATION_NAME: n.OP_EXECUTE_TOOL,
            n.GEN_AI_TOOL_NAME: tool_name[:_MAX_TOOL_NAME_CHARS],
            n.GEN_AI_TOOL_TYPE: n.TOOL_TYPE_FUNCTION,
            n.GEN_AI_AGENT_NAME: agent.name,
        }
        description = getattr(target, "description", None)
        if description:
            attributes[n.GEN_AI_TOOL_DESCRIPTION] = description
        if target is not None:  # names the model invents are unbounded: never cached
            self._tool_attributes[key] = attributes
        return attributes

    @contextmanager
    def tool_context(self, call: Call) -> Iterator[None]:
        """Make the call's span current, so spans the tool creates nest under it."""
        token = otel_context.attach(_context(call))
        try:
            yield
        finally:
            otel_context.detach(token)

    def output_ready(self, call: Call, output: ToolOutput) -> None:
        if output.outcome is Outcome.SUCCESS:
            if self._capture:
                _span(call).set_attribute(n.GEN_AI_TOOL_CALL_RESULT, output.text[: self._max_chars])
        else:
            error_type = _OUTCOME_ERROR_TYPES.get(output.outcome) or type(output.error).__name__
            _fail_call(call, error_type, output.error)
        if self._metrics:
            label = call.annotations["label"]
            self._child(self._metrics.tool_calls, label, output.outcome.value).inc()
            if output.outcome is Outcome.HANDOFF_FAILED:
                self._metrics.handoffs.labels("failed").inc()

    def send_attempt(
        self,
        call: Call,
        attempt: int,
        started_ns: int,
        error: BaseException | None,
        *,
        will_retry: bool,
    ) -> None:
        attributes: dict[str, Any] = self._common_attributes() | {
            n.RTGUARD_ATTEMPT: attempt,
            n.RTGUARD_SEND_RESULT: "failed" if error else "sent",
        }
        span = self._tracer.start_span(
            n.SPAN_SEND_OUTPUT,
            context=_context(call),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=started_ns,
        )
        if error is not None:
            span.set_attribute(n.RTGUARD_WILL_RETRY, will_retry)
            _fail(span, type(error).__name__, error)
        span.end()
        if self._metrics:
            self._child(self._metrics.output_sends, "failed" if error else "sent").inc()

    def retry_scheduled(self, call: Call, delay: float) -> None:
        """A failed or refused send will be repeated from the cached output."""
        _span(call).add_event("rtguard.send_retry_scheduled", {"rtguard.send.retry_delay_s": delay})
        if self._metrics:
            self._metrics.send_retries.inc()

    def call_settled(self, call: Call) -> None:
        span = _span(call)
        delivered = call.state is CallState.ACKNOWLEDGED
        facts: dict[str, Any] = {
            n.RTGUARD_SEND_ATTEMPTS: call.send_attempts,
            n.RTGUARD_DELIVERED: delivered,
        }
        if call.output is not None:
            facts[n.RTGUARD_OUTCOME] = call.output.outcome.value
        if call.incomplete_reason is not None:
            facts[n.RTGUARD_INCOMPLETE_REASON] = call.incomplete_reason.value
        span.set_attributes(facts)
        reason = call.incomplete_reason
        if reason is not None and call.annotations.get("error_type") is None:
            _fail_call(call, _INCOMPLETE_ERROR_TYPES[reason], call.last_send_error)
        if self._metrics:
            label = call.annotations["label"]
            exemplar = _exemplar(span)
            duration = (call.settled_at or time.monotonic()) - call.received_at
            error_type = call.annotations.get("error_type") or ""
            self._child(self._metrics.tool_duration, label, error_type).observe(duration, exemplar)
            if delivered:
                self._child(self._metrics.output_latency, label).observe(duration, exemplar)
            elif call.incomplete_reason is not None:
                self._metrics.calls_without_output.labels(call.incomplete_reason.value).inc()
            self._metrics.refresh()
        span.end()
        call.annotations.pop("span", None)

    def handoff(self, call: Call, from_agent: Agent, to_agent: Agent) -> None:
        attributes = self._common_attributes() | {
            n.RTGUARD_HANDOFF_FROM: from_agent.name,
            n.RTGUARD_HANDOFF_TO: to_agent.name,
            n.GEN_AI_AGENT_NAME: to_agent.name,
        }
        self._tracer.start_span(n.SPAN_HANDOFF, context=_context(call), attributes=attributes).end()
        if self._metrics:
            self._metrics.handoffs.labels("completed").inc()
            self.agent_active(to_agent)

    # --- errors -------------------------------------------------------------------------

    def protocol_error(self, reason: str) -> None:
        if self._metrics:
            self._metrics.protocol_errors.labels(reason).inc()

    def server_error(self, code: str | None) -> None:
        if self._metrics:
            self._metrics.protocol_errors.labels("server_error").inc()

    def swallowed(self, place: str, error: BaseException) -> None:
        """Every exception rtguard catches without re-raising is counted and logged here."""
        trace_text = redact("".join(traceback.format_exception(error)))
        logger.error("rtguard caught an error in %s and carried on:\n%s", place, trace_text)
        if self._metrics:
            self._metrics.swallowed_errors.labels(place).inc()

    # --- helpers ------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (they are bounded)."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _common_attributes(self) -> dict[str, Any]:
        if self._session_id is None:
            return {}
        return {n.GEN_AI_REALTIME_SESSION_ID: self._session_id}


def _fail(span: Span, error_type: str, error: BaseException | None) -> None:
    """Mark a span failed; exception text passes the same redaction as model-visible text."""
    span.set_attribute(n.ERROR_TYPE, error_type)
    message = redact(str(error))[:_MAX_STATUS_CHARS] if error is not None else error_type
    span.set_status(Status(StatusCode.ERROR, message))
    if error is not None:
        stacktrace = "".join(traceback.format_exception(error))
        span.record_exception(
            error,
            attributes={"exception.message": message, "exception.stacktrace": redact(stacktrace)},
        )


def _fail_call(call: Call, error_type: str, error: BaseException | None) -> None:
    """Mark the call's execute_tool span failed; the same error.type labels its duration."""
    call.annotations["error_type"] = error_type
    _fail(_span(call), error_type, error)


def _context(call: Call) -> otel_context.Context:
    """The context with the call's execute_tool span current: parent of its child spans."""
    ctx = call.annotations.get("context")
    return ctx if ctx is not None else otel_context.Context()


def _span(call: Call) -> Span:
    span = call.annotations.get("span")
    return span if span is not None else trace.INVALID_SPAN


def _exemplar(span: Span) -> dict[str, str] | None:
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def _remember(cache: OrderedDict[str, Span], key: str, span: Span, limit: int) -> None:
    cache[key] = span
    if len(cache) > limit:
        cache.popitem(last=False)
