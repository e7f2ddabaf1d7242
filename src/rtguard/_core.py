"""The session core: every decision of a realtime tool-call session, without I/O.

Shaped like aioquic's ``QuicConnection``. The asyncio layer feeds it inputs (a server frame,
a job's result, a write that completed or failed, the timer, an app call) and after each one
drains what it produced, in order:

- :meth:`next_event`: the facts the app iterates and telemetry observes;
- :meth:`next_frame`: client frames for the single writer;
- :meth:`next_job`: user code to run for a call (arguments and approval policy, the tool,
  a handoff factory), whose result comes back through :meth:`job_done`;
- :meth:`next_deadline` / :meth:`handle_timer`: the one timer; the core owns every deadline
  (send retry, acknowledgement, handoff confirmation, response, close).

Every outcome of a call, success or any failure, flows through :meth:`_finish` into one
``ToolOutput`` and the same send path, and every call ends in :meth:`_settle`.
"""

from __future__ import annotations

import enum
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from . import _protocol as protocol
from ._agent import Agent, Handoff
from ._boundary import Raised, call_user_sync, safe_str, type_name
from ._config import SessionConfig
from ._deadlines import Deadlines
from ._errors import (
    ConnectionLostError,
    HandoffError,
    InvalidArgumentsError,
    ProtocolError,
    ServerRejectedError,
    SessionClosedError,
    ToolResultError,
    UnknownToolError,
)
from ._events import (
    CallIncomplete,
    ErrorSwallowed,
    HandoffCompleted,
    OutputAcknowledged,
    OutputSendFailed,
    OutputSent,
    ProtocolErrorEvent,
    RaiseToApp,
    SessionClosed,
    SessionEvent,
    SessionStarted,
    ToolApprovalRequested,
    ToolCallReceived,
    ToolCallStarted,
    ToolFailed,
    ToolFailedRaised,
    ToolRejected,
    ToolSucceeded,
)
from ._failures import ToolFailure, default_failure_output
from ._ledger import (
    Call,
    CallLedger,
    CallState,
    IncompleteReason,
    Outcome,
    ToolOutput,
)
from ._tools import FunctionTool
from ._turns import Turns

__all__ = [
    "CoreState",
    "Execute",
    "Failed",
    "Frame",
    "Job",
    "JobResult",
    "Prepare",
    "Prepared",
    "ResolveHandoff",
    "Resolved",
    "Returned",
    "SessionCore",
]

logger = logging.getLogger("rtguard")


class CoreState(enum.IntEnum):
    IDLE = 0  # not connected yet
    OPEN = 1
    CLOSING = 2  # close() asked: no new tools run, open calls get close_timeout to finish
    CLOSED = 3  # SessionClosed was emitted: nothing is sent, scheduled or counted after it


# --- what the asyncio layer carries out ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """A client event to write; ``call`` is set for an output attempt."""

    event_id: str
    text: str
    call: Call | None = None


@dataclass(frozen=True, slots=True)
class Prepare:
    """Validate the arguments and ask the tool's approval policy."""

    call: Call
    tool: FunctionTool


@dataclass(frozen=True, slots=True)
class Execute:
    call: Call
    tool: FunctionTool
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResolveHandoff:
    call: Call
    handoff: Handoff


Job = Prepare | Execute | ResolveHandoff


@dataclass(frozen=True, slots=True)
class Prepared:
    kwargs: dict[str, Any]
    needs_approval: bool


@dataclass(frozen=True, slots=True)
class Returned:
    """The tool returned; ``text`` is its value serialised for the model."""

    text: str


@dataclass(frozen=True, slots=True)
class Failed:
    outcome: Outcome
    error: BaseException


@dataclass(frozen=True, slots=True)
class Resolved:
    """A handoff factory returned the agent to switch to."""

    agent: Agent


JobResult = Prepared | Returned | Failed | Resolved

