"""What a session reports: spans and events (OpenTelemetry API only) and Prometheus samples.

Telemetry is an observer of the session's event stream, the same ordered facts the app
iterates: it never decides anything and is never on a call's path (the session calls
:meth:`SessionTelemetry.observe` behind one guard, after the core has already acted). An
app that set up its own OpenTelemetry SDK gets rtguard's spans through it; without any SDK
the API's no-op tracer makes spans free.

The trace shape (docs/operations.md says why): one trace per turn, rooted in an
``invoke_agent`` span that lasts from the turn's first model response until its last child
ended and is an ERROR when any of its calls failed or got no output. Under it, siblings in
time order: each ``realtime_inference`` generation, and each ``execute_tool`` call (with its
``rtguard.send_output`` attempts). A turn takes the responses that answer its own outputs,
so a tool-calling exchange (the calls' response, the tools, the model's answer) reads as one
waterfall. Everything is derived from the events; nothing here runs per audio frame.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import _logs, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import NoOpTracerProvider, Span, SpanKind, Status, StatusCode

from .._agent import Handoff
from .._boundary import type_name
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
    Reconnecting,
    SessionClosed,
    SessionEvent,
    SessionResumed,
    SessionStarted,
    ToolCallReceived,
    ToolFailed,
    ToolFailedRaised,
    ToolRejected,
    ToolSucceeded,
)
from .._ledger import IncompleteReason, Outcome
from .._protocol import ResponseCreated, ResponseDone, ServerError, SessionInfo
from .._reconnect import Loss
from .._version import __version__
from . import _names as n
from ._metrics import RtguardMetrics
from ._spans import error_type_of, exemplar, fail, generation_end

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
# error.type of a call without output: its reason, or one type for both ways a send failed.
_SEND_FAILURES = frozenset(
    {IncompleteReason.RETRIES_EXHAUSTED, IncompleteReason.REJECTED_BY_SERVER}
)
# Reasons that end the call with the session (its turn's end reason is then session_closed);
# of these, the ones whose error arrives with the session's end, not with the call.
_SESSION_ENDS = frozenset(IncompleteReason) - _SEND_FAILURES - {IncompleteReason.UNACKNOWLEDGED}
_OPEN_GENERATIONS = 64  # response.done never came for older ones: they are ended
_MAX_TOOL_NAME_CHARS = 64
_REFRESH_SECONDS = 1.0


class Telemetry:
    """Where sessions report: a tracer provider, a logger provider (for the session start
    and end events), a metrics set, and what spans may contain.

    ``capture_content=True`` opts in to tool arguments and results on spans (truncated to
    ``max_content_chars``); they are off by default because they often hold user data.
    Pass one as ``RealtimeSession(..., telemetry=...)``; a session without one reports to
    ``Telemetry.default()``.

    Args:
        tracer_provider: where spans go; by default the global one (the OpenTelemetry API's
            no-op provider until an SDK is set up, which makes spans free).
        logger_provider: where the session start and end events go; by default the global
            one.
        metrics: the Prometheus instruments to record in; None records no metrics.
        capture_content: put tool arguments and results on ``execute_tool`` spans.
        max_content_chars: how much of each of them, at most.
    """

    _default: Telemetry | None = None

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        logger_provider: _logs.LoggerProvider | None = None,
        metrics: RtguardMetrics | None = None,
        capture_content: bool = False,
        max_content_chars: int = 1000,
    ) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer(
            n.INSTRUMENTATION_NAME, __version__, schema_url=n.SCHEMA_URL
        )
        self.event_logger = (logger_provider or _logs.get_logger_provider()).get_logger(
            n.INSTRUMENTATION_NAME, __version__, schema_url=n.SCHEMA_URL
        )
        self.metrics = metrics
        self.capture_content = capture_content
        self.max_content_chars = max_content_chars
        self.observing = True
        """False for ``Telemetry.disabled()``: sessions then skip their events entirely."""

    @classmethod
    def default(cls) -> Telemetry:
        """The global tracer and logger providers and the process-wide Prometheus registry."""
        if cls._default is None:
            cls._default = cls(metrics=RtguardMetrics())
        return cls._default

    @classmethod
    def disabled(cls) -> Telemetry:
        """No spans, no events and no metrics, at no cost: sessions do not even look at
        their events (also what benchmarks compare telemetry against)."""
        telemetry = cls(
            tracer_provider=NoOpTracerProvider(), logger_provider=_logs.NoOpLoggerProvider()
        )
        telemetry.observing = False
        return telemetry

    def session(self, session: RealtimeSession) -> SessionTelemetry:
        """The observer of one session's events; the session makes it when it is made."""
        return SessionTelemetry(self, session)


