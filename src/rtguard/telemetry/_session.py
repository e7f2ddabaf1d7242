"""What a session reports: spans (OpenTelemetry API only) and Prometheus samples.

Telemetry is an observer of the session's event stream, the same ordered facts the app
iterates: it never decides anything and is never on a call's path (the session calls
:meth:`SessionTelemetry.observe` behind one guard, after the core has already acted). An
app that set up its own OpenTelemetry SDK gets rtguard's spans through it; without any SDK
the API's no-op tracer makes spans free.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)

from .._boundary import safe_str, type_name
from .._errors import ServerRejectedError
from .._events import (
    CallIncomplete,
    ErrorSwallowed,
    EventsDropped,
    HandoffCompleted,
    OutputAcknowledged,
    OutputSendFailed,
    OutputSent,
    ProtocolErrorEvent,
    SessionClosed,
    SessionEvent,
    SessionStarted,
    ToolCallReceived,
    ToolFailed,
    ToolFailedRaised,
    ToolRejected,
    ToolSucceeded,
)
from .._failures import redact
from .._ledger import IncompleteReason, Outcome
from .._protocol import ResponseCreated, ResponseDone, ServerError, SessionInfo
from .._version import __version__
from . import _names as n
from ._metrics import RtguardMetrics

if TYPE_CHECKING:
    from .._agent import Agent
    from .._session import RealtimeSession

__all__ = ["SessionTelemetry", "Telemetry"]

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
_OPEN_RESPONSE_SPANS = 64  # response.done never came for older ones: they are ended
_RECENT_RESPONSES = 64  # span contexts (not spans) kept to parent a response's calls
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


@dataclass(slots=True, eq=False)
class _CallTrace:
    span: Span
    context: otel_context.Context
    label: str  # the tool-name label: the tool's name, or _unknown for one the model invented
    started: float
    error_type: str | None = None
    outcome: Outcome | None = None
    attempts: int = 0
    attempt: Span | None = None  # the latest send attempt, open until its fate is known


@dataclass(slots=True)
class _Cache:
    """Built once and reused: span attributes per tool, metric children per label set."""

    tool_attributes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    children: dict[tuple[object, ...], Any] = field(default_factory=dict)
    exported_agents: set[int] = field(default_factory=set)


class SessionTelemetry:
    def __init__(self, telemetry: Telemetry, session: RealtimeSession) -> None:
        self._tracer = telemetry.tracer
        self._metrics = telemetry.metrics
        self._capture = telemetry.capture_content
        self._max_chars = telemetry.max_content_chars
        self._session = session
        self._session_id: str | None = None
        self._started = False
        self._calls: dict[str, _CallTrace] = {}
        self._open_responses: OrderedDict[str, Span] = OrderedDict()
        self._recent_responses: OrderedDict[str, SpanContext] = OrderedDict()
        self._cache = _Cache()
        self._refresher: asyncio.Task[None] | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            SessionStarted: self._session_started,
            SessionInfo: self._session_info,
            ResponseCreated: self._response_created,
            ResponseDone: self._response_done,
            ToolCallReceived: self._call_received,
            ToolSucceeded: self._tool_succeeded,
            ToolRejected: self._tool_rejected,
            ToolFailed: self._tool_failed,
            ToolFailedRaised: self._tool_failed,
            HandoffCompleted: self._handoff_completed,
            OutputSent: self._output_sent,
            OutputSendFailed: self._output_send_failed,
            OutputAcknowledged: self._settled,
            CallIncomplete: self._settled,
            ProtocolErrorEvent: self._protocol_error,
            ServerError: self._server_error,
            ErrorSwallowed: self._error_swallowed,
            EventsDropped: self._events_dropped,
            SessionClosed: self._session_closed,
        }

    def observe(self, event: SessionEvent) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def call_context(self, call_id: str) -> otel_context.Context | None:
        """The context with the call's execute_tool span current, for the tool to run in, so
        spans the tool creates nest under it."""
        call = self._calls.get(call_id)
        return call.context if call is not None else None

    # --- the session -----------------------------------------------------------------------

    def _session_started(self, event: SessionStarted) -> None:
        self._started = True
        if self._metrics:
            self._metrics.active_sessions.inc()
            self._metrics.watch(self._session.ledger)
            if self._metrics.multiprocess:
                self._refresher = asyncio.get_running_loop().create_task(self._refresh_gauges())

    def _session_info(self, event: SessionInfo) -> None:
        if event.session_id and event.session_id != self._session_id:
            self._session_id = event.session_id
            self._cache.tool_attributes.clear()

    def _session_closed(self, event: SessionClosed) -> None:
        if self._metrics and self._started:
            self._metrics.active_sessions.dec()
            if self._refresher is not None:
                self._refresher.cancel()
            self._metrics.refresh()
        for span in self._open_responses.values():
            span.end()
        self._open_responses.clear()

    async def _refresh_gauges(self) -> None:
        """Multiprocess mode: keep this process's waiting-call gauges current (age grows)."""
        assert self._metrics is not None
        while True:
            self._metrics.refresh()
            await asyncio.sleep(_REFRESH_SECONDS)

    # --- responses -------------------------------------------------------------------------

    def _response_created(self, event: ResponseCreated) -> None:
        response_id = event.response_id
        if response_id is None:
            return
        model = self._session.config.session_options.get("model")
        attributes = self._common_attributes() | {
            n.GEN_AI_OPERATION_NAME: n.OP_REALTIME_INFERENCE,
            n.GEN_AI_PROVIDER_NAME: n.PROVIDER_OPENAI,
            n.GEN_AI_RESPONSE_ID: response_id,
        }
        name = n.OP_REALTIME_INFERENCE
        if isinstance(model, str):
            attributes[n.GEN_AI_REQUEST_MODEL] = model
            name = f"{name} {model}"
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        _remember(self._open_responses, response_id, span, _OPEN_RESPONSE_SPANS, end=True)
        _remember(self._recent_responses, response_id, span.get_span_context(), _RECENT_RESPONSES)

    def _response_done(self, event: ResponseDone) -> None:
        span = self._open_responses.pop(event.response_id, None) if event.response_id else None
        if span is not None:
            span.end()

    # --- calls -----------------------------------------------------------------------------

    def _call_received(self, event: ToolCallReceived) -> None:
        agent = event.agent
        target = agent.find(event.tool_name)
        self._export_tools(agent)
        label = event.tool_name if target is not None else n.UNKNOWN_TOOL_LABEL
        attributes = {
            **self._tool_attributes(agent, event.tool_name, target is not None),
            n.GEN_AI_TOOL_CALL_ID: event.call_id,
        }
        if self._capture and event.arguments is not None:
            attributes[n.GEN_AI_TOOL_CALL_ARGUMENTS] = event.arguments[: self._max_chars]
        parent = self._recent_responses.get(event.response_id or "")
        ctx = (
            trace.set_span_in_context(NonRecordingSpan(parent))
            if parent is not None
            else otel_context.Context()
        )
        name = f"{n.OP_EXECUTE_TOOL} {label}" if target is not None else n.OP_EXECUTE_TOOL
        span = self._tracer.start_span(
            name, context=ctx, kind=SpanKind.INTERNAL, attributes=attributes
        )
        self._calls[event.call_id] = _CallTrace(
            span, trace.set_span_in_context(span), label, time.monotonic()
        )
        if self._metrics:
            self._metrics.refresh()

    def _tool_attributes(self, agent: Agent, tool_name: str, known: bool) -> dict[str, Any]:
        """The execute_tool attributes every call of this agent's tool shares."""
        key = (agent.name, tool_name)
        cached = self._cache.tool_attributes.get(key)
        if cached is not None:
            return cached
        attributes = self._common_attributes() | {
            n.GEN_AI_OPERATION_NAME: n.OP_EXECUTE_TOOL,
            n.GEN_AI_TOOL_NAME: tool_name[:_MAX_TOOL_NAME_CHARS],
            n.GEN_AI_TOOL_TYPE: n.TOOL_TYPE_FUNCTION,
            n.GEN_AI_AGENT_NAME: agent.name,
        }
        description = getattr(agent.find(tool_name), "description", None)
        if description:
            attributes[n.GEN_AI_TOOL_DESCRIPTION] = description
        if known:  # names the model invents are unbounded: never cached
            self._cache.tool_attributes[key] = attributes
        return attributes

    def _export_tools(self, agent: Agent) -> None:
        """Export the agent's per-tool series at 0, so rates count a tool's very first call."""
        if self._metrics and id(agent) not in self._cache.exported_agents:
            self._cache.exported_agents.add(id(agent))
            self._metrics.export_tools([*agent.tool_names, n.UNKNOWN_TOOL_LABEL])

    def _tool_succeeded(self, event: ToolSucceeded) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        if self._capture:
            call.span.set_attribute(n.GEN_AI_TOOL_CALL_RESULT, event.output[: self._max_chars])
        self._count_outcome(call, Outcome.SUCCESS)

    def _tool_rejected(self, event: ToolRejected) -> None:
        call = self._calls.get(event.call_id)
        if call is not None:
            _fail_call(call, n.ERROR_REJECTED, None)
            self._count_outcome(call, Outcome.REJECTED)

    def _tool_failed(self, event: ToolFailed) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        error_type = _OUTCOME_ERROR_TYPES.get(event.outcome) or type_name(event.error)
        _fail_call(call, error_type, event.error)
        self._count_outcome(call, event.outcome)
        if event.outcome is Outcome.HANDOFF_FAILED and self._metrics:
            self._metrics.handoffs.labels("failed").inc()

    def _count_outcome(self, call: _CallTrace, outcome: Outcome) -> None:
        call.outcome = outcome
        if self._metrics:
            self._child(self._metrics.tool_calls, call.label, outcome.value).inc()

    def _handoff_completed(self, event: HandoffCompleted) -> None:
        call = self._calls.get(event.call_id)
        attributes = self._common_attributes() | {
            n.RTGUARD_HANDOFF_FROM: event.from_agent,
            n.RTGUARD_HANDOFF_TO: event.to_agent,
            n.GEN_AI_AGENT_NAME: event.to_agent,
        }
        context = call.context if call is not None else None
        self._tracer.start_span(n.SPAN_HANDOFF, context=context, attributes=attributes).end()
        if self._metrics:
            self._metrics.handoffs.labels("completed").inc()

    # --- send attempts ---------------------------------------------------------------------

    def _output_sent(self, event: OutputSent) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        self._end_attempt(call)
        call.attempt = self._attempt_span(call, event.attempt, "sent")
        if self._metrics:
            self._child(self._metrics.output_sends, "sent").inc()

    def _output_send_failed(self, event: OutputSendFailed) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        refused = isinstance(event.error, ServerRejectedError)
        span = call.attempt if refused and call.attempt is not None else None
        call.attempt = None
        if span is None:  # the write itself failed: no span was started for it
            span = self._attempt_span(call, event.attempt, "failed")
            if self._metrics:
                self._child(self._metrics.output_sends, "failed").inc()
        span.set_attribute(n.RTGUARD_SEND_RESULT, "refused" if refused else "failed")
        span.set_attribute(n.RTGUARD_WILL_RETRY, event.will_retry)
        _fail(span, type_name(event.error), event.error)
        span.end()
        if event.will_retry:
            call.span.add_event("rtguard.send_retry_scheduled")
            if self._metrics:
                self._metrics.send_retries.inc()

    def _attempt_span(self, call: _CallTrace, attempt: int, result: str) -> Span:
        call.attempts = attempt
        attributes = self._common_attributes() | {
            n.RTGUARD_ATTEMPT: attempt,
            n.RTGUARD_SEND_RESULT: result,
        }
        return self._tracer.start_span(
            n.SPAN_SEND_OUTPUT, context=call.context, kind=SpanKind.CLIENT, attributes=attributes
        )

    def _end_attempt(self, call: _CallTrace) -> None:
        if call.attempt is not None:
            call.attempt.end()
            call.attempt = None

    # --- the end of a call -----------------------------------------------------------------

    def _settled(self, event: OutputAcknowledged | CallIncomplete) -> None:
        call = self._calls.pop(event.call_id, None)
        if call is None:
            return
        self._end_attempt(call)
        span = call.span
        delivered = isinstance(event, OutputAcknowledged)
        if isinstance(event, CallIncomplete):
            span.set_attribute(n.RTGUARD_INCOMPLETE_REASON, event.reason.value)
            if call.error_type is None:
                _fail_call(call, _INCOMPLETE_ERROR_TYPES[event.reason], event.last_error)
        span.set_attribute(n.RTGUARD_DELIVERED, delivered)
        span.set_attribute(n.RTGUARD_SEND_ATTEMPTS, call.attempts)
        if call.outcome is not None:
            span.set_attribute(n.RTGUARD_OUTCOME, call.outcome.value)
        if self._metrics:
            exemplar = _exemplar(span)
            duration = time.monotonic() - call.started
            labels = (call.label, call.error_type or "")
            self._child(self._metrics.tool_duration, *labels).observe(duration, exemplar)
            if isinstance(event, OutputAcknowledged):
                self._child(self._metrics.output_latency, call.label).observe(
                    event.latency, exemplar
                )
            else:
                self._metrics.calls_without_output.labels(event.reason.value).inc()
            self._metrics.refresh()
        span.end()

    # --- errors ----------------------------------------------------------------------------

    def _protocol_error(self, event: ProtocolErrorEvent) -> None:
        if self._metrics:
            self._metrics.protocol_errors.labels(event.reason).inc()

    def _server_error(self, event: ServerError) -> None:
        if self._metrics:
            self._metrics.protocol_errors.labels("server_error").inc()

    def _error_swallowed(self, event: ErrorSwallowed) -> None:
        if self._metrics:
            self._metrics.swallowed_errors.labels(event.place).inc()

    def _events_dropped(self, event: EventsDropped) -> None:
        if self._metrics:
            self._metrics.events_dropped.inc(event.count)

    # --- helpers ---------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (they are bounded)."""
        key = (metric, *labels)
        child = self._cache.children.get(key)
        if child is None:
            child = self._cache.children[key] = metric.labels(*labels)
        return child

    def _common_attributes(self) -> dict[str, Any]:
        if self._session_id is None:
            return {}
        return {n.GEN_AI_REALTIME_SESSION_ID: self._session_id}


def _fail(span: Span, error_type: str, error: BaseException | None) -> None:
    """Mark a span failed; exception text passes the same redaction as model-visible text."""
    span.set_attribute(n.ERROR_TYPE, error_type)
    message = redact(safe_str(error))[:_MAX_STATUS_CHARS] if error is not None else error_type
    span.set_status(Status(StatusCode.ERROR, message))
    if error is not None:
        # By hand, not span.record_exception(): that calls str(error), which may raise.
        stacktrace = redact("".join(traceback.format_exception(error)))
        span.add_event(
            "exception",
            {
                "exception.type": type_name(error),
                "exception.message": message,
                "exception.stacktrace": stacktrace,
            },
        )


def _fail_call(call: _CallTrace, error_type: str, error: BaseException | None) -> None:
    """Mark the call's execute_tool span failed; the same error.type labels its duration."""
    call.error_type = error_type
    _fail(call.span, error_type, error)


def _exemplar(span: Span) -> dict[str, str] | None:
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def _remember(
    cache: OrderedDict[str, Any], key: str, value: Any, limit: int, *, end: bool = False
) -> None:
    cache[key] = value
    if len(cache) > limit:
        _, oldest = cache.popitem(last=False)
        if end:
            oldest.end()