# Deadline keys other than a call's own (the call's key is its Call object).
_CLOSE = "close"
_CREATE_BACKOFF = "response_create_backoff"


@dataclass(frozen=True, slots=True)
class _Response:
    """The deadline key of one response in progress."""

    epoch: int


@dataclass(frozen=True, slots=True)
class _SessionUpdate:
    """A ``session.update`` waiting for the server's ``session.updated`` (or ``error``)."""

    event_id: str
    call: Call | None  # the handoff it applies, if any


class SessionCore:
    def __init__(self, agent: Agent, config: SessionConfig) -> None:
        self.agent = agent
        self.config = config
        self.state = CoreState.IDLE
        self.session_id: str | None = None
        self._turns = Turns()
        self.ledger = CallLedger(
            remember_settled=config.remember_settled_calls, on_move=self._turns.call_moved
        )
        self._deadlines = Deadlines()
        self._event_ids = protocol.event_ids()
        self._events: deque[SessionEvent | RaiseToApp] = deque()
        self._frames: deque[Frame] = deque()
        self._jobs: deque[Job] = deque()
        self._waiting: deque[Call] = deque()  # RECEIVED calls waiting for a tool slot
        self._attempts: dict[str, Call] = {}  # output event_id -> call, while refusable
        self._updates: deque[_SessionUpdate] = deque()
        self._response_create_id: str | None = None
        self._create_failures = 0
        self._response_deadline: _Response | None = None  # armed for the response in progress
        self._handlers = {
            protocol.SessionInfo: self._on_session_info,
            protocol.ResponseCreated: self._on_response_created,
            protocol.FunctionCallReady: self._on_function_call,
            protocol.ResponseDone: self._on_response_done,
            protocol.FunctionOutputConfirmed: self._on_output_confirmed,
            protocol.ServerError: self._on_server_error,
        }

    # --- what the asyncio layer drains ------------------------------------------------------

    def next_event(self) -> SessionEvent | RaiseToApp | None:
        return self._events.popleft() if self._events else None

    def next_frame(self) -> Frame | None:
        """The next frame to write; output attempts that went stale in the queue are skipped."""
        while self._frames:
            frame = self._frames.popleft()
            call = frame.call
            if call is None or (call.in_flight and call.event_id == frame.event_id):
                return frame
        return None

    def next_job(self) -> Job | None:
        return self._jobs.popleft() if self._jobs else None

    def next_deadline(self) -> float | None:
        return self._deadlines.earliest()

    @property
    def has_frames(self) -> bool:
        return bool(self._frames)

    # --- inputs: the connection -------------------------------------------------------------

    def connect(self, now: float) -> str:
        """The connection is open; returns the event id of the agent's ``session.update``."""
        if self.state is not CoreState.IDLE:
            raise SessionClosedError("the session is closed")
        self.state = CoreState.OPEN
        self._emit(SessionStarted(self.agent.name))
        return self._send_session_update(self.agent, None)

    def receive_frame(self, frame: str | bytes, now: float) -> None:
        if self.state is CoreState.CLOSED:
            return
        try:
            event = protocol.parse_server_event(frame)
        except ProtocolError as exc:
            logger.warning("skipped a server event: %s", exc)
            self._emit(ProtocolErrorEvent(exc.reason, exc.detail))
            return
        self._emit(event)
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event, now)  # type: ignore[operator]
        self._after_input(now)

    def frame_written(self, frame: Frame, now: float) -> None:
        call = frame.call
        if call is not None and self._current_attempt(call, frame.event_id):
            call.in_flight = False
            self._emit(OutputSent(call.call_id, call.tool_name, call.send_attempts))
            self.ledger.move(call, CallState.OUTPUT_SENT)
            self._deadlines.set(call, now + self.config.ack_timeout)
        elif frame.event_id == self._response_create_id:
            self._create_failures = 0
        self._after_input(now)

    def frame_failed(
        self, frame: Frame, error: BaseException, connection_open: bool, now: float
    ) -> None:
        if self.state is CoreState.CLOSED:
            return
        call = frame.call
        if call is not None and self._current_attempt(call, frame.event_id):
            call.in_flight = False
            call.last_send_error = error
            self._attempt_failed(call, error, now, retry=connection_open)
        elif frame.event_id == self._response_create_id:
            self._response_create_id = None
            self._turns.create_failed()
            self._create_failures += 1
            if self._create_failures < self.config.retry.max_attempts:
                delay = self.config.retry.backoff(self._create_failures)
                self._deadlines.set(_CREATE_BACKOFF, now + delay)
            else:
                self._create_failures = 0
                self._turns.wanted = False
                self._swallowed("response_create", error)
        else:
            self._update_refused(frame.event_id, error)
        if not connection_open:
            self.connection_lost(ConnectionLostError(safe_str(error)), now)
            return
        self._after_input(now)

    def connection_lost(self, error: ConnectionLostError, now: float) -> None:
        if self.state is CoreState.CLOSED:
            return
        logger.warning("realtime connection lost: %s", safe_str(error))
        self._close_now("connection_lost", IncompleteReason.CONNECTION_LOST, error, now)

    # --- inputs: calls ---------------------------------------------------------------------

    def job_done(self, call: Call, result: JobResult, now: float) -> None:
        if call.state is not CallState.RUNNING or self.ledger.get(call.call_id) is not call:
            return  # settled meanwhile (the session closed, the connection was lost)
        match result:
            case Prepared(kwargs=kwargs, needs_approval=True):
                call.kwargs = kwargs
                self.ledger.move(call, CallState.AWAITING_APPROVAL)
                self._emit(ToolApprovalRequested(call.call_id, call.tool_name, kwargs))
            case Prepared(kwargs=kwargs):
                self._execute(call, kwargs)
            case Resolved(agent=agent):
                call.handoff_to = agent
                self.ledger.move(call, CallState.HANDING_OFF)
                self._send_session_update(agent, call)
                self._deadlines.set(call, now + self.config.ack_timeout)
            case Returned(text=text):
                self._finish(call, Outcome.SUCCESS, text=text)
            case Failed(outcome=outcome, error=error):
                self._finish(call, outcome, error=error)
        self._after_input(now)

    def approve(self, call_id: str, now: float) -> None:
        call = self._awaiting_approval(call_id)
        self.ledger.move(call, CallState.RUNNING)
        assert call.kwargs is not None
        self._execute(call, call.kwargs)
        self._after_input(now)

    def reject(self, call_id: str, message: str, now: float) -> None:
        if not isinstance(message, str):
            raise TypeError(f"a rejection message must be a str, not {type_name(message)}")
        self._finish(self._awaiting_approval(call_id), Outcome.REJECTED, text=message)
        self._after_input(now)

    def handle_timer(self, now: float) -> None:
        for key in self._deadlines.pop_due(now):
            if self.state is CoreState.CLOSED:
                return
            if isinstance(key, Call):
                self._call_deadline(key, now)
            elif key == self._response_deadline:
                self._response_deadline = None
                self._response_timed_out()
            elif key == _CLOSE:
                self._close_now("closed", IncompleteReason.SESSION_CLOSED, None, now)
        self._after_input(now)

    # --- inputs: the app -------------------------------------------------------------------

    def send_user_message(self, text: str, now: float) -> str:
        event_id = self._send_app_event(protocol.build_user_message, text)
        self._turns.request()
        self._after_input(now)
        return event_id

    def append_audio(self, audio_base64: str) -> str:
        return self._send_app_event(protocol.build_audio_append, audio_base64)

    def commit_audio(self) -> str:
        return self._send_app_event(protocol.build_audio_commit)

    def interrupt(self) -> str:
        """Cancel the response in progress; its calls still get outputs, but no response is
        asked for them: whoever interrupted (the user speaking, the app) takes the turn."""
        return self._send_app_event(protocol.build_response_cancel)

    def close(self, now: float) -> None:
        """Stop running new tools; give open calls ``close_timeout`` to be answered."""
        self._begin_close(now)
        self._after_input(now)

    def report_swallowed(self, place: str, error: BaseException) -> None:
        """The asyncio layer caught ``error`` and carried on (a transport that failed to close)."""
        self._swallowed(place, error)

    # --- server events ---------------------------------------------------------------------

    def _on_session_info(self, event: protocol.SessionInfo, now: float) -> None:
        if event.session_id:
            self.session_id = event.session_id
        if event.type == "session.updated" and self._updates:
            self._update_applied(self._updates.popleft(), now)

    def _on_response_created(self, event: protocol.ResponseCreated, now: float) -> None:
        self._turns.response_created(event.response_id)

    def _on_function_call(self, event: protocol.FunctionCallReady, now: float) -> None:
        self._receive_call(event.call, now)

    def _on_response_done(self, event: protocol.ResponseDone, now: float) -> None:
        for detail in event.unusable:
            self._emit(ProtocolErrorEvent("invalid_field", detail))
        for function_call in event.calls:
            self._receive_call(function_call, now)
        self._turns.response_done(event.response_id, event.status)

    def _on_output_confirmed(self, event: protocol.FunctionOutputConfirmed, now: float) -> None:
        call = self.ledger.get(event.call_id)
        if call is None or call.state not in (CallState.OUTPUT_READY, CallState.OUTPUT_SENT):
            return  # not an output of ours, or a second confirmation
        if call.in_flight:  # confirmed before our write returned: it was sent
            call.in_flight = False
            self._emit(OutputSent(call.call_id, call.tool_name, call.send_attempts))
        self._settle(call, CallState.ACKNOWLEDGED, None, now)

    def _on_server_error(self, event: protocol.ServerError, now: float) -> None:
        logger.warning(
            "server error %s: %s (for %s)", event.code, event.message, event.client_event_id
        )
        event_id = event.client_event_id
        if event_id is None:
            return
        error = ServerRejectedError(event.code, event.message, event.error_type)
        call = self._attempts.get(event_id)
        if call is not None and self.ledger.get(call.call_id) is call:
            call.in_flight = False  # refused, whatever our write reports later
            call.last_send_error = error
            self._attempt_failed(call, error, now, retry=event.error_type == "server_error")
        elif event_id == self._response_create_id:
            self._response_create_id = None
            self._turns.create_refused(event.code)
        else:
            self._update_refused(event_id, error)

    # --- a call's life ---------------------------------------------------------------------

    def _receive_call(self, function_call: protocol.FunctionCall, now: float) -> None:
        if self.state is CoreState.CLOSED:
            return
        call = self.ledger.receive(function_call, self.agent, now)
        if call is None:
            return  # a call_id we already have: the tool runs once
        self._turns.add_call(call, has_response=function_call.response_id is not None)
        self._emit(
            ToolCallReceived(
                call.call_id,
                call.tool_name,
                call.agent,
                call.arguments,
                function_call.response_id,
            )
        )
        target = call.target
        size = len(call.arguments.encode()) if call.arguments is not None else 0
        if self.state is CoreState.CLOSING:
            self._finish_closing(call)
        elif target is None:
            self._finish(call, Outcome.UNKNOWN_TOOL, error=UnknownToolError(call.tool_name))
        elif isinstance(target, FunctionTool) and size > self.config.max_argument_bytes:
            limit = self.config.max_argument_bytes
            error = InvalidArgumentsError(
                call.tool_name, f"arguments are {size} bytes; the limit is {limit}"
            )
            self._finish(call, Outcome.INVALID_ARGUMENTS, error=error)
        else:
            self._waiting.append(call)
            self._start_waiting()

    def _start_waiting(self) -> None:
        limit = None if self.config.async_tool_calls else 1
        while self._waiting and (limit is None or self.ledger.active_count < limit):
            call = self._waiting.popleft()
            self.ledger.move(call, CallState.RUNNING)
            target = call.target
            if isinstance(target, Handoff):
                self._jobs.append(ResolveHandoff(call, target))
            else:
                assert isinstance(target, FunctionTool)
                self._jobs.append(Prepare(call, target))

    def _execute(self, call: Call, kwargs: dict[str, Any]) -> None:
        assert isinstance(call.target, FunctionTool)
        call.kwargs = None
        self._emit(ToolCallStarted(call.call_id, call.tool_name, kwargs))
        self._jobs.append(Execute(call, call.target, kwargs))

    def _awaiting_approval(self, call_id: str) -> Call:
        call = self.ledger.get(call_id)
        if call is None or call.state is not CallState.AWAITING_APPROVAL:
            raise KeyError(f"no call awaiting approval with call_id {call_id!r}")
        return call

    def _finish_closing(self, call: Call) -> None:
        """A call the closing session will not run still gets an output."""
        closing = SessionClosedError("the session is closing; the tool was not run")
        self._finish(call, Outcome.ERROR, error=closing)

    def _finish(
        self,
        call: Call,
        outcome: Outcome,
        *,
        text: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        """The one place a call's result, or its failure, becomes its ToolOutput."""
        limit = self.config.max_output_bytes
        if text is not None and outcome is Outcome.SUCCESS and _too_long(text, limit):
            size = len(text.encode())
            problem = f"the result is {size} bytes; the limit is {limit}"
            error = ToolResultError(call.tool_name, problem)
            outcome, text = Outcome.ERROR, None
        if text is None:
            assert error is not None
            failure = ToolFailure(call.tool_name, call.call_id, outcome, error)
            text = self._failure_text(call, failure)
        raise_to_app = error is not None and self._raises(call, outcome, error)
        call.output = ToolOutput(text, outcome, error, raise_to_app)
        if outcome is Outcome.SUCCESS:
            self._emit(ToolSucceeded(call.call_id, call.tool_name, text))
        elif error is None:
            self._emit(ToolRejected(call.call_id, call.tool_name, text))
        else:
            kind = ToolFailedRaised if raise_to_app else ToolFailed
            self._emit(kind(call.call_id, call.tool_name, outcome, error, text))
        self.ledger.move(call, CallState.OUTPUT_READY)
        self._attempt(call)
        self._start_waiting()

    def _failure_text(self, call: Call, failure: ToolFailure) -> str:
        """The user's failure formatter, behind the boundary: the default if it raises or
        returns something unusable, so a formatter can never cost the model its output."""
        target = call.target
        formatter = (
            target.failure_output if isinstance(target, FunctionTool) else None
        ) or self.config.failure_output
        text = call_user_sync(formatter, failure)
        if isinstance(text, str) and not _too_long(text, self.config.max_output_bytes):
            return text
        if isinstance(text, Raised):
            self._swallowed("failure_output", text.error)
        else:
            problem = "too long" if isinstance(text, str) else f"a {type_name(text)}, not a str"
            self._swallowed("failure_output", TypeError(f"failure_output returned {problem}"))
        return default_failure_output(failure)

    def _raises(self, call: Call, outcome: Outcome, error: BaseException) -> bool:
        """Whether the app gets ``error`` raised from the iterator instead of a ToolFailed."""
        if isinstance(error, StopIteration | StopAsyncIteration):
            return False  # the iterator protocol would swallow them: always an event
        if isinstance(error, KeyboardInterrupt | SystemExit):
            return True  # Python's own "stop now" is never turned into an event
        target = call.target
        strict_timeout = (
            outcome is Outcome.TIMEOUT
            and isinstance(target, FunctionTool)
            and target.timeout_behavior == "raise_exception"
        )
        return strict_timeout or self.config.on_tool_error != "continue"

    def _attempt(self, call: Call) -> None:
        """Queue the call's cached output for (another) attempt."""
        assert call.output is not None
        call.send_attempts += 1
        if call.event_id is not None:
            self._attempts.pop(call.event_id, None)
        event_id = call.event_id = next(self._event_ids)
        self._attempts[event_id] = call
        call.in_flight = True
        event = protocol.build_function_call_output(event_id, call.call_id, call.output.text)
        self._frames.append(Frame(event_id, protocol.encode(event), call))

    def _current_attempt(self, call: Call, event_id: str) -> bool:
        current = call.in_flight and call.event_id == event_id
        return current and self.ledger.get(call.call_id) is call

    def _attempt_failed(self, call: Call, error: BaseException, now: float, *, retry: bool) -> None:
        will_retry = retry and call.send_attempts < self.config.retry.max_attempts
        attempt = call.send_attempts
        self._emit(OutputSendFailed(call.call_id, call.tool_name, attempt, error, will_retry))
        if will_retry:
            if call.state is CallState.OUTPUT_SENT:
                self.ledger.move(call, CallState.OUTPUT_READY)
            delay = self.config.retry.backoff(call.send_attempts)
            self._deadlines.set(call, now + delay)
        elif retry or isinstance(error, ServerRejectedError):
            reason = (
                IncompleteReason.REJECTED_BY_SERVER
                if isinstance(error, ServerRejectedError)
                else IncompleteReason.RETRIES_EXHAUSTED
            )
            self._settle(call, CallState.INCOMPLETE, reason, now)
        # else: the connection is gone; connection_lost accounts for the call

    def _call_deadline(self, call: Call, now: float) -> None:
        if self.ledger.get(call.call_id) is not call:
            return
        if call.state is CallState.OUTPUT_READY and not call.in_flight:
            self._attempt(call)  # the retry backoff ended
        elif call.state is CallState.OUTPUT_SENT:
            # Resending could give the model two outputs if only the confirmation was lost.
            self._settle(call, CallState.INCOMPLETE, IncompleteReason.UNACKNOWLEDGED, now)
        elif call.state is CallState.HANDING_OFF:
            self._updates = deque(u for u in self._updates if u.call is not call)
            timeout = self.config.ack_timeout
            error = HandoffError(
                call.tool_name, f"the server did not confirm the handoff within {timeout:g} s"
            )
            self._finish(call, Outcome.HANDOFF_FAILED, error=error)

    def _settle(
        self, call: Call, state: CallState, reason: IncompleteReason | None, now: float
    ) -> None:
        """The one place a call ends: acknowledged, or incomplete with its reason."""
        call.incomplete_reason = reason
        call.settled_at = now
        call.in_flight = False
        self._deadlines.clear(call)
        if call.event_id is not None:
            self._attempts.pop(call.event_id, None)
        if call in self._waiting:
            self._waiting.remove(call)
        self.ledger.move(call, state)
        if reason is None:
            assert call.output is not None
            latency = now - call.received_at
            outcome = call.output.outcome
            self._emit(OutputAcknowledged(call.call_id, call.tool_name, outcome, latency))
        else:
            logger.error(
                "call %s (%s) ended without output: %s", call.call_id, call.tool_name, reason.value
            )
            self._emit(CallIncomplete(call.call_id, call.tool_name, reason, call.last_send_error))
        output = call.output
        if output is not None and output.raise_to_app and output.error is not None:
            self._emit(RaiseToApp(output.error))
            if self.config.on_tool_error == "close":
                self._begin_close(now)
        self._start_waiting()

    # --- handoffs: the new agent's session.update must be confirmed first ------------------

    def _send_session_update(self, agent: Agent, call: Call | None) -> str:
        event_id = next(self._event_ids)
        event = protocol.build_session_update(
            event_id, agent.instructions, agent.tool_schemas(), self.config.session_options
        )
        self._frames.append(Frame(event_id, protocol.encode(event)))
        self._updates.append(_SessionUpdate(event_id, call))
        return event_id

    def _update_applied(self, update: _SessionUpdate, now: float) -> None:
        call = update.call
        if call is None or call.state is not CallState.HANDING_OFF:
            return
        assert call.handoff_to is not None
        previous, self.agent = self.agent, call.handoff_to
        self._deadlines.clear(call)
        self._emit(HandoffCompleted(call.call_id, previous.name, self.agent.name))
        self._finish(call, Outcome.SUCCESS, text=json.dumps({"assistant": self.agent.name}))

    def _update_refused(self, event_id: str, error: BaseException) -> None:
        """A session.update the server refused, or whose write failed: the agent stays."""
        update = next((u for u in self._updates if u.event_id == event_id), None)
        if update is None:
            return
        self._updates.remove(update)
        call = update.call
        if call is not None and call.state is CallState.HANDING_OFF:
            self._deadlines.clear(call)
            self._finish(call, Outcome.HANDOFF_FAILED, error=error)

    # --- responses -------------------------------------------------------------------------

    def _response_timed_out(self) -> None:
        timeout = self.config.response_timeout
        logger.warning("no response.done within %g s; carrying on", timeout)
        self._emit(ProtocolErrorEvent("response_timeout", f"no response.done within {timeout:g} s"))
        self._turns.response_done(None, None)

    def _after_input(self, now: float) -> None:
        """Derive what follows from the new state: response.create, the response deadline,
        the end of a close."""
        if self.state is CoreState.CLOSED:
            return
        turns = self._turns
        if _CREATE_BACKOFF not in self._deadlines and turns.take():
            self._response_create_id = self._send_app_event(protocol.build_response_create)
        response = _Response(turns.epoch) if turns.responding else None
        if response != self._response_deadline:
            if self._response_deadline is not None:
                self._deadlines.clear(self._response_deadline)
            if response is not None:
                self._deadlines.set(response, now + self.config.response_timeout)
            self._response_deadline = response
        if self.state is CoreState.CLOSING and self.ledger.open_count == 0:
            self._close_now("closed", None, None, now)

    # --- closing ---------------------------------------------------------------------------

    def _begin_close(self, now: float) -> None:
        if self.state is CoreState.IDLE:
            self.state = CoreState.CLOSED  # never connected: nothing started, nothing to report
        if self.state is not CoreState.OPEN:
            return
        self.state = CoreState.CLOSING
        self._turns.enabled = False
        while self._waiting:
            self._finish_closing(self._waiting.popleft())
        self._deadlines.set(_CLOSE, now + self.config.close_timeout)

    def _close_now(
        self,
        reason: str,
        incomplete: IncompleteReason | None,
        error: ConnectionLostError | None,
        now: float,
    ) -> None:
        self.state = CoreState.CLOSING
        self._waiting.clear()
        for call in self.ledger:
            assert incomplete is not None
            self._settle(call, CallState.INCOMPLETE, incomplete, now)
        self.state = CoreState.CLOSED
        self._frames.clear()
        self._jobs.clear()
        self._deadlines = Deadlines()
        self._emit(SessionClosed(reason, error))

    # --- helpers ---------------------------------------------------------------------------

    def _send_app_event(self, build: Any, *args: Any) -> str:
        if self.state is not CoreState.OPEN:
            raise SessionClosedError("the session is closed")
        event_id = next(self._event_ids)
        self._frames.append(Frame(event_id, protocol.encode(build(event_id, *args))))
        return event_id

    def _emit(self, event: SessionEvent | RaiseToApp) -> None:
        self._events.append(event)

    def _swallowed(self, place: str, error: BaseException) -> None:
        logger.error("rtguard caught %s in %s and carried on", type_name(error), place)
        self._emit(ErrorSwallowed(place, error))


def _too_long(text: str, limit: int) -> bool:
    # A UTF-8 character is at most 4 bytes: most texts are decided without encoding them.
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)