@dataclass(slots=True, eq=False)
class _Turn:
    """One turn: the root span, and what it still waits for before it can end."""

    span: Span
    context: otel_context.Context
    last_ns: int  # when its latest child ended: where the turn ends
    generating: int = 0  # its generations in progress
    open_calls: int = 0
    unanswered: bool = False  # an output went out since its last generation began
    interrupted: bool = False  # its last generation was cancelled: nobody answers its outputs
    session_ended: bool = False  # a call of it ended with the session (closed or lost)
    calls: int = 0
    failed_calls: int = 0
    error_type: str | None = None  # the first failed call's

    @property
    def awaits_answer(self) -> bool:
        """rtguard asks the model to answer delivered outputs, unless it was interrupted."""
        return self.unanswered and not self.interrupted


@dataclass(slots=True, eq=False)
class _Generation:
    """A response in progress. Its span is made whole when it ends (nothing nests under
    it), so no SDK span is held while the model speaks."""

    turn: _Turn
    started_ns: int


@dataclass(slots=True, eq=False)
class _CallTrace:
    span: Span
    context: otel_context.Context
    turn: _Turn
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
    generation_attributes: dict[str, Any] | None = None
    children: dict[tuple[object, ...], Any] = field(default_factory=dict)
    exported_agents: set[int] = field(default_factory=set)


class SessionTelemetry:
    """One session's spans, events and metrics, derived from its event stream.

    Made by ``Telemetry.session``; the session hands it every event it produces, in order,
    behind a guard, after the core has acted on it. It never decides anything, so nothing it
    does can change what happens to a call.
    """

    def __init__(self, telemetry: Telemetry, session: RealtimeSession) -> None:
        self._tracer = telemetry.tracer
        self._event_logger = telemetry.event_logger
        self._metrics = telemetry.metrics
        self._capture = telemetry.capture_content
        self._max_chars = telemetry.max_content_chars
        self._session = session
        model = session.config.session_options.get("model")
        model = model if isinstance(model, str) else None
        self._model_attributes = {n.GEN_AI_REQUEST_MODEL: model} if model else {}
        self._generation_name = (
            f"{n.OP_REALTIME_INFERENCE} {model}" if model else n.OP_REALTIME_INFERENCE
        )
        self._session_id: str | None = None
        self._agent = ""  # the active agent's name, from SessionStarted and each handoff
        self._started = False
        self._announced = False  # the session-started event went out
        self._calls: dict[str, _CallTrace] = {}
        self._turns: list[_Turn] = []  # open turns, oldest first
        self._generations: OrderedDict[str, _Generation] = OrderedDict()
        # The response that ended last, while its turn is open: the calls its response.done
        # carried are announced right after it. One slot, however long the turn runs.
        self._ended_response: tuple[str, _Turn] | None = None
        self._outage: Loss | None = None  # why the connection ended, until the next opens
        self._cache = _Cache()
        self._refresher: asyncio.Task[None] | None = None
        self._handlers = self._observers() if telemetry.observing else {}

    def _observers(self) -> dict[type, Callable[[Any], None]]:
        """What each event type is recorded by; events of other types are skipped."""
        return {
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
            Reconnecting: self._reconnecting,
            SessionResumed: self._session_resumed,
            SessionClosed: self._session_closed,
        }

    def observe(self, event: SessionEvent) -> None:
        """Record what ``event`` tells: open, annotate or end spans, emit the session
        events, count metrics."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def observes(self, event_type: type) -> bool:
        """Whether :meth:`observe` does anything with events of exactly this type (the
        session passes the frames nobody observes straight to the app)."""
        return event_type in self._handlers

    def call_context(self, call_id: str) -> otel_context.Context | None:
        """The context with the call's execute_tool span current, for the tool to run in, so
        spans the tool creates nest under it."""
        call = self._calls.get(call_id)
        return call.context if call is not None else None

    # --- the session -----------------------------------------------------------------------

    def _session_started(self, event: SessionStarted) -> None:
        self._started = True
        self._agent = event.agent
        if self._metrics:
            self._metrics.active_sessions.inc()
            self._metrics.watch(self._session.ledger)
            if self._metrics.multiprocess:
                self._refresher = asyncio.get_running_loop().create_task(self._refresh_gauges())

    def _session_info(self, event: SessionInfo) -> None:
        if event.session_id and event.session_id != self._session_id:
            self._session_id = event.session_id
            self._cache.tool_attributes.clear()
            self._cache.generation_attributes = None
        if not self._announced:
            self._announced = True
            self._emit_event(n.EVENT_SESSION_STARTED, {})

    def _session_closed(self, event: SessionClosed) -> None:
        if self._metrics and self._started:
            self._metrics.active_sessions.dec()
            if self._refresher is not None:
                self._refresher.cancel()
            self._metrics.refresh()
            self._metrics.sessions_closed.labels(event.reason).inc()
            if self._outage is not None:  # it ended while a connection was being replaced
                self._metrics.reconnects.labels(self._outage.value, "failed").inc()
        for response_id in list(self._generations):
            self._end_generation(response_id, time.time_ns())
        for turn in list(self._turns):
            self._end_turn(turn, n.END_SESSION_CLOSED)
        if self._announced:
            ended: dict[str, Any] = {n.RTGUARD_SESSION_CLOSE_REASON: event.reason}
            if event.error is not None:
                ended[n.ERROR_TYPE] = event.reason
            self._emit_event(n.EVENT_SESSION_ENDED, ended)

    def _reconnecting(self, event: Reconnecting) -> None:
        """The connection ended and a new one is on its way: that realtime session is over
        (the next one announces itself with its own id), and so are its generations, whose
        ``response.done`` will never come. Open calls stay open: they are carried."""
        if event.attempt != 1:
            return  # a further attempt: the connection ended only once
        self._outage = event.reason
        for response_id in list(self._generations):
            self._end_generation(response_id, time.time_ns(), error_type=event.reason.value)
        if self._announced:
            self._announced = False
            self._emit_event(
                n.EVENT_SESSION_ENDED,
                {
                    n.RTGUARD_SESSION_CLOSE_REASON: event.reason.value,
                    n.ERROR_TYPE: event.reason.value,
                },
            )

    def _session_resumed(self, event: SessionResumed) -> None:
        """A new connection carries the conversation on: each carried call says so on its
        span (its output follows on the new connection)."""
        self._outage = None
        attributes = {
            n.RTGUARD_RECONNECT_REASON: event.reason.value,
            n.RTGUARD_RECONNECT_ATTEMPTS: event.attempts,
        }
        for call_id in event.carried:
            call = self._calls.get(call_id)
            if call is not None:
                call.span.add_event(n.SPAN_EVENT_CARRIED, attributes)
        if self._metrics:
            self._metrics.reconnects.labels(event.reason.value, "resumed").inc()
            self._metrics.calls_carried.inc(len(event.carried))
            self._metrics.replayed_items.inc(event.replayed)
            self._metrics.disconnected.observe(event.gap)

    def _emit_event(self, name: str, attributes: dict[str, Any]) -> None:
        """A realtime-session lifecycle event (the draft models the session as events, not a
        span: it is long-lived and mostly idle)."""
        attributes = self._common_attributes() | self._model_attributes | attributes
        attributes[n.GEN_AI_PROVIDER_NAME] = n.PROVIDER_OPENAI
        self._event_logger.emit(
            event_name=name, timestamp=time.time_ns(), body=name, attributes=attributes
        )

    async def _refresh_gauges(self) -> None:
        """Multiprocess mode: keep this process's waiting-call gauges current (age grows)."""
        assert self._metrics is not None
        while True:
            self._metrics.refresh()
            await asyncio.sleep(_REFRESH_SECONDS)

    # --- turns and generations -------------------------------------------------------------

    def _response_created(self, event: ResponseCreated) -> None:
        response_id = event.response_id
        if response_id is None:
            return
        now = time.time_ns()
        # The oldest turn waiting for the model's answer to its outputs gets it (rtguard asks
        # once per response whose outputs are out); otherwise the response starts a turn.
        waiting = (t for t in self._turns if t.generating == 0 and t.awaits_answer)
        turn = next(waiting, None) or self._start_turn(now)
        turn.generating += 1
        turn.unanswered = turn.interrupted = False
        self._generations[response_id] = _Generation(turn, now)
        if len(self._generations) > _OPEN_GENERATIONS:
            self._end_generation(next(iter(self._generations)), now)

    def _response_done(self, event: ResponseDone) -> None:
        response_id = event.response_id
        if response_id is not None and response_id in self._generations:
            self._end_generation(response_id, time.time_ns(), event)

    def _end_generation(
        self,
        response_id: str,
        now: int,
        done: ResponseDone | None = None,
        *,
        error_type: str | None = None,
    ) -> None:
        """End a generation and make its span: at its ``response.done``, or without one
        (given up on, the session ended or its connection lost, ``error_type`` then says
        why) with the finish reason the conventions ask for then, ``error``."""
        generation = self._generations.pop(response_id)
        turn = generation.turn
        ended, server_error = generation_end(done)
        span = self._tracer.start_span(
            self._generation_name,
            context=turn.context,
            kind=SpanKind.CLIENT,
            attributes={
                **self._generation_attributes(),
                n.GEN_AI_RESPONSE_ID: response_id,
                **ended,
            },
            start_time=generation.started_ns,
        )
        error_type = server_error or error_type
        if error_type is not None:
            fail(span, error_type, None)
        span.end(now)
        turn.generating -= 1
        turn.interrupted = done is not None and done.status == "cancelled"
        turn.last_ns = max(turn.last_ns, now)
        self._ended_response = (response_id, turn)
        self._maybe_end(turn)

    def _turn_of(self, response_id: str | None) -> _Turn | None:
        """The open turn of a response: its generation's, or the one it just ended in."""
        if response_id is None:
            return None
        generation = self._generations.get(response_id)
        if generation is not None:
            return generation.turn
        ended = self._ended_response
        return ended[1] if ended is not None and ended[0] == response_id else None

    def _start_turn(self, now: int) -> _Turn:
        agent = self._agent
        attributes = self._common_attributes() | {
            n.GEN_AI_OPERATION_NAME: n.OP_INVOKE_AGENT,
            n.GEN_AI_PROVIDER_NAME: n.PROVIDER_OPENAI,
            n.GEN_AI_AGENT_NAME: agent,
        }
        span = self._tracer.start_span(
            f"{n.OP_INVOKE_AGENT} {agent}",
            context=otel_context.Context(),  # a root: one trace per turn
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=now,
        )
        turn = _Turn(span, trace.set_span_in_context(span), now)
        self._turns.append(turn)
        return turn

    def _maybe_end(self, turn: _Turn) -> None:
        if turn.generating == 0 and turn.open_calls == 0 and not turn.awaits_answer:
            self._end_turn(turn, _end_reason(turn))

    def _end_turn(self, turn: _Turn, reason: str) -> None:
        """End the turn where its last child ended; any failed call makes it an ERROR, so the
        trace shows as failed in a trace list."""
        span = turn.span
        span.set_attribute(n.GEN_AI_END_REASON, reason)
        if turn.error_type is not None:
            span.set_attribute(n.ERROR_TYPE, turn.error_type)
            message = f"{turn.failed_calls} of {turn.calls} tool calls failed"
            span.set_status(Status(StatusCode.ERROR, message))
        span.end(turn.last_ns)
        self._turns.remove(turn)
        if self._ended_response is not None and self._ended_response[1] is turn:
            self._ended_response = None

    # --- calls -----------------------------------------------------------------------------

    def _call_received(self, event: ToolCallReceived) -> None:
        now = time.time_ns()
        agent = event.agent
        target = agent.find(event.tool_name)
        self._export_tools(agent)
        label = event.tool_name if target is not None else n.UNKNOWN_TOOL_LABEL
        attributes = {
            **self._tool_attributes(agent, event.tool_name, target),
            n.GEN_AI_TOOL_CALL_ID: event.call_id,
        }
        if self._capture and event.arguments is not None:
            attributes[n.GEN_AI_TOOL_CALL_ARGUMENTS] = event.arguments[: self._max_chars]
        # A call whose response has no open turn (no response id, or announced only after
        # its response's turn ended) opens a turn of its own.
        turn = self._turn_of(event.response_id) or self._start_turn(now)
        turn.open_calls += 1
        turn.calls += 1
        name = f"{n.OP_EXECUTE_TOOL} {label}" if target is not None else n.OP_EXECUTE_TOOL
        span = self._tracer.start_span(
            name,
            context=turn.context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=now,
        )
        self._calls[event.call_id] = _CallTrace(
            span, trace.set_span_in_context(span), turn, label, time.monotonic()
        )
        if self._metrics:
            self._metrics.refresh()

    def _tool_attributes(
        self, agent: Agent, tool_name: str, target: object | None
    ) -> dict[str, Any]:
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
        description = getattr(target, "description", None)
        if description:
            attributes[n.GEN_AI_TOOL_DESCRIPTION] = description
        if isinstance(target, Handoff):
            attributes[n.GEN_AI_HANDOFF_SOURCE] = agent.name
        if target is not None:  # names the model invents are unbounded: never cached
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
        self._agent = event.to_agent
        call = self._calls.get(event.call_id)
        if call is not None:
            call.span.set_attribute(n.GEN_AI_HANDOFF_TARGET, event.to_agent)
        if self._metrics:
            self._metrics.handoffs.labels("completed").inc()

    # --- send attempts ---------------------------------------------------------------------

    def _output_sent(self, event: OutputSent) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        self._end_attempt(call)
        call.attempt = self._attempt_span(call, event.attempt, "sent")
        call.turn.unanswered = True
        if self._metrics:
            self._child(self._metrics.output_sends, "sent").inc()

    def _output_send_failed(self, event: OutputSendFailed) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        refused = isinstance(event.error, ServerRejectedError)
        span = call.attempt if refused and call.attempt is not None else None
        call.attempt = None
        if span is None:  # the write itself failed (or was refused before it returned)
            span = self._attempt_span(call, event.attempt, "failed")
            if self._metrics:
                self._child(self._metrics.output_sends, "failed").inc()
        span.set_attribute(n.RTGUARD_SEND_RESULT, "refused" if refused else "failed")
        span.set_attribute(n.RTGUARD_WILL_RETRY, event.will_retry)
        fail(span, error_type_of(event.error), event.error)
        span.end()
        if event.will_retry:
            call.span.add_event(n.SPAN_EVENT_SEND_RETRY)
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

    def _end_attempt(self, call: _CallTrace, at: int | None = None) -> None:
        if call.attempt is not None:
            call.attempt.end(at)
            call.attempt = None

    # --- the end of a call -----------------------------------------------------------------

    def _settled(self, event: OutputAcknowledged | CallIncomplete) -> None:
        call = self._calls.pop(event.call_id, None)
        if call is None:
            return
        now = time.time_ns()
        self._end_attempt(call, now)
        span = call.span
        outcome = call.outcome.value if call.outcome is not None else n.OUTCOME_CANCELLED
        attributes: dict[str, Any] = {
            n.RTGUARD_DELIVERED: isinstance(event, OutputAcknowledged),
            n.RTGUARD_SEND_ATTEMPTS: call.attempts,
            n.RTGUARD_OUTCOME: outcome,
        }
        if isinstance(event, CallIncomplete):
            attributes[n.RTGUARD_INCOMPLETE_REASON] = event.reason.value
            call.turn.session_ended |= event.reason in _SESSION_ENDS
            if call.error_type is None:
                _fail_call(call, _incomplete_error_type(event.reason), event.last_error, at=now)
        span.set_attributes(attributes)
        if self._metrics:
            self._observe_settled(call, event)
        span.end(now)
        self._turn_call_ended(call, now)

    def _observe_settled(
        self, call: _CallTrace, event: OutputAcknowledged | CallIncomplete
    ) -> None:
        assert self._metrics is not None
        linked = exemplar(call.span)
        duration = time.monotonic() - call.started
        labels = (call.label, call.error_type or "")
        self._child(self._metrics.tool_duration, *labels).observe(duration, linked)
        if isinstance(event, OutputAcknowledged):
            self._child(self._metrics.output_latency, call.label).observe(event.latency, linked)
        else:
            self._metrics.calls_without_output.labels(event.reason.value).inc()
        self._metrics.refresh()

    def _turn_call_ended(self, call: _CallTrace, now: int) -> None:
        turn = call.turn
        turn.open_calls -= 1
        turn.last_ns = max(turn.last_ns, now)
        if call.error_type is not None:
            turn.failed_calls += 1
            turn.error_type = turn.error_type or call.error_type
        self._maybe_end(turn)

    # --- errors ----------------------------------------------------------------------------

    def _protocol_error(self, event: ProtocolErrorEvent) -> None:
        if self._metrics:
            self._metrics.protocol_errors.labels(event.reason).inc()
        if event.reason == n.ERROR_RESPONSE_TIMEOUT:  # the core gave up on the response
            now = time.time_ns()
            for response_id in list(self._generations):
                self._end_generation(response_id, now, error_type=n.ERROR_RESPONSE_TIMEOUT)

    def _server_error(self, event: ServerError) -> None:
        if self._metrics:
            self._metrics.protocol_errors.labels("server_error").inc()

    def _error_swallowed(self, event: ErrorSwallowed) -> None:
        if self._metrics:
            self._metrics.swallowed_errors.labels(event.place).inc()
        if event.place == "response_create":  # rtguard gave up asking for the answer
            for turn in list(self._turns):
                turn.unanswered = False
                self._maybe_end(turn)

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

    def _generation_attributes(self) -> dict[str, Any]:
        """The realtime_inference attributes every generation of this session shares."""
        cached = self._cache.generation_attributes
        if cached is None:
            cached = self._cache.generation_attributes = (
                self._common_attributes()
                | self._model_attributes
                | {
                    n.GEN_AI_OPERATION_NAME: n.OP_REALTIME_INFERENCE,
                    n.GEN_AI_PROVIDER_NAME: n.PROVIDER_OPENAI,
                }
            )
        return cached


def _fail_call(
    call: _CallTrace, error_type: str, error: BaseException | None, *, at: int | None = None
) -> None:
    """Mark the call's execute_tool span failed; the same error.type labels its duration."""
    call.error_type = error_type
    fail(call.span, error_type, error, at=at)


def _end_reason(turn: _Turn) -> str:
    if turn.session_ended:
        return n.END_SESSION_CLOSED
    return n.END_INTERRUPTED if turn.interrupted else n.END_COMPLETED


def _incomplete_error_type(reason: IncompleteReason) -> str:
    return n.ERROR_OUTPUT_SEND_FAILED if reason in _SEND_FAILURES else reason.value
